"""Upload once, shareable views, the photograph warning (AppTest against the real API, tiny model).

Every page keeps its view in the URL (``st.query_params``); a link opened in a fresh session
restores it while the API still stores the image, and says so plainly when it does not.
"""

from __future__ import annotations

import hashlib
import secrets

import httpx
import pytest
import streamlit as st
from uihelpers import ATTRIBUTIONS, EXPLORER, MODEL_ID, PREDICT, assert_clean, texts

from ui import session
from ui.client import IMAGE_GONE, ApiClient

ANALYSES = ("/v1/predict", "/v1/activations", "/v1/decomposition", "/v1/attributions")


def store(api_url: str, png: bytes) -> str:
    """Upload ``png`` to the API's image store (as another browser did); its image_id."""
    answer = httpx.post(f"{api_url}/v1/images", files={"image": ("cat.png", png, "image/png")}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["image_id"]


class CountingTransport(httpx.BaseTransport):
    """Passes every request to the real API and notes what it carried."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, str, bool, str | None]] = []  # method, path, image bytes in the body, image_id
        self.answers: list[tuple[str, dict[str, str], str | None]] = []  # path, query, X-Cache

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        self.seen.append((request.method, request.url.path, multipart, request.url.params.get("image_id")))
        response = self.inner.handle_request(request)
        self.answers.append((request.url.path, dict(request.url.params), response.headers.get("x-cache")))
        return response

    def uploads(self) -> list[str]:
        return [path for method, path, body, _ in self.seen if body]


@pytest.fixture
def counted(api_url, monkeypatch) -> CountingTransport:
    """The app's API client counts its requests (a fresh one, and empty caches: every call reaches the API)."""
    transport = CountingTransport()
    client = ApiClient(api_url, transport=transport)
    monkeypatch.setattr(session, "_client", lambda url, key: client)
    st.cache_data.clear()
    yield transport
    client.close()
    st.cache_data.clear()


def test_an_image_is_uploaded_once_and_named_by_its_id_afterwards(app, cat_png, counted):
    image_id = hashlib.sha256(cat_png).hexdigest()
    at = app.run()
    at.file_uploader(key="uploader").upload("chelsea.png", cat_png, "image/png")
    at.run()
    assert_clean(at)
    at.slider(key="top_k").set_value(3).run()  # reruns of the page
    at.run()
    at.switch_page(EXPLORER).run()
    at.slider(key="lx_top").set_value(4).run()
    at.selectbox(key="lx_sort").select("max").run()
    at.switch_page(ATTRIBUTIONS).run()
    at.multiselect(key="attr_methods").set_value(["saliency"]).run()
    at.button(key="attr_run").click().run()
    at.slider(key="attr_opacity").set_value(0.3).run()
    at.button(key="attr_run").click().run()
    assert_clean(at)
    at.switch_page(PREDICT).run()
    assert_clean(at)
    # the bytes went once, to POST /v1/images; every analysis named the image by its id
    assert counted.uploads() == ["/v1/images"], counted.seen
    analyses = [(path, image) for method, path, _, image in counted.seen if path in ANALYSES]
    assert {path for path, _ in analyses} == set(ANALYSES), counted.seen
    assert all(image == image_id for _, image in analyses), analyses
    assert at.query_params["image"] == image_id


def test_attributions_show_the_map_first_then_the_quality_figures(app, cat_png, counted):
    fresh = cat_png + secrets.token_bytes(8)  # bytes no other test sent: nothing of it in the server's caches
    at = app.run()
    at.file_uploader(key="uploader").upload("chelsea.png", fresh, "image/png")
    at.run()
    at.switch_page(ATTRIBUTIONS).run()
    at.multiselect(key="attr_methods").set_value(["saliency", "layer_gradcam"]).run()
    at.button(key="attr_run").click().run()
    assert_clean(at)
    asked = [(q["method"], q["quality"], cache) for path, q, cache in counted.answers if path == "/v1/attributions"]
    # both maps first (no figures: nothing asked of them), then the figures; those requests find the maps in the cache
    assert [(m, level) for m, level, _ in asked] == [
        ("saliency", "none"), ("layer_gradcam", "none"), ("saliency", "auc"), ("layer_gradcam", "auc")
    ], asked
    assert all("auc_steps" not in q for path, q, _ in counted.answers if q.get("quality") == "none")
    labels = [m.label for m in at.metric]
    assert labels.count("deletion AUC") == 2 and labels.count("insertion AUC") == 2
    assert not any("from the server's cache" in t for t in texts(at.caption))
    # the same view again in another session (the app's own cache empty): the server answers from its cache
    st.cache_data.clear()
    at.run()
    assert [cache for path, _, cache in counted.answers if path == "/v1/attributions"][len(asked):] == ["hit"] * 4
    assert sum("from the server's cache" in t for t in texts(at.caption)) == 2, texts(at.caption)
    asked = [(q["method"], q["quality"], cache) for path, q, cache in counted.answers if path == "/v1/attributions"]
    # full: the curves too, and the maps are not computed again
    at.radio(key="attr_quality").set_value("full").run()
    at.button(key="attr_run").click().run()
    assert_clean(at)
    assert len(at.get("vega_lite_chart")) >= 2, "no deletion / insertion curves"
    again = [(q["method"], q["quality"]) for path, q, _ in counted.answers if path == "/v1/attributions"][len(asked):]
    assert again == [("saliency", "full"), ("layer_gradcam", "full")], again  # the maps came from the app's own cache


def test_an_evicted_image_goes_again_once_when_the_session_has_it(api_url, cat_png):
    """The server forgot the id (evicted): the client stores the bytes again and goes on with the id."""
    from ui.client import ImageRef

    transport = CountingTransport()
    with ApiClient(api_url, transport=transport) as client:
        data = cat_png + b"\0" * 7  # bytes the server has never seen (a PNG ignores trailing bytes)
        ref = ImageRef(hashlib.sha256(data).hexdigest(), data)
        client.stores_images = True  # as after an earlier upload: the id is tried first
        first = client.predict(ref, top_k=2)
        second = client.predict(ref, top_k=3)
    assert first["image_id"] == second["image_id"] == ref.image_id
    assert transport.uploads() == ["/v1/images"], transport.seen
    assert [(p, i) for m, p, _, i in transport.seen] == [
        ("/v1/predict", ref.image_id), ("/v1/images", None), ("/v1/predict", ref.image_id), ("/v1/predict", ref.image_id)
    ]


def test_a_link_restores_the_layer_explorer(app, api_url, cat_png):
    image_id = store(api_url, cat_png)
    app.query_params.update(
        page="layer_explorer", image=image_id, model=MODEL_ID, layer="middle.block5.sep2", top="6", sort="max",
        normalize="layer", colormap="magma", channel="3", terms="4",
    )
    at = app.run()
    assert_clean(at)
    assert texts(at.title) == ["Layer explorer"]
    assert at.session_state["image"].image_id == image_id and at.session_state["image"].source == "link"
    assert at.session_state["image"].data == cat_png  # fetched back (GET /v1/images/{id}), so it can be shown
    assert at.radio(key="lx_flow").value == "middle"
    assert at.selectbox(key="lx_layer_middle").value == "middle.block5.sep2"
    assert at.slider(key="lx_top").value == 6
    assert at.selectbox(key="lx_sort").value == "max"
    assert at.radio(key="lx_norm").value == "layer"
    assert at.selectbox(key="lx_cmap").value == "magma"
    assert at.selectbox(key="lx_channel_middle.block5.sep2").value == 3
    assert at.slider(key="lx_terms").value == 4
    grids = [list(img.captions) for img in at.image if len(img.captions) == 6]
    assert len(grids) == 2, "the maps of the restored view are drawn"
    # the URL still says the same, and follows what the person changes next
    assert at.query_params["layer"] == "middle.block5.sep2" and at.query_params["top"] == "6"
    at.slider(key="lx_top").set_value(5).run()
    assert at.query_params["top"] == "5" and at.slider(key="lx_top").value == 5


def test_a_link_restores_the_attributions_and_shows_their_maps(app, api_url, cat_png):
    image_id = store(api_url, cat_png)
    app.query_params.update(
        page="attributions", image=image_id, methods="saliency,layer_gradcam", target="4", layer="middle.block5.sep3",
        part="depthwise", sign="all", opacity="0.3", colormap="magma", quality="auc",
    )
    at = app.run()
    assert_clean(at)
    assert texts(at.title) == ["Attributions"]
    assert at.multiselect(key="attr_methods").value == ["saliency", "layer_gradcam"]
    assert at.selectbox(key="attr_target").value == 4
    assert at.selectbox(key="attr_layer").value == "middle.block5.sep3"
    assert at.radio(key="attr_part").value == "depthwise"
    assert at.radio(key="attr_sign").value == "all"
    assert at.slider(key="attr_opacity").value == pytest.approx(0.3)
    assert at.selectbox(key="attr_cmap").value == "magma"
    assert at.radio(key="attr_quality").value == "auc"
    # computed without a click: the maps, then their quality figures
    assert [s.value for s in at.subheader] == ["saliency", "layer_gradcam"]
    assert [m.label for m in at.metric].count("deletion AUC") == 2
    assert any("middle.block5.sep3 (depthwise)" in c for c in texts(at.caption))


def test_a_sample_link_with_a_variant_out_of_range_opens_variant_0(app):
    app.query_params.update(sample="generated-03", variant="99999")
    at = app.run()
    assert_clean(at)
    assert any("variant=99999" in t for t in texts(at.warning)), texts(at.warning)
    assert at.session_state["image"].variant == 0 and "variant" not in at.query_params


def test_a_link_to_a_sample_fetches_it_again(app):
    app.query_params.update(page="predict", sample="generated-03", variant="2", top_k="3")
    at = app.run()
    assert_clean(at)
    image = at.session_state["image"]
    assert image.sample_id == "generated-03" and image.variant == 2 and image.true_index == 3
    assert at.slider(key="top_k").value == 3
    assert at.query_params["sample"] == "generated-03" and at.query_params["variant"] == "2"
    # the Predict page shows that sample in its picker
    assert at.radio(key="predict_source").value == "Generated sample"
    assert at.selectbox(key="generated_class").value == 3 and at.number_input(key="generated_variant").value == 2


def test_a_link_whose_image_is_gone_says_so_plainly(app):
    app.query_params.update(page="layer_explorer", image=secrets.token_hex(32), layer="middle.block5.sep2")
    at = app.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(IMAGE_GONE in t for t in texts(at.warning)), texts(at.warning)
    assert "image" not in at.session_state or at.session_state["image"] is None
    assert any("No image yet" in t for t in texts(at.info))  # and the page offers the ways to get one


def test_values_of_a_link_that_do_not_fit_are_ignored_with_a_notice(app, api_url, cat_png):
    image_id = store(api_url, cat_png)
    app.query_params.update(
        page="attributions", image=image_id, model="no-such-model", methods="saliency,nope", layer="entry.block99.sep1",
        part="sideways", opacity="7", target="12345", sign="<script>", quality="best", colormap="x" * 500,
    )
    at = app.run()
    assert not at.exception, [e.value for e in at.exception]
    notices = " ".join(texts(at.warning))
    for bad in ("model=no-such-model", "`nope`", "layer=entry.block99.sep1", "part=sideways", "opacity=7", "target=12345",
                "sign=<script>", "quality=best", "colormap="):
        assert bad in notices, (bad, notices)
    # the rest of the link holds, the refused ones fall back to the defaults
    assert at.sidebar.selectbox(key="model_id").value == MODEL_ID
    assert at.multiselect(key="attr_methods").value == ["saliency"]
    assert at.slider(key="attr_opacity").value == pytest.approx(0.5)
    assert at.radio(key="attr_quality").value == "auc"
    # a page or an image id that is not one
    at2 = type(app).from_file(app._script_path, default_timeout=180)
    at2.query_params.update(page="nowhere", image="../../etc/passwd", sample="nope", top_k="0")
    at2.run()
    assert not at2.exception, [e.value for e in at2.exception]
    notices = " ".join(texts(at2.warning))
    assert "page=nowhere" in notices and "image=../../etc/passwd" in notices and "sample=nope" in notices
    assert "top_k=0" not in notices  # no image: the page stops before its top-k
    assert texts(at2.title) == ["Predict"]


def test_the_pattern_model_warns_on_a_photograph(app, cat_png):
    at = app.run()
    at.file_uploader(key="uploader").upload("chelsea.png", cat_png, "image/png")
    at.run()
    assert_clean(at)
    warnings = [t for t in texts(at.warning) if "generated patterns" in t]
    assert len(warnings) == 1, texts(at.warning)
    assert "xception-demo weights download xception-imagenet" in warnings[0]
    assert "--file xception-43020ad28.pth" in warnings[0]
    # a sample photograph too; a generated sample does not
    at.radio(key="predict_source").set_value("Sample photo").run()
    at.button(key="photo_chelsea").click().run()
    assert any("generated patterns" in t and "a photograph" in t for t in texts(at.warning)), texts(at.warning)
    at.radio(key="predict_source").set_value("Generated sample").run()
    at.button(key="use_generated").click().run()
    assert_clean(at)
    assert not [t for t in texts(at.warning) if "generated patterns" in t]


def test_a_link_shows_its_image_and_uploads_nothing(app, api_url, cat_png, counted):
    """The bytes come back from GET /v1/images/{id}, are shown on the Predict page and in the
    sidebar, and are not uploaded again (the server has them)."""
    image_id = store(api_url, cat_png)
    app.query_params.update(page="predict", image=image_id)
    at = app.run()
    assert_clean(at)
    assert ("GET", f"/v1/images/{image_id}") in [(m, p) for m, p, _, _ in counted.seen], counted.seen
    assert counted.uploads() == [], counted.seen
    assert at.session_state["image"].data == cat_png and at.session_state["image"].source == "link"
    assert not any("Opened from a link" in t for t in texts(at.info) + texts(at.caption))
    assert len(at.image) >= 2  # the Predict page's picture and the sidebar's thumbnail
