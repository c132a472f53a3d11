"""Attributions: why the model decided as it did -- up to four Captum methods side by side,
each overlay with its quality figures."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from ui import session, urlstate, widgets
from ui.client import ApiError

PREDICTED = -1
RESULTS_KEY = "attr_results_request"
SIGNS = {"positive": "positive evidence", "negative": "negative evidence", "absolute": "absolute value", "all": "both signs"}
COMMON_PARAMS = ("seed", "auc_steps", "infidelity", "sensitivity")
QUALITY_LEVELS = {
    "auc": "deletion & insertion AUC",
    "full": "all figures and curves",
    "none": "none (map only)",
}
#: the parameters that ask for quality figures, and the lowest quality level that computes them
QUALITY_PARAMS = {"auc_steps": "auc", "infidelity": "full", "sensitivity": "full"}
LEVEL_ORDER = ("none", "auc", "full")


def _at_level(request: dict[str, Any], level: str) -> dict[str, Any]:
    """The request without the quality parameters that ``level`` leaves out (the API refuses a
    figure asked for explicitly that the level does not compute)."""
    keep = {k: v for k, v in request["method_params"].items()
            if LEVEL_ORDER.index(QUALITY_PARAMS.get(k, "none")) <= LEVEL_ORDER.index(level)}
    return {**request, "method_params": keep}


def _level_needed(common: dict[str, Any], chosen_level: str) -> str:
    """The chosen level, raised to ``full`` when infidelity or sensitivity is ticked."""
    needs = [QUALITY_PARAMS[k] for k, v in common.items() if k in ("infidelity", "sensitivity") and v]
    return max([chosen_level, *needs], key=LEVEL_ORDER.index) if chosen_level != "none" else "none"
QUALITY = {
    "convergence_delta": ("convergence delta", "closer to 0 is better: attributions sum to f(x) − f(baseline)"),
    "deletion_auc": ("deletion AUC", "lower is better: deleting the most attributed pixels first should drop the score fast"),
    "insertion_auc": ("insertion AUC", "higher is better: inserting the most attributed pixels first should raise the score fast"),
    "infidelity": ("infidelity", "lower is better (Captum infidelity)"),
    "sensitivity_max": ("sensitivity max", "lower is better: how much the map moves under small input perturbations"),
}

st.title("Attributions")
st.caption(
    "Captum attributions of the target class's logit: which pixels (or, for layer methods, which regions of a "
    "separable layer's depthwise or pointwise maps) drove the decision. Each map comes with its quality figures."
)

table = widgets.model_table()
image = widgets.require_image()
model = session.current_model()
url = session.api_url()
try:
    catalogue = session.methods(url)
    class_names = session.classes(url, model)
    colormap_names = session.colormaps(url)
except ApiError as error:
    widgets.show_error(error)
    st.stop()
specs = {m["name"]: m for m in catalogue}
prediction = session.prediction_or_none(image, model)

# ---------------------------------------------------------------- choices
targets = [PREDICTED, *range(len(class_names))]
layer_names = [s["name"] for s in table["separable_layers"]]
linked = urlstate.restore_list("methods", "attr_methods", specs, what="an attribution method of this API", limit=4)
if linked:
    st.session_state["_attr_autorun"] = True  # a shared view shows its maps without a click
urlstate.restore("target", "attr_target", targets, parse=lambda r: PREDICTED if r == "predicted" else urlstate.parse_int(r),
                 what=f"a class of this model (0..{len(class_names) - 1}, or predicted)")
urlstate.restore("layer", "attr_layer", layer_names, what="a separable layer of this model")
urlstate.restore("part", "attr_part", ("pointwise", "depthwise", "grouped", "conv"), what="a part of a layer (pointwise, depthwise, grouped, conv)")
urlstate.restore("sign", "attr_sign", SIGNS, what=f"a sign ({', '.join(SIGNS)})")
urlstate.restore("opacity", "attr_opacity", lambda x: 0.0 <= x <= 1.0, parse=urlstate.parse_float, what="an opacity in 0..1")
urlstate.restore("colormap", "attr_cmap", ["default", *colormap_names], what="a colour map of this API")
urlstate.restore("quality", "attr_quality", QUALITY_LEVELS, what=f"a quality level ({', '.join(QUALITY_LEVELS)})")

pick, overlay = st.columns([3, 2], gap="large")
with pick:
    default_methods = [m for m in ("saliency", "layer_gradcam") if m in specs] or list(specs)[:2]
    chosen: list[str] = st.multiselect(
        "Methods (2–4 side by side)", list(specs), default=default_methods, max_selections=4, key="attr_methods",
        format_func=lambda m: f"{m} (slow)" if specs[m]["costly"] else m,
    )
    predicted = f"predicted: {prediction['predictions'][0]['label']}" if prediction else "predicted class"
    widgets.forget_stale("attr_target", targets)
    target_choice = st.selectbox(
        "Target class", targets, key="attr_target",
        format_func=lambda i: predicted if i == PREDICTED else f"{i}: {class_names[i]}",
    )
    layer_methods = [m for m in chosen if specs[m]["layer_method"]]
    layer = part = None
    if layer_methods:
        l1, l2 = st.columns([3, 2])
        widgets.forget_stale("attr_layer", layer_names)
        layer = l1.selectbox(f"Layer (for {', '.join(layer_methods)})", layer_names, index=len(layer_names) - 1, key="attr_layer")
        row = next(s for s in table["separable_layers"] if s["name"] == layer)
        parts = list(reversed(row.get("parts", ["depthwise", "pointwise"])))  # the layer's output part first
        widgets.forget_stale("attr_part", parts)
        part = l2.radio("Part", parts, horizontal=True, key="attr_part")
with overlay:
    sign = st.radio("Sign", list(SIGNS), format_func=SIGNS.get, horizontal=True, key="attr_sign")
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="attr_opacity")
    colormap = st.selectbox("Colormap", ["default", *colormap_names], key="attr_cmap",
                            help="default: jet, or RdBu_r when both signs are shown")
    quality_level = st.radio(
        "Quality figures", list(QUALITY_LEVELS), format_func=QUALITY_LEVELS.get, horizontal=True, key="attr_quality",
        help="The map is shown as soon as it arrives; the quality figures follow in a second request "
        "(the server keeps the map, so the second request does not compute it again).",
    )
urlstate.publish_all({
    "methods": chosen or None, "target": "predicted" if target_choice == PREDICTED else int(target_choice),
    "layer": layer, "part": part, "sign": sign, "opacity": float(opacity), "colormap": colormap, "quality": quality_level,
})


def _param_widget(method: str, p: dict[str, Any]) -> Any:
    key = f"attr_{method}_{p['name']}"
    label = p["name"]
    help_text = p.get("description") or None
    if p["kind"] == "bool":
        return st.checkbox(label, value=bool(p["default"]), key=key, help=help_text)
    if p["kind"] == "choice":
        choices = list(p.get("choices") or [])
        return st.selectbox(label, choices, index=choices.index(p["default"]) if p["default"] in choices else 0, key=key, help=help_text)
    if p["kind"] == "int":
        lo = int(p["minimum"]) if p.get("minimum") is not None else None
        hi = int(p["maximum"]) if p.get("maximum") is not None else None
        return int(st.number_input(label, min_value=lo, max_value=hi, value=int(p["default"]), step=1, key=key, help=help_text))
    lo = float(p["minimum"]) if p.get("minimum") is not None else None
    hi = float(p["maximum"]) if p.get("maximum") is not None else None
    return float(st.number_input(label, min_value=lo, max_value=hi, value=float(p["default"]), step=0.01, key=key, help=help_text))


method_params: dict[str, dict[str, Any]] = {}
with st.expander("Method parameters (within the API's limits)", expanded=False):
    columns = st.columns(max(1, len(chosen) + 1))
    for column, method in zip(columns, chosen):
        with column:
            st.markdown(f"**{method}**")
            own = [p for p in specs[method]["params"] if p["name"] not in COMMON_PARAMS and p["name"] != "quality"]
            if not own:
                st.caption("no parameters of its own")
            method_params[method] = {p["name"]: _param_widget(method, p) for p in own}
    with columns[-1]:
        st.markdown("**Quality figures (all methods)**")
        common_spec = {p["name"]: p for m in chosen for p in specs[m]["params"] if p["name"] in COMMON_PARAMS}
        common = {name: _param_widget("common", common_spec[name]) for name in COMMON_PARAMS if name in common_spec}

if not chosen:
    st.info("Choose one to four methods.")
    st.stop()

target = None if target_choice == PREDICTED else int(target_choice)
requests = [
    {
        "method": method,
        "target": target,
        "layer": layer if specs[method]["layer_method"] else None,
        "part": part if specs[method]["layer_method"] else None,
        "method_params": {**common, **method_params.get(method, {})},
        "sign": sign,
        "opacity": float(opacity),
        "colormap": None if colormap == "default" else colormap,
    }
    for method in chosen
]
level = _level_needed(common, quality_level)
if level != quality_level:
    st.caption(f"Quality figures: **{level}** (infidelity and sensitivity are among the full figures).")
current = {"image_id": image.image_id, "model": model, "requests": requests, "quality": level}
slow = [m for m in chosen if specs[m]["costly"]]
clicked = st.button("Compute attributions", type="primary", icon=":material/play_arrow:", key="attr_run")
if clicked or st.session_state.pop("_attr_autorun", False):
    st.session_state[RESULTS_KEY] = current
shown = st.session_state.get(RESULTS_KEY)
if shown is None or shown["image_id"] != image.image_id or shown["model"] != model:
    note = f" {', '.join(slow)} can take a while on a CPU." if slow else ""
    st.info(f"Press **Compute attributions** to run {', '.join(chosen)}.{note}", icon=":material/play_arrow:")
    st.stop()
if shown != current:
    st.caption("The settings changed since these maps were computed: press **Compute attributions** to update them.")


def _quality_figures(quality: dict[str, Any]) -> None:
    if not quality:
        st.caption("No quality figures (auc_steps = 0).")
        return
    for column, (key, value) in zip(st.columns(len(quality)), quality.items()):
        name, meaning = QUALITY.get(key, (key, ""))
        column.metric(name, "n/a" if value is None else f"{float(value):.4g}", help=meaning or None)


def _curves(curves: dict[str, list]) -> alt.Chart | None:
    if not curves or "fractions" not in curves:
        return None
    frame = pd.DataFrame(curves).melt(id_vars=["fractions"], var_name="curve", value_name="probability")
    return (
        alt.Chart(frame)
        .mark_line(point=False)
        .encode(
            x=alt.X("fractions:Q", title="fraction of pixels", axis=alt.Axis(format="%")),
            y=alt.Y("probability:Q", title="target probability", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(tickCount=3, format="%")),
            color=alt.Color("curve:N", legend=alt.Legend(orient="top", title=None)),
        )
        .properties(height=160)
    )


def _draw_map(answer: dict[str, Any], request: dict[str, Any], n: int) -> None:
    st.image(widgets.b64(answer["overlay_png"]), width="stretch", output_format="PNG")
    where = f" at {answer['layer']} ({answer['part']})" if answer.get("layer") else ""
    probability = f", p = {answer['probability']:.1%}" if answer.get("probability") is not None else ""
    st.caption(f"target **{answer['target_label']}** ({answer['target_source']}{probability}){where}")
    cache = answer.get("x_cache") or answer.get("cache") or ("hit" if answer.get("cached") else "miss")
    cached = {"hit": " · from the server's cache", "map-hit": " · map from the server's cache, figures computed now"}.get(cache, "")
    st.caption(f"map: {answer['attribution_ms']:.0f} ms · {answer['device']}{cached}")
    if answer.get("channel_ranking"):
        ranking = pd.DataFrame(answer["channel_ranking"][:16])
        st.altair_chart(
            alt.Chart(ranking).mark_bar().encode(
                x=alt.X("channel:N", sort=None), y=alt.Y("score:Q"),
                color=alt.condition("datum.score > 0", alt.value("#d62728"), alt.value("#1f77b4")),
            ).properties(height=160, title="channels by contribution"),
            width="stretch",
        )
    base = f"{request['method']}-{image.image_id[:8]}"
    d1, d2, d3 = st.columns(3)
    with d1:
        widgets.download("Overlay PNG", widgets.b64(answer["overlay_png"]), f"{base}-overlay.png", "image/png", f"dl_attr_png_{n}")
    with d2:
        widgets.download(
            "Heatmap npy", lambda r=dict(request): session.attribution(image, model, format="npy", array="heatmap", quality="none", **_at_level(r, "none")),
            f"{base}-heatmap.npy", "application/x-npy", f"dl_attr_heat_{n}",
        )
    with d3:
        widgets.download(
            "Raw npy", lambda r=dict(request): session.attribution(image, model, format="npy", array="attribution", quality="none", **_at_level(r, "none")),
            f"{base}-attribution.npy", "application/x-npy", f"dl_attr_raw_{n}",
        )


def _has_figures(answer: dict[str, Any]) -> bool:
    """Whether the map's answer carries the figures already: an API without ``quality=`` levels
    (it does not say ``quality_level``) computes them with every map."""
    return "quality_level" not in answer and (bool(answer.get("quality")) or bool(answer.get("curves")))


def _draw_quality(answer: dict[str, Any]) -> None:
    _quality_figures(answer.get("quality") or {})
    if answer.get("quality_ms") is not None:
        st.caption(f"quality figures: {answer['quality_ms']:.0f} ms")
    chart = _curves(answer.get("curves") or {})
    if chart is not None:
        st.altair_chart(chart, width="stretch", height=200)


# Maps first (quality=none): each is drawn as soon as it arrives; then the quality figures,
# asked for again with quality=auc|full -- the server has the map cached, so only the figures cost.
results = st.columns(len(shown["requests"]), gap="medium")
total = len(shown["requests"])
progress = st.progress(0.0, text="Computing attributions…")
pending: list[tuple[dict[str, Any], Any]] = []
for n, (column, request) in enumerate(zip(results, shown["requests"]), 1):
    with column:
        st.subheader(request["method"])
        with widgets.api_errors():
            progress.progress((n - 1) / (2 * total), text=f"Computing {request['method']} ({n}/{total})…")
            with st.spinner(f"Computing {request['method']}…"):
                answer = session.attribution(image, model, quality="none", **_at_level(request, "none"))
            _draw_map(answer, request, n)
            figures = st.container()
            if _has_figures(answer) or shown["quality"] == "none":  # an API that sends the figures with the map
                with figures:
                    if _has_figures(answer):
                        _draw_quality(answer)
                    else:
                        st.caption("Quality figures: none asked for.")
            else:
                with figures:
                    waiting = st.empty()
                    waiting.caption("Quality figures follow…")
                pending.append((request, (figures, waiting)))
for n, (request, (figures, waiting)) in enumerate(pending, 1):
    progress.progress(0.5 + (n - 1) / (2 * max(1, len(pending))), text=f"Quality figures of {request['method']}…")
    with figures, widgets.api_errors():
        answer = session.attribution(image, model, quality=shown["quality"], **_at_level(request, shown["quality"]))
        waiting.empty()
        _draw_quality(answer)
progress.empty()
