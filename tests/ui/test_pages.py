"""Every page of the Streamlit app (AppTest) against a real API serving a tiny model over HTTP."""

from __future__ import annotations

import json
import re

import pytest
from uihelpers import ARCHITECTURE, ATLAS, ATTRIBUTIONS, EXPLORER, MODEL_ID, assert_clean, texts, tile_captions, with_photo


def test_predict_page_upload_shows_predictions_and_model_status(app, cat_png):
    at = with_photo(app, cat_png)
    assert_clean(at)
    assert texts(at.title) == ["Predict"]
    # the model picker lists every model with its weights status, the tiny one chosen
    picker = at.sidebar.selectbox(key="model_id")
    assert picker.value == MODEL_ID
    assert set(picker.options) >= {f"✓ {MODEL_ID}", "✗ xception-imagenet (weights missing)"}
    assert any("xception-demo weights download xception-imagenet" in t for t in texts(at.sidebar.info))
    # the prediction: its top class as heading, a bar chart, latency and device
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Device"] == "cpu" and metrics["Precision"] == "fp32"
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", metrics["Latency"]), metrics["Latency"]  # ms below a second
    assert any(f"Model **{MODEL_ID}**" in t for t in texts(at.caption))
    # how the server computed it (the API's engine: onnxruntime on this CPU)
    assert any("computed by **onnxruntime** (fp32)" in t for t in texts(at.caption))
    assert at.subheader and "%" in at.subheader[0].value
    assert at.get("vega_lite_chart"), "no bar chart"
    assert at.session_state["image"].name == "chelsea.png"
    # fewer classes: the answer follows
    at.slider(key="top_k").set_value(3).run()
    assert_clean(at)


def test_generated_sample_shows_its_true_class(app, api_url):
    import httpx

    at = app.run()
    at.radio(key="predict_source").set_value("Generated sample").run()
    at.selectbox(key="generated_class").select(3).run()
    at.button(key="use_generated").click().run()
    assert_clean(at)
    image = at.session_state["image"]
    assert image.source == "generated" and image.true_index == 3
    assert f"True class: **{image.true_label}**" in texts(at.caption)
    # the verdict is the one the API's own answer calls for
    answer = httpx.post(f"{api_url}/v1/predict?top_k=5", files={"image": ("x.png", image.data, "image/png")}, timeout=60).json()
    ranks = [p["index"] for p in answer["predictions"]]
    if ranks[0] == image.true_index:
        assert texts(at.success) == [f"Top-1 matches the true class ({image.true_label})."] and not at.warning
    else:
        where = f"rank {ranks.index(image.true_index) + 1} of the top 5" if image.true_index in ranks else "not in the top 5"
        assert texts(at.warning) == [f"The true class ({image.true_label}) is {where}."] and not at.success


def test_architecture_page_flows_layers_and_spectrum(app, cat_png):
    at = app.run()
    at.switch_page(ARCHITECTURE).run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Separable convolutions"] == "13" and metrics["Input"] == "96×96"
    assert at.get("graphviz_chart"), "no diagram of the flows"
    at.radio(key="arch_flow").set_value("middle").run()
    assert_clean(at)
    layers = at.dataframe[0].value
    assert set(layers["kind"]) >= {"depthwise", "pointwise"} and all(n.startswith("middle.") for n in layers["layer"])
    separable = at.dataframe[1].value
    assert list(separable.columns)[3:7] == ["depthwise params", "pointwise params", "depthwise MACs", "pointwise MACs"]
    # spectrum of middle.block5.sep1 (32 -> 32 channels, 6x6): regular, k segments, separable
    at.selectbox(key="spectrum_layer").select("middle.block5.sep1").run()
    spectrum = at.dataframe[2].value
    params = dict(zip(spectrum["segments"], spectrum["params"]))
    assert params["k = 1 (regular conv)"] == 32 * 32 * 9
    assert params["k = 4"] == 32 * 32 + 4 * 8 * 8 * 9
    assert params["k = 32 (separable)"] == 32 * 9 + 32 * 32
    assert dict(zip(spectrum["segments"], spectrum["MACs"]))["k = 32 (separable)"] == (32 * 9 + 32 * 32) * 36


def test_architecture_page_shows_the_measured_spectrum_beside_the_counted_one(app, api_url):
    import httpx

    at = app.run()
    at.switch_page(ARCHITECTURE).run()
    assert_clean(at)
    assert "The spectrum, trained" in texts(at.subheader)
    results = httpx.get(f"{api_url}/v1/spectrum/results", timeout=30).json()["points"]
    measured = at.dataframe[3].value
    assert list(measured["point"]) == [p["label"] for p in results]
    assert list(measured["params"]) == [p["params"] for p in results] and list(measured["MACs"]) == [p["macs"] for p in results]
    assert list(measured["val top-1"]) == [p["val_top1"] for p in results]
    assert set(measured["order"]) == {"k = 1 (regular)", "depthwise first", "1×1 first"}
    charts = [json.loads(c.spec) if isinstance(c.spec, str) else c.spec for c in at.get("vega_lite_chart")]
    titles = [json.dumps(c.get("title", "")) for c in charts]
    assert any("against parameters" in t for t in titles) and any("against MACs" in t for t in titles), titles
    assert any("same formula as the table above" in t for t in texts(at.caption))
    # the counted table is still there, from the API's spectrum endpoint
    assert at.dataframe[2].value["segments"].iloc[0] == "k = 1 (regular conv)"


def test_layer_explorer_draws_depthwise_and_pointwise_maps(app, cat_png):
    at = with_photo(app, cat_png)
    at.switch_page(EXPLORER).run()
    assert_clean(at)
    assert [s.value for s in at.subheader][:2] == ["Depthwise 3×3 · spatial", "Pointwise 1×1 · cross-channel"]
    grids = [c for c in tile_captions(at) if len(c) > 1]
    assert len(grids) == 2 and all(len(c) == 16 for c in grids), grids  # entry.block2.sep1 has 16 channels each
    # another layer, fewer channels, sorted by attribution, one scale per layer
    at.radio(key="lx_flow").set_value("middle").run()
    at.selectbox(key="lx_layer_middle").select("middle.block5.sep2").run()
    at.slider(key="lx_top").set_value(6).run()
    at.selectbox(key="lx_sort").select("attribution").run()
    at.radio(key="lx_norm").set_value("layer").run()
    assert_clean(at)
    grids = [c for c in tile_captions(at) if len(c) == 6]
    assert len(grids) == 2, tile_captions(at)
    # the decomposition of a pointwise channel: its terms and the exactness check
    at.slider(key="lx_terms").set_value(4).run()
    assert_clean(at)
    error = {m.label: m.value for m in at.metric}["max |sum − pointwise|"]
    assert float(error) < 1e-3
    depthwise_terms = [c for c in tile_captions(at) if c and c[0].startswith("dw #")]
    assert len(depthwise_terms) == 4
    kernels = [c for c in tile_captions(at) if c == ["3×3 kernel"]]
    assert len(kernels) == 4  # each term's depthwise kernel is drawn beside its map
    assert any("3×3 depthwise kernel" in t for t in texts(at.caption))


def test_attributions_page_runs_two_methods_side_by_side(app, cat_png):
    at = with_photo(app, cat_png)
    at.switch_page(ATTRIBUTIONS).run()
    assert_clean(at)
    at.multiselect(key="attr_methods").set_value(["saliency", "layer_gradcam"]).run()
    at.selectbox(key="attr_layer").select("middle.block5.sep3").run()
    at.radio(key="attr_part").set_value("depthwise").run()
    at.selectbox(key="attr_target").select(4).run()
    at.slider(key="attr_opacity").set_value(0.7).run()
    at.button(key="attr_run").click().run()
    assert_clean(at)
    assert [s.value for s in at.subheader] == ["saliency", "layer_gradcam"]
    labels = [m.label for m in at.metric]
    assert labels.count("deletion AUC") == 2 and labels.count("insertion AUC") == 2
    captions = texts(at.caption)
    assert sum("target **" in c and "(requested" in c for c in captions) == 2, captions
    assert any("middle.block5.sep3 (depthwise)" in c for c in captions)


@pytest.mark.parametrize("page", [EXPLORER, ATTRIBUTIONS])
def test_pages_without_an_image_offer_a_sample(app, page):
    at = app.run()
    at.switch_page(page).run()
    assert_clean(at)
    at.button(key="use_default_sample").click().run()
    assert_clean(at)
    assert at.session_state["image"].name == "chelsea.jpg"


def test_api_error_is_a_readable_message(app):
    at = app.run()
    at.file_uploader(key="uploader").upload("notes.png", b"these are notes, not an image", "image/png").run()
    assert not at.exception
    messages = texts(at.error)
    assert len(messages) == 1 and "Unsupported Media Type (HTTP 415)" in messages[0] and "text" in messages[0], messages
    assert "Traceback" not in messages[0]
    assert any("cannot be previewed" in t for t in texts(at.warning))


def test_unreachable_api_is_a_readable_message(app, monkeypatch):
    from uihelpers import free_port

    monkeypatch.setenv("XCEPTION_UI_API_URL", f"http://127.0.0.1:{free_port()}")
    at = app.run()
    assert not at.exception
    assert any("API unreachable" in t and "xception-demo" in t for t in texts(at.sidebar.error)), texts(at.sidebar.error)


def test_model_without_weights_explains_how_to_get_them(app, cat_png):
    at = with_photo(app, cat_png)
    at.sidebar.selectbox(key="model_id").select("xception-imagenet").run()
    assert not at.exception
    assert any("xception-demo weights download xception-imagenet" in t for t in texts(at.sidebar.warning))
    errors = texts(at.error)
    assert len(errors) == 1 and "HTTP 409" in errors[0] and "xception-demo weights download xception-imagenet" in errors[0], errors
    # the architecture needs no weights: the paper's model
    at.switch_page(ARCHITECTURE).run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Separable convolutions"] == "34" and metrics["Parameters"] == "22.9 M" and metrics["Input"] == "299×299"
    # the maps do: the same readable message
    at.switch_page(EXPLORER).run()
    assert not at.exception
    assert at.error and all("HTTP 409" in t for t in texts(at.error))


def atlas_at(app, **query):
    """The atlas page reached by a link with ``query`` (cheap visualisations: 8 steps)."""
    app.session_state["ca_steps"] = 8
    app.query_params.update(query)
    app.run()
    return app.switch_page(ATLAS).run()


def test_channel_atlas_shows_a_pointwise_channel_beside_its_strongest_depthwise_input(app):
    at = atlas_at(app, layer="entry.block3.sep1", part="pointwise", channel="5")
    assert_clean(at)
    assert texts(at.title) == ["Channel atlas"]
    assert (at.selectbox(key="ca_layer").value, at.radio(key="ca_part").value, at.number_input(key="ca_channel").value) == ("entry.block3.sep1", "pointwise", 5)
    heads = [s.value for s in at.subheader]
    assert heads[1] == "Pointwise 1×1 · cross-channel · #5" and heads[0].startswith("Depthwise 3×3 · spatial · #"), heads
    captions = tile_captions(at)
    assert captions.count(["feature visualisation"]) == 2  # both parts
    examples = [c for c in captions if len(c) > 1]
    assert len(examples) == 2 and all(len(c) == 9 for c in examples), captions  # the top 9 of each part
    assert ["3×3 kernel"] in captions  # the depthwise partner's kernel
    assert len(at.get("vega_lite_chart")) >= 3  # the 1x1 weights, two histograms
    # the strongest depthwise input is the partner shown on the left
    strongest = next(b for b in at.button if b.label.startswith("dw #"))
    assert heads[0].endswith(strongest.label.removeprefix("dw "))
    # a click through to a depthwise channel it mixes: that channel becomes the chosen one, in the URL too
    target = [b for b in at.button if b.label.startswith("dw #")][1]
    target.click().run()
    assert_clean(at)
    number = int(target.label.removeprefix("dw #"))
    assert (at.radio(key="ca_part").value, at.number_input(key="ca_channel").value) == ("depthwise", number)
    assert (at.query_params["part"], at.query_params["channel"]) == ("depthwise", str(number))
    assert [s.value for s in at.subheader][0] == f"Depthwise 3×3 · spatial · #{number}"


def test_layer_explorer_tiles_link_to_the_atlas_and_the_link_arrives(app, cat_png):
    at = with_photo(app, cat_png)
    at.switch_page(EXPLORER).run()
    links = [e.proto for e in at.get("page_link") if e.proto.page == "atlas"]  # the page's URL path
    assert len(links) == 32  # one per tile: 16 depthwise and 16 pointwise channels of entry.block2.sep1
    shown = tile_captions(at)
    pointwise = [c for c in shown if len(c) == 16][1]
    link = next(l for l in links if "part=pointwise" in l.query_string)
    assert link.label == pointwise[0].split(" ")[0]  # the first tile's channel: "#<index>"
    query = dict(pair.split("=") for pair in link.query_string.split("&"))
    at.session_state["ca_steps"] = 8
    at.query_params.update(query)
    at.switch_page(ATLAS).run()
    assert_clean(at)
    channel = int(query["channel"])
    assert (at.selectbox(key="ca_layer").value, at.radio(key="ca_part").value, at.number_input(key="ca_channel").value) == (
        "entry.block2.sep1", "pointwise", channel
    )
    assert [s.value for s in at.subheader][1] == f"Pointwise 1×1 · cross-channel · #{channel}"
