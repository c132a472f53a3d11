"""The bundled offline model: integrity, accuracy on fresh generated data, attribution quality."""

import json

import pytest
import torch

from xception_core import synthetic
from xception_core.attributions import attribution_quality, randomized_copy
from xception_core.train import accuracy
from xception_core.weights import BUNDLED_ID, bundled_dir, default_model_id, list_models, load_model

FRESH_SEED = 424_242  # never used by training (train seed 1, validation seed 2)
# Measured on this model over these 100 images (README, "Attribution quality"): IG puts
# 0.71 of its positive mass inside objects covering 0.14 of the image, Grad-CAM at the last
# entry-flow layer 0.41; after re-initialising the top half both correlate <= 0.08 with the
# trained model's maps. The thresholds leave room for the 16-step IG used here.
MARGIN_IG = 0.40
MARGIN_GRADCAM = 0.15
MAX_RANDOMISED_CORRELATION = 0.30


@pytest.fixture(scope="module")
def bundled():
    return load_model(BUNDLED_ID)


def test_files_are_small_and_the_card_describes_the_run(bundled):
    _, card = bundled
    weights = bundled_dir() / f"{BUNDLED_ID}.safetensors"
    assert weights.stat().st_size <= 10 * 1024 * 1024
    stored = json.loads((bundled_dir() / f"{BUNDLED_ID}.json").read_text())
    extra = stored["extra"]
    assert stored["sha256"] == card.sha256 and len(card.sha256) == 64
    assert extra["data"]["train_seed"] != FRESH_SEED and extra["data"]["val_seed"] != FRESH_SEED
    assert extra["training_seconds"] <= 30 * 60
    assert extra["validation_curve"][-1]["val_top1"] >= 0.97
    assert card.class_names == list(synthetic.CLASS_NAMES)


def test_it_is_the_default_without_imagenet_weights():
    assert default_model_id() == BUNDLED_ID
    status = {c.id: c.status for c in list_models()}
    assert status[BUNDLED_ID] == "available" and status["xception-imagenet"] == "missing"


def test_top1_on_fresh_generated_images(bundled):
    model, card = bundled
    images, labels, _ = synthetic.generate(1000, FRESH_SEED, card.preprocess.input_size)
    top1 = accuracy(model, torch.from_numpy(images), torch.from_numpy(labels))
    assert top1 >= 0.97, top1


@pytest.mark.slow
def test_attributions_find_the_object_and_fail_on_a_randomised_model(bundled):
    model, card = bundled
    last_entry = [n for n in model.separable_layers() if n.startswith("entry")][-1]
    methods = {
        "ig": {"method": "integrated_gradients", "n_steps": 16},
        "gradcam": {"method": "layer_gradcam", "layer": last_entry, "part": "pointwise"},
    }
    report = attribution_quality(
        model, methods, n=100, size=card.preprocess.input_size, randomized=randomized_copy(model)
    )
    area = report["ig"]["area_fraction"]
    # Margins measured on this model (README, "Attribution quality"), with room for noise.
    assert report["ig"]["mass_in_object"] >= area + MARGIN_IG, report
    assert report["gradcam"]["mass_in_object"] >= area + MARGIN_GRADCAM, report
    assert report["ig"]["rank_correlation"] <= MAX_RANDOMISED_CORRELATION, report
    assert report["gradcam"]["rank_correlation"] <= MAX_RANDOMISED_CORRELATION, report
