"""Generated "pattern x colour" dataset for testing the Xception hypothesis.

Every class is a pair (spatial pattern, colour scheme).  The classes can only be
told apart by using *both*

* spatial structure -- the pattern (horizontal stripes, vertical stripes,
  checkerboard, rings, dots), which a per-channel (depthwise) 3x3 filter bank
  sees, and
* colour relations across channels -- the scheme, a pair of colours, which a
  1x1 (pointwise) cross-channel mix sees.

Design choices that make the two cues necessary
-----------------------------------------------
* Full cross product: every pattern occurs with every colour scheme, so the
  colours say nothing about the pattern and vice versa.
* All patterns cover 50 % of the object with each of the two colours, so the
  mean colour of an object depends only on its scheme, never on its pattern.
* Luminance-matched palettes: the first ("dark") colour of every scheme has the
  same Rec.601 luma (``0.299 R + 0.587 G + 0.114 B`` = 80, what
  ``PIL.Image.convert("L")`` computes) and the second ("light") colour has luma
  185.  A greyscale image therefore shows the pattern (dark/light alternation)
  but cannot tell the schemes apart.
* Clutter: a smooth random-colour background, solid shapes and lines whose
  colours are drawn independently of the class (a third of them use palette
  colours of *any* scheme, so "there is red in the image" is no evidence), and
  -- in half of the images -- a smaller grey-toned patch carrying one of the
  five patterns.  Solid clutter never forms a pattern, and the patterned
  distractor is grey (no palette colour is grey), so the class is defined only
  by the conjunction "this pattern drawn in these two colours".

Each image holds one object: a region (ellipse, rotated rectangle or convex
polygon with 4-8 corners, aspect ratio 0.6-1) whose circumscribing circle has
a diameter of 30-70 % of the image side, entirely inside the image at a random
position, filled with the class pattern at random phase, period and
orientation (within the class range: horizontal stripes stay within +-20
degrees of horizontal, vertical stripes within +-20 degrees of vertical;
checkerboards and dot grids take any orientation; rings are centred near the
object's centre).  The pattern period (one dark + one light band) is 12-22 %
of the object's diameter and at least ``size / 18`` pixels (7 px at 128 px).
Edges of the pattern are anti-aliased over about one pixel.  The object is
drawn last, so its boolean mask is exactly the pixels carrying the pattern.
A per-image jitter of the two colours (sigma 6 per channel) and mild noise
(sigma 2-6) finish the image.

Geometry scales with ``size``; at 64 px the smallest periods are 3.6 px, too
fine to survive Xception's stem, so generate at 128 px (the default) -- or at
least 96 px -- and train at that size.

Augmentation note for trainers: horizontal and vertical flips preserve every
label; 90-degree rotations and transposes do NOT (they swap horizontal and
vertical stripes); rotations of more than ~20 degrees blur that distinction;
crops may cut the object away (it is never cut by the image border here);
heavy colour jitter / hue shifts / greyscale conversion destroy the colour cue.

Measured figures (128 px; tests/test_synthetic.py, benchmarks/bench_synthetic.py)
--------------------------------------------------------------------------------
Chance is 1/20.  Trained on 1200 images, tested on 600 fresh ones (best of
logistic regression and nearest centroid): mean RGB 7 %, mean + std RGB 12 %,
a 64-bin RGB histogram 16 % (it finds the scheme 89 % of the time, the
pattern at chance); greyscale luma + gradient-orientation histograms 17 %
(pattern 68 %, scheme at chance).  Generation: about 700-1000 images per
second on one core of the 2-core development machine.

Determinism
-----------
Sample ``i`` of seed ``s`` depends only on ``(s, i)`` (its random generator is
``numpy.random.default_rng(SeedSequence([s, i]))``); its label is
``i % NUM_CLASSES`` so any contiguous range of indices is balanced.  Use
different seeds for training and test data.  Bit-exact images across machines
assume the same numpy and Pillow versions (shapes are rasterised by Pillow,
float32 ``sin`` may differ by an ulp between CPU kernels); the class content
of an index never changes.

Folder layout written by :func:`write_folder`
---------------------------------------------
::

    out_dir/
      00-red-cyan-horizontal-stripes/000000.png   (RGB images only)
      01-red-cyan-vertical-stripes/000001.png
      ...
      masks.npz        one bool [H, W] array per image, key "<class dir>/<stem>"
      manifest.json    seed, size, n, class names, layout description

The class folders hold only images, so any "one sub-folder per class, sorted
names = class indices" reader (``torchvision.datasets.ImageFolder``, the
``eval`` command via :func:`xception_core.folders.list_class_folder`) reads the folder correctly;
the masks and the manifest are plain files at the top level, which such
readers ignore.  :func:`read_folder_masks` loads the masks back.
"""

from .classes import (
    CLASS_NAMES,
    COLOUR_SCHEMES,
    DARK_LUMA,
    LIGHT_LUMA,
    NUM_CLASSES,
    PATTERNS,
    class_factors,
    class_index,
    class_name,
    folder_name,
)
from .dataset import MANIFEST_FILE, MASKS_FILE, SyntheticDataset, read_folder_masks, to_tensor, write_folder
from .draw import generate, make_sample

__all__ = [
    "PATTERNS",
    "COLOUR_SCHEMES",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "DARK_LUMA",
    "LIGHT_LUMA",
    "class_name",
    "class_factors",
    "class_index",
    "folder_name",
    "make_sample",
    "generate",
    "SyntheticDataset",
    "write_folder",
    "read_folder_masks",
    "to_tensor",
    "MASKS_FILE",
    "MANIFEST_FILE",
]
