"""``xception-demo visualize`` (feature visualisation of a channel) and ``atlas build|show``
(the data-set images that drive each channel most)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import CommandError
from .output import print_json


def _load(model_id: str | None):
    """The model in channels_last (1.3-1.7x faster optimisation steps on the CPU) and its card."""
    import torch

    from xception_core.weights import default_model_id, load_model

    model, card = load_model(model_id or default_model_id(), device="cuda" if torch.cuda.is_available() else "cpu")
    return model.to(memory_format=torch.channels_last), card


class _Bar:
    """A tqdm progress bar on stderr driven by ``progress(done, total)`` callbacks."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="img", file=sys.stderr)
        else:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_visualize(args: argparse.Namespace) -> int:
    from PIL import Image

    from xception_core.featurevis import VisualisationError, VisualisationRequest, visualise

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CommandError(f"--out must name a .png file, got {args.out}")
    if not out.parent.is_dir():
        raise CommandError(f"--out: folder {out.parent} does not exist")
    model, card = _load(args.model)
    try:
        request = VisualisationRequest(
            layer=args.layer, part=args.part, channels=(args.channel,), steps=args.steps,
            size=args.size or card.preprocess.input_size, seed=args.seed, objective=args.objective,
            lr=args.lr, precision=args.precision,
        )
        result = visualise(model, request, card.preprocess)
    except VisualisationError as exc:
        raise CommandError(f"--{exc.param.replace('_', '-')}: {exc}") from None
    Image.fromarray(result.image).save(out)
    summary = {"model": card.id, "out": str(out), **result.to_dict()}
    summary.pop("channels")
    if args.json:
        print_json(summary)
    else:
        print(
            f"{card.id} {args.layer} {args.part} channel {args.channel}: objective {result.images[0].objective_start:.4g}"
            f" -> {result.images[0].objective_final:.4g} in {result.steps} steps, {result.seconds:.2f} s"
            f" ({result.precision}); wrote {out}"
        )
    return 0


def cmd_atlas_build(args: argparse.Namespace) -> int:
    from xception_core.atlas import AtlasBuildRequest, atlas_dir, build_atlas

    data = Path(args.data)
    if not data.is_dir():
        raise CommandError(f"--data: {data} is not a folder")
    request = AtlasBuildRequest(data, k=args.k, batch_size=args.batch_size, checkpoint_every=args.checkpoint_every)
    model, card = _load(args.model)
    bar = _Bar("atlas", not args.json)
    try:
        index = build_atlas(model, card.preprocess, request, atlas_dir(card.id), card.sha256, bar)
    finally:
        bar.close()
    summary = {
        "model": card.id, "atlas": str(index.path), "folder": str(index.root), "images": len(index.files),
        "skipped": index.meta["skipped"], "k": index.k, "seconds": index.meta["seconds"],
    }
    if args.json:
        print_json(summary)
    else:
        print(f"atlas of {card.id}: {len(index.files)} images of {index.root}, top {index.k} per channel, in {index.path}")
        for line in index.meta["skipped"][:10]:
            print(f"  skipped {line}")
    return 0


def _open(model_id: str | None, quiet: bool):
    """The model's atlas; the bundled model's is built on first use (which says so on stderr)."""
    from xception_core.atlas import AtlasIndex, atlas_dir, open_atlas
    from xception_core.weights import BUNDLED_ID, default_model_id, get_card

    card = get_card(model_id or default_model_id())
    if card.id == BUNDLED_ID and not AtlasIndex.exists(atlas_dir(card.id)):
        print(f"building the atlas of {card.id} from generated images (first use)", file=sys.stderr)
        model, card = _load(card.id)
        bar = _Bar("atlas", not quiet)
        try:
            return card, open_atlas(card, model=model, progress=bar)
        finally:
            bar.close()
    return card, open_atlas(card)


def cmd_atlas_show(args: argparse.Namespace) -> int:
    card, index = _open(args.model, args.json)
    entry = index.entry(args.layer, args.part, args.channel, args.k)
    if args.json:
        print_json({"model": card.id, "atlas": str(index.path), "folder": str(index.root), **entry.to_dict()})
        return 0
    print(f"{card.id} {entry.layer} {entry.part} channel {entry.channel}: objective (spatial mean) over "
          f"{entry.count} images: mean {entry.mean:.4g}, std {entry.std:.4g}, max {entry.max:.4g}")
    for e in entry.examples:
        print(f"  {e.rank + 1:3d}  objective {e.objective:9.4g}  max {e.max:9.4g} at {e.y},{e.x}  {e.file}")
    return 0


def _generated_seed(folder: Path) -> int | None:
    """The seed of a generated folder (its manifest), to say which images the figures come from."""
    import json

    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("seed")
    except (OSError, ValueError):
        return None


def cmd_atlas_selectivity(args: argparse.Namespace) -> int:
    from xception_core.selectivity import selectivity, synthetic_labels, write_report

    card, index = _open(args.model, args.json)
    rows = selectivity(index, synthetic_labels(index.files), k=args.k, permutations=args.permutations, seed=args.seed)
    meta = {"model": card.id, "images": len(index.files), "k": args.k or index.k, "permutations": args.permutations,
            "seed": args.seed, "generated_seed": _generated_seed(index.root)}
    paths = write_report(rows, Path(args.out), meta)
    if args.json:
        print_json({**meta, "files": {k: str(v) for k, v in paths.items()}})
        return 0
    print(f"{'layer':20s} {'part':9s} {'live':>4s}  pattern kappa  scheme kappa  pattern>scheme")
    for r in rows:
        print(f"{r.layer:20s} {r.part:9s} {r.channels:4d}  {r.kappa('pattern'):13.2f}  "
              f"{r.kappa('scheme'):12.2f}  {r.pattern_over_scheme:14.0%}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("visualize", help="feature visualisation: an image that maximises one channel")
    p.add_argument("--model")
    p.add_argument("--layer", required=True, help="a separable layer, e.g. middle.block7.sep2")
    p.add_argument("--part", required=True, help="depthwise or pointwise")
    p.add_argument("--channel", type=int, required=True)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's input size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default="mean", help="mean (spatial mean, as the atlas) or centre")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--precision", default="auto", help="auto (bf16 where the CPU/GPU computes it natively), fp32, bf16")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_visualize)

    atlas = commands.add_parser("atlas", help="the channel atlas: data-set images that drive each channel most")
    sub = atlas.add_subparsers(dest="atlas_command", required=True, metavar="COMMAND")
    p = sub.add_parser("build", help="scan a folder of images once (resumable) and index the top images per channel")
    p.add_argument("--model")
    p.add_argument("--data", required=True, help="a folder of images (searched recursively)")
    p.add_argument("--k", type=int, default=16, help="images kept per channel (1..64)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--checkpoint-every", type=int, default=20, help="batches between checkpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_atlas_build)

    p = sub.add_parser("show", help="the top images of one channel, largest objective first")
    p.add_argument("--model")
    p.add_argument("--layer", required=True)
    p.add_argument("--part", required=True)
    p.add_argument("--channel", type=int, required=True)
    p.add_argument("--k", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_atlas_show)

    p = sub.add_parser("selectivity", help="generated data set: do a part's channels pick a pattern or a colour scheme?")
    p.add_argument("--model")
    p.add_argument("--k", type=int, help="top images per channel (default: all the atlas keeps)")
    p.add_argument("--permutations", type=int, default=200, help="label shuffles for the null (0..10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for selectivity.csv, .json and .png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_atlas_selectivity)
