"""POST /v1/activations and /v1/decomposition in every format."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from apihelpers import INPUT_SIZE, assert_problem, files, load_npy, preprocess
from xception_core.introspect import forward_with_capture
from xception_core.profile import profile_model
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

LAYER = "middle.block5.sep2"


def captured(model, data: bytes, layer: str) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, kept = forward_with_capture(model, preprocess(data), [layer], ("input", "depthwise", "pointwise"))
    return {k: v[0] for k, v in kept[layer].items()}


def png_size(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_npy_shapes_match_the_layer_table_for_every_layer_and_part(client, tiny_model, png):
    table = {s["name"]: s for s in client.get("/v1/models/tiny/layers").json()["separable_layers"]}
    profile = profile_model(tiny_model.config, INPUT_SIZE)
    assert list(table) == [s.name for s in profile.separable]
    for name, row in table.items():
        h, w = row["output_size"]
        for part, channels in (("depthwise", row["in_channels"]), ("pointwise", row["out_channels"]), ("input", row["in_channels"])):
            k = min(5, channels)
            r = client.post(f"/v1/activations?layer={name}&part={part}&top={k}&format=npy", files=files(png))
            assert r.status_code == 200, (name, part, r.text)
            arr = load_npy(r.content)
            assert arr.shape == (k, h, w) and arr.dtype == np.float32, (name, part, arr.shape)
            assert r.headers["x-shape"] == f"{k},{h},{w}"


def test_npy_values_are_the_captured_maps(client, entry, png):
    ref = captured(entry.model, png, LAYER)
    for part in ("depthwise", "pointwise", "input"):
        r = client.post(f"/v1/activations?layer={LAYER}&part={part}&channels=3,0,7&format=npy", files=files(png))
        assert r.headers["x-channels"] == "3,0,7"
        torch.testing.assert_close(torch.from_numpy(load_npy(r.content)), ref[part][[3, 0, 7]])


@pytest.mark.parametrize("sort", ["mean", "max"])
def test_top_k_sorted_by_statistic(client, entry, png, sort):
    ref = captured(entry.model, png, LAYER)["pointwise"]
    score = ref.mean(dim=(1, 2)) if sort == "mean" else ref.amax(dim=(1, 2))
    body = client.post(f"/v1/activations?layer={LAYER}&part=pointwise&top=6&sort={sort}", files=files(png)).json()
    assert [c["index"] for c in body["channels"]] == torch.argsort(score, descending=True)[:6].tolist()
    scores = [c["score"] for c in body["channels"]]
    assert scores == sorted(scores, reverse=True)


def test_top_k_sorted_by_attribution(client, entry, png):
    from xception_core.attributions import Attributor

    direct = Attributor(entry.model).attribute(preprocess(png), "channel_importance", target=2, layer=LAYER, part="depthwise", auc_steps=0)
    body = client.post(f"/v1/activations?layer={LAYER}&part=depthwise&top=5&sort=attribution&target=2", files=files(png)).json()
    assert body["target"] == 2 and body["sort"] == "attribution"
    assert [c["index"] for c in body["channels"]] == [c for c, _ in direct.channel_ranking[:5]]
    np.testing.assert_allclose([c["score"] for c in body["channels"]], [s for _, s in direct.channel_ranking[:5]], rtol=1e-4, atol=1e-6)


def test_json_statistics_and_tiles(client, entry, png):
    ref = captured(entry.model, png, LAYER)["depthwise"]
    r = client.post(f"/v1/activations?layer={LAYER}&part=depthwise&channels=1,2&tile_px=48&colormap=magma", files=files(png))
    body = r.json()
    assert body["shape"] == list(ref.shape) and body["selection"] == "channels" and body["colormap"] == "magma"
    for item in body["channels"]:
        m = ref[item["index"]]
        assert item["mean"] == pytest.approx(float(m.mean()), rel=1e-5, abs=1e-7)
        assert item["max"] == pytest.approx(float(m.max())) and item["min"] == pytest.approx(float(m.min()))
        assert item["zero_fraction"] == pytest.approx(float((m == 0).float().mean()))
        assert item["nonpositive_fraction"] == pytest.approx(float((m <= 0).float().mean()))
        h, w = m.shape
        assert png_size(item["png"]) == (48, round(48 * h / w))
    assert body["value_range"] == pytest.approx([float(ref.min()), float(ref.max())])


def test_normalisation_changes_the_tiles(client, png):
    url = f"/v1/activations?layer={LAYER}&part=pointwise&channels=0,1,2,3"
    per_channel = client.post(url + "&normalize=channel", files=files(png)).json()["channels"]
    per_layer = client.post(url + "&normalize=layer", files=files(png)).json()["channels"]
    assert [c["png"] for c in per_channel] != [c["png"] for c in per_layer]
    assert [c["mean"] for c in per_channel] == [c["mean"] for c in per_layer]


def test_png_montage(client, png):
    r = client.post(f"/v1/activations?layer={LAYER}&part=pointwise&top=9&format=png&tile_px=32&columns=3", files=files(png))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == "PNG" and img.width == 3 * (32 + 2) + 2


def test_layer_maps_come_from_the_cache(client, png_images):
    data = png_images[2]
    url = "/v1/activations?layer=exit.block7.sep1&part=depthwise&top=2"
    assert client.post(url, files=files(data)).json()["cached"] is False
    assert client.post(url + "&format=npy", files=files(data)).headers["x-cache"] == "hit"
    assert client.post(url.replace("depthwise", "pointwise"), files=files(data)).json()["cached"] is True


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("layer=entry.block9.sep1", "valid choices: entry.block2.sep1"),
        ("layer=entry.block2.sep1&part=both", "depthwise"),
        ("layer=entry.block2.sep1&channels=0,99", "0..15"),
        ("layer=entry.block2.sep1&channels=a,b", "comma-separated"),
        ("layer=entry.block2.sep1&top=65", "<= 64"),
        ("layer=entry.block2.sep1&tile_px=4096", "<= 256"),
        ("layer=entry.block2.sep1&colormap=hot_pink", "viridis"),
        ("layer=entry.block2.sep1&sort=attribution&target=7", "0..6"),
        ("layer=entry.block2.sep1&format=tiff", "json"),
        ("part=depthwise", "layer"),
    ],
)
def test_activation_parameter_errors(client, png, query, fragment):
    assert_problem(client.post(f"/v1/activations?{query}", files=files(png)), 422, fragment)


# --------------------------------------------------------------------------- decomposition


@pytest.mark.parametrize("layer, channel", [("entry.block2.sep1", 3), (LAYER, 17), ("exit.block8.sep2", 55)])
def test_decomposition_sums_to_the_pointwise_output(client, entry, png, layer, channel):
    r = client.post(f"/v1/decomposition?layer={layer}&channel={channel}&top=4&format=npz", files=files(png))
    assert r.status_code == 200, r.text
    z = np.load(io.BytesIO(r.content))
    ref = captured(entry.model, png, layer)
    pointwise = ref["pointwise"][channel].numpy()
    np.testing.assert_allclose(z["pointwise"], pointwise, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z["total"], pointwise, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z["contributions"].sum(0) + z["rest"], z["total"], rtol=1e-4, atol=1e-5)
    w = entry.separable[layer].pointwise.weight[channel, :, 0, 0].detach().numpy()
    np.testing.assert_allclose(z["weights"], w)
    kernels = entry.separable[layer].depthwise.weight[:, 0].detach().numpy()
    for k, i in enumerate(z["order"]):
        np.testing.assert_allclose(z["contributions"][k], w[i] * ref["depthwise"][i].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(z["kernels"][k], kernels[i])
    # the terms are the 4 of largest energy (sum of squares of W[c, i] * depthwise_i) over every depthwise channel
    energies = np.array([float(((w[i] * ref["depthwise"][i].double().numpy()) ** 2).sum()) for i in range(len(w))])
    assert z["order"].tolist() == np.argsort(-energies, kind="stable")[:4].tolist()  # ties: channel order
    np.testing.assert_allclose(z["energy"], energies[z["order"]], rtol=1e-4)


def test_decomposition_json_and_png(client, entry, png):
    body = client.post(f"/v1/decomposition?layer={LAYER}&channel=5&top=3", files=files(png)).json()
    kernels = entry.separable[LAYER].depthwise.weight[:, 0].detach()
    for c in body["contributions"]:
        np.testing.assert_allclose(c["kernel"], kernels[c["channel"]].numpy(), rtol=1e-6)
    assert body["max_abs_error"] < 1e-4 and len(body["contributions"]) == 3 and len(body["weights"]) == 32
    ref = captured(entry.model, png, LAYER)
    w = entry.separable[LAYER].pointwise.weight[5, :, 0, 0].detach().double()
    energies = (w[:, None, None] * ref["depthwise"].double()).pow(2).sum(dim=(1, 2))
    top = torch.topk(energies, 3)
    assert [c["channel"] for c in body["contributions"]] == top.indices.tolist()
    np.testing.assert_allclose([c["energy"] for c in body["contributions"]], top.values.numpy(), rtol=1e-4)
    assert body["total"]["min"] == pytest.approx(body["pointwise"]["min"], abs=1e-4)
    r = client.post(f"/v1/decomposition?layer={LAYER}&channel=5&top=3&format=png", files=files(png))
    assert r.headers["content-type"] == "image/png" and Image.open(io.BytesIO(r.content)).format == "PNG"


def test_decomposition_errors(client, png):
    assert_problem(client.post(f"/v1/decomposition?layer={LAYER}&channel=32", files=files(png)), 422, "0..31")
    assert_problem(client.post(f"/v1/decomposition?layer={LAYER}", files=files(png)), 422, "channel")
    assert_problem(client.post("/v1/decomposition?layer=nope&channel=0", files=files(png)), 422, "valid choices")
