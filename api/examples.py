"""curl examples for every endpoint: shown in the OpenAPI schema (``x-codeSamples``, see
``api/main.py``) and in ``api/README_API.md`` (``python -m api.readme`` regenerates the file; a test
keeps them equal)."""

from __future__ import annotations

BASE = "http://127.0.0.1:8000"
M = "xception-mini-synthetic"

#: (method, path, title, curl command)
EXAMPLES: list[tuple[str, str, str, str]] = [
    ("GET", "/healthz", "Liveness", f"curl -s {BASE}/healthz"),
    ("GET", "/readyz", "Readiness (503 until the default model is loaded)", f"curl -s {BASE}/readyz"),
    ("GET", "/v1/models", "Models and their weights status", f"curl -s {BASE}/v1/models"),
    ("GET", "/v1/models/{model_id}", "One model: card, parameters, MACs", f"curl -s {BASE}/v1/models/{M}"),
    ("GET", "/v1/models/{model_id}/layers", "Layer table (every `layer` value and its shapes)", f"curl -s {BASE}/v1/models/{M}/layers"),
    (
        "GET",
        "/v1/models/{model_id}/layers/{layer}/spectrum",
        "The paper's spectrum for one layer: parameters and MACs from a regular convolution to the depthwise separable one",
        f"curl -s '{BASE}/v1/models/{M}/layers/middle.block5.sep1/spectrum?points=4'",
    ),
    ("GET", "/v1/models/{model_id}/classes", "Class names in index order", f"curl -s {BASE}/v1/models/{M}/classes"),
    (
        "GET",
        "/v1/spectrum/results",
        "The paper's spectrum trained: validation top-1, parameters, MACs and times of each point of the committed run "
        "(with the validation curves on request)",
        f"curl -s {BASE}/v1/spectrum/results\n"
        f"curl -s '{BASE}/v1/spectrum/results?curves=true'",
    ),
    (
        "GET",
        "/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/visualisation",
        "Feature visualisation of a channel: objectives and the image (JSON); the image alone (PNG); the pixels (.npy)",
        f"curl -s '{BASE}/v1/models/{M}/layers/middle.block5.sep1/parts/depthwise/channels/7/visualisation?steps=256&seed=0'\n"
        f"curl -s -o pw42.png '{BASE}/v1/models/{M}/layers/middle.block5.sep1/parts/pointwise/channels/42/visualisation?format=png&size=128'\n"
        f"curl -s -o pw42.npy '{BASE}/v1/models/{M}/layers/middle.block5.sep1/parts/pointwise/channels/42/visualisation?format=npy&objective=centre'",
    ),
    (
        "GET",
        "/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/atlas",
        "The 9 data-set images that drive a channel most, cropped to the receptive field of its maximum, and its histogram",
        f"curl -s '{BASE}/v1/models/{M}/layers/middle.block5.sep1/parts/pointwise/channels/42/atlas?k=9&thumb_px=96'",
    ),
    (
        "GET",
        "/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/weights",
        "A depthwise channel's 3x3 kernel; a pointwise channel's 1x1 weights over the depthwise channels",
        f"curl -s {BASE}/v1/models/{M}/layers/middle.block5.sep1/parts/depthwise/channels/7/weights\n"
        f"curl -s {BASE}/v1/models/{M}/layers/middle.block5.sep1/parts/pointwise/channels/42/weights",
    ),
    ("GET", "/v1/samples", "Sample images: photographs and generated images of the bundled model's classes", f"curl -s {BASE}/v1/samples"),
    (
        "GET",
        "/v1/samples/{sample_id}",
        "One sample image (JPEG or PNG); a generated one in another variant; straight into a prediction",
        f"curl -s -o chelsea.jpg {BASE}/v1/samples/chelsea\n"
        f"curl -s -o dots.png '{BASE}/v1/samples/generated-04?variant=7'\n"
        f"curl -s {BASE}/v1/samples/chelsea | curl -s -F image=@- '{BASE}/v1/predict?top_k=3'",
    ),
    (
        "POST",
        "/v1/images",
        "Store an image once (nothing is computed); then name it with `image_id` instead of sending it again, on any analysis endpoint",
        f"ID=$(curl -s -F image=@photo.jpg {BASE}/v1/images | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"image_id\"])')\n"
        f"curl -s -X POST '{BASE}/v1/predict?image_id='$ID\n"
        f"curl -s -X POST '{BASE}/v1/attributions?method=saliency&quality=none&image_id='$ID",
    ),
    (
        "GET",
        "/v1/images/{image_id}",
        "A stored image's bytes back (e.g. to show the image of a shared link); `ETag` is its id",
        f"curl -s -o image.bin {BASE}/v1/images/$ID",
    ),
    (
        "POST",
        "/v1/predict",
        "Top-5 classes of one image; the same image again by its `image_id` (404 once it left the store: upload again)",
        f"curl -s -F image=@photo.jpg '{BASE}/v1/predict?top_k=5'\n"
        f"curl -s -X POST '{BASE}/v1/predict?top_k=5&image_id=<image_id of an earlier answer>'",
    ),
    (
        "POST",
        "/v1/predict/batch",
        "Several images in one request",
        f"curl -s -F images=@a.jpg -F images=@b.png '{BASE}/v1/predict/batch?top_k=3'",
    ),
    (
        "POST",
        "/v1/activations",
        "Top 16 depthwise maps of a layer (JSON with statistics and PNG tiles); a labelled montage; the raw array",
        f"curl -s -F image=@photo.jpg '{BASE}/v1/activations?layer=middle.block5.sep2&part=depthwise&top=16&sort=max'\n"
        f"curl -s -F image=@photo.jpg -o montage.png '{BASE}/v1/activations?layer=entry.block3.sep1&part=pointwise&channels=0,5,9&format=png&colormap=magma&normalize=layer'\n"
        f"curl -s -F image=@photo.jpg -o maps.npy '{BASE}/v1/activations?layer=middle.block5.sep3&part=pointwise&top=8&sort=attribution&format=npy'",
    ),
    (
        "POST",
        "/v1/decomposition",
        "How pointwise channel 42 is built from depthwise channels (JSON; or the arrays as .npz)",
        f"curl -s -F image=@photo.jpg '{BASE}/v1/decomposition?layer=middle.block5.sep1&channel=42&top=8'\n"
        f"curl -s -F image=@photo.jpg -o dec.npz '{BASE}/v1/decomposition?layer=middle.block5.sep1&channel=42&format=npz'",
    ),
    (
        "POST",
        "/v1/attributions",
        "Integrated Gradients for the predicted class (JSON with overlay and quality); Grad-CAM overlay PNG; raw SmoothGrad array",
        f"curl -s -F image=@photo.jpg '{BASE}/v1/attributions?method=integrated_gradients&n_steps=32&infidelity=true'\n"
        f"curl -s -F image=@photo.jpg -o gradcam.png '{BASE}/v1/attributions?method=layer_gradcam&layer=middle.block5.sep3&part=pointwise&target=3&format=png'\n"
        f"curl -s -F image=@photo.jpg -o sg.npy '{BASE}/v1/attributions?method=smoothgrad&nt_samples=16&seed=1&format=npy'",
    ),
    ("GET", "/v1/methods", "Attribution methods and their parameters", f"curl -s {BASE}/v1/methods"),
    ("GET", "/v1/colormaps", "Colour maps", f"curl -s {BASE}/v1/colormaps"),
    ("GET", "/metrics", "Prometheus metrics", f"curl -s {BASE}/metrics"),
]


def code_samples() -> dict[tuple[str, str], list[dict[str, str]]]:
    """``x-codeSamples`` of each operation, by (lower-case method, path)."""
    return {(m.lower(), p): [{"lang": "Shell", "label": "curl", "source": curl}] for m, p, _, curl in EXAMPLES}
