"""Layer explorer: the depthwise (spatial) and pointwise (cross-channel) maps of a separable
layer side by side, and how one pointwise channel is built from depthwise channels. Layers
elsewhere on the paper's spectrum show their own parts (grouped, pointwise first, a regular
convolution) in forward order; their decomposition is explained away, not drawn."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from ui import session, urlstate, widgets
from ui.client import ApiError

SORTS = {"mean": "mean activation", "max": "max activation", "attribution": "attribution (gradient × activation)"}
NORMALIZATIONS = {"channel": "per channel", "layer": "per layer"}
TILE_PX = 80
PREDICTED = -1  # target option: the predicted class

ATLAS_PAGE = "views/atlas.py"
LINKS_PER_ROW = 8


def atlas_links(layer: str, part: str, channels: list[int]) -> None:
    """One link per tile above: that channel in the Channel atlas (one click)."""
    st.caption("Open a channel in the **Channel atlas**:")
    for start in range(0, len(channels), LINKS_PER_ROW):
        for column, c in zip(st.columns(LINKS_PER_ROW), channels[start : start + LINKS_PER_ROW]):
            column.page_link(ATLAS_PAGE, label=f"#{c}", query_params={"layer": layer, "part": part, "channel": str(c)})


def _parse_target(raw: str) -> int:
    return PREDICTED if raw == "predicted" else urlstate.parse_int(raw)


st.title("Layer explorer")
st.caption(
    "Each separable convolution is a 3×3 **depthwise** convolution — one spatial filter per channel — followed by a "
    "1×1 **pointwise** convolution that mixes channels. Left: the spatial maps; right: the cross-channel maps."
)

table = widgets.model_table()
image = widgets.require_image()
model = session.current_model()
url = session.api_url()
limits = session.limits(url)
groups = widgets.separable_by_flow(table)

# ---------------------------------------------------------------- choices
flow_of = {r["name"]: flow for flow, rows in groups.items() for r in rows}
linked = urlstate.restore("layer", "_lx_linked_layer", flow_of, what="a separable layer of this model")
if linked is not None:
    st.session_state["lx_flow"] = flow_of[linked]
    st.session_state[f"lx_layer_{flow_of[linked]}"] = linked
pick_flow, pick_layer = st.columns([3, 4])
widgets.forget_stale("lx_flow", list(groups))
flow = pick_flow.radio("Flow", list(groups), format_func=lambda f: widgets.FLOW_TITLES.get(f, f), horizontal=True, key="lx_flow")
by_name = {r["name"]: r for r in groups[flow]}
widgets.forget_stale(f"lx_layer_{flow}", list(by_name))
layer = pick_layer.selectbox("Separable layer", list(by_name), format_func=lambda n: widgets.layer_label(by_name[n]), key=f"lx_layer_{flow}")
row = by_name[layer]
layer_parts = list(row.get("parts", ["depthwise", "pointwise"]))
decomposable = row.get("decomposable", True)
if not decomposable:
    st.info(
        f"This model sits elsewhere on the paper's spectrum: {layer} is **{row.get('spectrum_point', ' → '.join(layer_parts))}**. "
        f"Its parts, in forward order: {' → '.join(layer_parts)}.",
        icon=":material/info:",
    )

try:
    colormap_names = session.colormaps(url)
except ApiError:
    colormap_names = ["viridis"]
urlstate.restore("top", "lx_top", lambda n: 1 <= n <= limits.max_channels, parse=urlstate.parse_int,
                 what=f"a channel count in 1..{limits.max_channels}")
urlstate.restore("sort", "lx_sort", SORTS, what=f"a sort order ({', '.join(SORTS)})")
urlstate.restore("normalize", "lx_norm", NORMALIZATIONS, what=f"a normalisation ({', '.join(NORMALIZATIONS)})")
urlstate.restore("colormap", "lx_cmap", colormap_names, what="a colour map of this API")
o1, o2, o3, o4, o5 = st.columns([3, 3, 2, 2, 3])
top = o1.slider("Channels per part", 1, limits.max_channels, min(16, limits.max_channels), key="lx_top")
sort = o2.selectbox("Sort by", list(SORTS), format_func=SORTS.get, key="lx_sort")
normalize = o3.radio("Normalisation", list(NORMALIZATIONS), format_func=NORMALIZATIONS.get, key="lx_norm")
colormap = o4.selectbox("Colormap", colormap_names, key="lx_cmap")
target = None
if sort == "attribution":
    try:
        class_names = session.classes(url, model)
    except ApiError as error:
        widgets.show_error(error)
        class_names = []
    prediction = session.prediction_or_none(image, model)
    predicted = f"predicted ({prediction['predictions'][0]['label']})" if prediction else "predicted class"
    widgets.forget_stale("lx_target", [PREDICTED, *range(len(class_names))])
    urlstate.restore("target", "lx_target", [PREDICTED, *range(len(class_names))], parse=_parse_target,
                     what=f"a class of this model (0..{len(class_names) - 1}, or predicted)")
    choice = o5.selectbox(
        "Target class", [PREDICTED, *range(len(class_names))],
        format_func=lambda i: predicted if i == PREDICTED else f"{i}: {class_names[i]}", key="lx_target",
    )
    target = None if choice == PREDICTED else int(choice)
else:
    o5.caption("Sort by attribution to choose a target class.")
urlstate.publish_all({"layer": layer, "top": top, "sort": sort, "normalize": normalize, "colormap": colormap,
                      "target": None if sort != "attribution" else ("predicted" if target is None else target)})

# ---------------------------------------------------------------- maps side by side
common = {"layer": layer, "normalize": normalize, "colormap": colormap, "tile_px": TILE_PX}
shown: dict[str, list[int]] = {}
columns = st.columns(2, gap="large")
if len(layer_parts) == 1:
    columns[1].caption("A regular convolution has one part: nothing separates the spatial and the cross-channel mapping.")
for part, column in zip(layer_parts, columns):
    title, meaning = widgets.PART_TITLES.get(part, (part, ""))
    channel_count = widgets.part_channels(table, layer, part)
    with column:
        st.subheader(title, help=meaning)
        with widgets.api_errors():
            with st.spinner(f"Computing {part} maps…"):
                maps = session.activations(image, model, part=part, top=min(top, channel_count), sort=sort, target=target, **common)
            shown[part] = [c["index"] for c in maps["channels"]]
            c, h, w = maps["shape"]
            lo, hi = maps["value_range"]
            order = {"mean": "mean", "max": "max", "attribution": "attribution score"}[sort]
            st.caption(
                f"{len(maps['channels'])} of {c} channels ({h}×{w}), strongest {order} first · "
                f"layer values {lo:.3g} … {hi:.3g} · {'one scale for all maps' if normalize == 'layer' else 'each map on its own scale'}"
            )
            widgets.tile_grid(
                [widgets.b64(ch["png"]) for ch in maps["channels"]],
                [f"#{ch['index']} · {ch['score'] if ch['score'] is not None else ch['mean']:.3g}" for ch in maps["channels"]],
                TILE_PX,
            )
            atlas_links(layer, part, shown[part])
            with st.expander("Channel statistics"):
                stats = pd.DataFrame([{k: v for k, v in ch.items() if k != "png"} for ch in maps["channels"]])
                st.dataframe(stats, hide_index=True, width="stretch")
            file_base = f"{widgets.safe_name(layer)}-{part}-{image.image_id[:8]}"
            request = dict(part=part, top=min(top, channel_count), sort=sort, target=target, **common)
            d1, d2 = st.columns(2)
            with d1:
                widgets.download(
                    "Montage (PNG)", lambda r=request: session.activations(image, model, format="png", **r),
                    f"{file_base}.png", "image/png", f"dl_{part}_png",
                )
            with d2:
                widgets.download(
                    "Maps (npy)", lambda r=request: session.activations(image, model, format="npy", **r),
                    f"{file_base}.npy", "application/x-npy", f"dl_{part}_npy",
                )

# ---------------------------------------------------------------- decomposition
st.divider()
st.subheader("How a pointwise channel is built from depthwise channels")
if not decomposable:
    st.info(
        "Only a depthwise separable layer (depthwise 3×3, then pointwise 1×1) decomposes exactly into one "
        f"term per depthwise channel. {layer} is {row.get('spectrum_point', 'another point of the spectrum')}: "
        "with the 1×1 first, each output mixes the layer's input before the 3×3; a grouped 3×3 mixes the channels "
        "of its segment itself; a regular convolution has no 1×1 part. Open a separable model to see it.",
        icon=":material/info:",
    )
    st.stop()
st.caption(
    "Without an activation between them (the paper's configuration), pointwise channel j is the weighted sum "
    "Σᵢ W[j, i] · depthwiseᵢ of the depthwise maps, W being the 1×1 kernel. Below: the strongest terms, the rest, "
    "their sum and the network's own pointwise output."
)
pointwise_channels = list(range(row["out_channels"]))
first = shown.get("pointwise", [0])[0] if shown.get("pointwise") else 0
max_terms = min(limits.max_decomposition_top, row["in_channels"])
urlstate.restore("channel", f"lx_channel_{layer}", pointwise_channels, parse=urlstate.parse_int,
                 what=f"a pointwise channel of {layer} (0..{row['out_channels'] - 1})")
urlstate.restore("terms", "lx_terms", lambda n: 1 <= n <= max_terms, parse=urlstate.parse_int, what=f"a count in 1..{max_terms}")
q1, q2 = st.columns([2, 3])
channel = q1.selectbox(
    "Pointwise channel", pointwise_channels, index=first, key=f"lx_channel_{layer}",
    help="Defaults to the first pointwise channel shown above.",
)
widgets.forget_stale("lx_terms", list(range(1, max_terms + 1)))
terms = q2.slider("Contributions shown", 1, max_terms, min(8, row["in_channels"]), key="lx_terms")
urlstate.publish_all({"channel": int(channel), "terms": terms})

with widgets.api_errors():
    with st.spinner("Decomposing…"):
        parts = session.decomposition(image, model, layer=layer, channel=int(channel), top=terms, colormap="RdBu_r", tile_px=2 * TILE_PX)
    contributions = parts["contributions"]
    summary = st.columns(4)
    for column, key, title in (
        (summary[0], "pointwise", "pointwise output (network)"),
        (summary[1], "total", f"sum of all {row['in_channels']} terms"),
        (summary[2], "rest", f"rest ({row['in_channels'] - len(contributions)} weaker terms)"),
    ):
        with column:
            st.image(widgets.b64(parts[key]["png"]), width=2 * TILE_PX, output_format="PNG")
            st.caption(f"{title}  \n{parts[key]['min']:.3g} … {parts[key]['max']:.3g}")
    summary[3].metric("max |sum − pointwise|", f"{parts['max_abs_error']:.2e}", help="The decomposition is exact up to float rounding.")

    st.markdown("**Strongest terms: depthwise map (spatial) × 1×1 weight = contribution**")
    depthwise = session.activations(
        image, model, part="depthwise", channels=[c["channel"] for c in contributions], normalize="channel", colormap=colormap, layer=layer, tile_px=TILE_PX
    )
    depthwise_png = {c["index"]: c["png"] for c in depthwise["channels"]}
    per_row = 8
    for start in range(0, len(contributions), per_row):
        columns = st.columns(per_row)
        for column, term in zip(columns, contributions[start : start + per_row]):
            with column:
                st.image(widgets.kernel_png(term["kernel"]), width=TILE_PX // 2, caption="3×3 kernel", output_format="PNG")
                st.image(widgets.b64(depthwise_png[term["channel"]]), width=TILE_PX, caption=f"dw #{term['channel']}", output_format="PNG")
                st.caption(f"× {term['weight']:+.3f}")
                st.image(widgets.b64(term["png"]), width=TILE_PX, caption=f"energy {term['energy']:.3g}", output_format="PNG")
    st.caption(
        "Each term: the channel's 3×3 depthwise kernel (red positive, blue negative, on its own symmetric scale), "
        "the spatial map it produced, the 1×1 weight, and the weighted contribution."
    )

    weights = pd.DataFrame({"depthwise channel": range(len(parts["weights"])), "weight": parts["weights"]})
    strong = {c["channel"] for c in contributions}
    weights["term"] = ["shown above" if i in strong else "rest" for i in weights["depthwise channel"]]
    chart = (
        alt.Chart(weights)
        .mark_bar()
        .encode(
            x=alt.X("depthwise channel:O", axis=alt.Axis(labelOverlap=True, labelAngle=0)),
            y=alt.Y("weight:Q", title=f"W[{channel}, i]"),
            color=alt.Color("term:N", scale=alt.Scale(domain=["shown above", "rest"], range=["#d62728", "#9ecae1"]), legend=alt.Legend(orient="top")),
            tooltip=["depthwise channel", alt.Tooltip("weight:Q", format=".4f"), "term"],
        )
        .properties(height=200, title=f"1×1 weights of pointwise channel {channel} over the {len(weights)} depthwise channels")
    )
    st.altair_chart(chart, width="stretch")
    request = {"layer": layer, "channel": int(channel), "top": terms, "colormap": "RdBu_r", "tile_px": 2 * TILE_PX}
    base = f"{widgets.safe_name(layer)}-pointwise{channel}-{image.image_id[:8]}"
    d1, d2, _ = st.columns([1, 1, 2])
    with d1:
        widgets.download(
            "Decomposition (PNG)", lambda: session.decomposition(image, model, format="png", **request), f"{base}-decomposition.png", "image/png", "dl_dec_png"
        )
    with d2:
        widgets.download(
            "Decomposition (npz)", lambda: session.decomposition(image, model, format="npz", **request), f"{base}-decomposition.npz",
            "application/octet-stream", "dl_dec_npz",
        )
