"""Predict: choose an image (upload, sample photo, generated sample) and see what Xception predicts."""

from __future__ import annotations

import csv
import io
import json

import altair as alt
import pandas as pd
import streamlit as st

from ui import session, urlstate, widgets
from ui.client import ApiError

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
SOURCES = ("Upload", "Sample photo", "Generated sample")
SOURCE_KEY = "predict_source"

st.title("Predict")
st.caption(
    "Upload an image or pick a sample. The API classifies it; the other pages look inside: "
    "the architecture, the depthwise and pointwise maps of every separable convolution, and attributions."
)

choose, result = st.columns([5, 6], gap="large")


def _upload_picker() -> None:
    uploaded = st.file_uploader("Image file (PNG, JPEG, WebP, BMP, GIF)", type=UPLOAD_TYPES, key="uploader")
    if uploaded is not None and st.session_state.get("_uploaded_file_id") != uploaded.file_id:
        st.session_state["_uploaded_file_id"] = uploaded.file_id
        session.set_image(session.ImageInput(uploaded.getvalue(), uploaded.name, "upload"))
        st.rerun()  # the sidebar, drawn before this page, shows the new image too


def _photo_picker(photos: list[dict]) -> None:
    st.caption("Photographs that ship with scikit-image.")
    columns = st.columns(3)
    for i, photo in enumerate(photos):
        with columns[i % 3]:
            image = session.sample_image(session.api_url(), photo)
            st.image(widgets.thumbnail(f"photo:{photo['id']}", image.data), caption=photo["title"], width="stretch")
            if st.button("Use", key=f"photo_{photo['id']}", width="stretch"):
                session.set_image(image)
                st.rerun()


def _generated_picker(generated: list[dict]) -> None:
    st.caption(
        "Generated images of the bundled model's classes: a spatial pattern drawn in a pair of colours. "
        "Telling the classes apart needs both the spatial and the cross-channel cue."
    )
    c1, c2 = st.columns([3, 1])
    position = c1.selectbox(
        "Class", range(len(generated)), format_func=lambda i: f"{generated[i]['class_index']}: {generated[i]['label']}", key="generated_class"
    )
    sample = generated[position]
    variant = c2.number_input("Variant", min_value=0, max_value=sample["variants"] - 1, value=0, step=1, key="generated_variant")
    image = session.sample_image(session.api_url(), sample, int(variant))
    st.image(image.data, width=160, caption=f"true class: {image.true_label}", output_format="PNG")
    if st.button("Use this image", key="use_generated"):
        session.set_image(image)
        st.rerun()


def _sample_picker(kind: str) -> None:
    """The samples of one kind the API offers (GET /v1/samples)."""
    with widgets.api_errors():
        offered = [s for s in session.samples(session.api_url()) if s["kind"] == kind]
        if kind == "photo":
            _photo_picker(offered)
        else:
            _generated_picker(offered)


with choose:
    source = st.radio(
        "Image source", SOURCES, horizontal=True, key=SOURCE_KEY,
        index=SOURCES.index(st.session_state.get("_predict_source", SOURCES[0])),
    )
    st.session_state["_predict_source"] = source
    if source == SOURCES[0]:
        _upload_picker()
    elif source == SOURCES[1]:
        _sample_picker("photo")
    else:
        _sample_picker("generated")


def _chart(predictions: list[dict]) -> alt.Chart:
    frame = pd.DataFrame(
        {
            "class": [f"{p['label']} · #{p['index']}" for p in predictions],
            "probability": [p["probability"] for p in predictions],
        }
    )
    bars = (
        alt.Chart(frame)
        .mark_bar(color="#4C78A8")
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, max(1e-6, float(frame["probability"].max()) * 1.15)]), axis=alt.Axis(format="%")),
            y=alt.Y("class:N", sort="-x", title=None, axis=alt.Axis(labelLimit=280, labelOverlap=False)),
            tooltip=["class", alt.Tooltip("probability:Q", format=".2%")],
        )
    )
    text = bars.mark_text(align="left", dx=3, color="#333").encode(text=alt.Text("probability:Q", format=".1%"))
    return (bars + text).properties(height=max(120, 34 * len(frame)))


def _engine_text(model_id: str) -> str:
    """How the server computes predictions (backend, precision, fallbacks), for the caption."""
    try:
        engine = session.engine(session.api_url(), model_id)
    except ApiError:
        return ""
    if not engine:
        return ""
    notes = "".join(f"  \n{note}" for note in engine.get("notes", []))
    return f" · computed by **{engine['backend']}** ({engine['precision']}){notes}"


def _csv(predictions: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rank", "index", "label", "probability"])
    for rank, p in enumerate(predictions, 1):
        writer.writerow([rank, p["index"], p["label"], f"{p['probability']:.6f}"])
    return buf.getvalue().encode()


with result:
    image = session.current_image()
    if image is None:
        st.info("Choose an image on the left.", icon=":material/image:")
        st.stop()
    preview = widgets.preview_png(image.image_id, image.data)
    pic, facts = st.columns([1, 1])
    stored = session.stored_facts(image)
    with pic:
        if preview is not None:
            st.image(preview[0], width="stretch")
        elif image.data is None:
            st.info("Opened from a link: the image is stored on the server; upload it to see it here.", icon=":material/link:")
        else:
            st.warning("This file cannot be previewed; it is sent to the API as it is.")
    with facts:
        st.markdown(f"**{image.name}**")
        described = preview[1] if preview else "unknown format"
        size = f" · {len(image.data):,} bytes" if image.data is not None else ""
        st.caption(f"{described}{size}  \nimage_id `{image.image_id[:16]}…`")
        if stored:
            until = f", kept until {stored['expires_at']} after its last use" if stored.get("expires_at") else ""
            st.caption(f"Stored on the server once ({stored.get('width')}×{stored.get('height')} {stored.get('format', '')}{until}); "
                       "every page names it by its id, and the address bar is a link to this view.")
        if image.true_label:
            st.caption(f"True class: **{image.true_label}**")

    model = session.current_model()
    limits = session.limits(session.api_url())
    num_classes = None
    try:
        cards = {m["id"]: m for m in session.models(session.api_url())["models"]}
        num_classes = cards.get(model, {}).get("num_classes")
    except ApiError:
        pass
    max_k = max(1, min(limits.max_top_k, num_classes or limits.max_top_k, 20))
    urlstate.restore("top_k", "top_k", lambda k: 1 <= k <= max_k, parse=urlstate.parse_int, what=f"a top-k in 1..{max_k}")
    widgets.forget_stale("top_k", list(range(1, max_k + 1)))
    top_k = st.slider("Top-k", 1, max_k, min(5, max_k), key="top_k")
    urlstate.publish("top_k", top_k)
    if image.source != "generated" and model and session.pattern_model(session.api_url(), model):
        widgets.pattern_model_warning(model, image)
    with widgets.api_errors():
        with st.spinner("Classifying…"):
            answer = session.predict(image, model, top_k)
        predictions = answer["predictions"]
        best = predictions[0]
        st.subheader(f"{best['label']} — {best['probability']:.1%}")
        if image.true_index is not None:
            if best["index"] == image.true_index:
                st.success(f"Top-1 matches the true class ({image.true_label}).", icon=":material/check_circle:")
            else:
                rank = next((i + 1 for i, p in enumerate(predictions) if p["index"] == image.true_index), None)
                where = f"rank {rank} of the top {top_k}" if rank else f"not in the top {top_k}"
                st.warning(f"The true class ({image.true_label}) is {where}.", icon=":material/info:")
        st.altair_chart(_chart(predictions), width="stretch")
        m1, m2, m3 = st.columns(3)
        ms = answer["timing_ms"]
        m1.metric("Latency", f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s", help="Server time for the request; cached logits make repeats fast.")
        m2.metric("Device", answer.get("device", "?"))
        m3.metric("Precision", answer.get("precision", "fp32"), help="fp32; mixed = float16 autocast (CUDA); bf16 = bfloat16 autocast")
        cached = " · logits from the server's cache (image seen before)" if answer.get("cached") else ""
        st.caption(f"Model **{answer['model']}**{cached}{_engine_text(answer['model'])}")
        d1, d2 = st.columns(2)
        with d1:
            widgets.download("Predictions (CSV)", _csv(predictions), f"predictions-{widgets.safe_name(image.name)}.csv", "text/csv", "dl_pred_csv")
        with d2:
            widgets.download(
                "Predictions (JSON)", json.dumps(answer, indent=2).encode(), f"predictions-{widgets.safe_name(image.name)}.json",
                "application/json", "dl_pred_json",
            )
