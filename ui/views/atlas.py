"""Channel atlas: what one channel of a separable layer responds to -- its feature visualisation,
the data-set images that drive it most, its weights and its values over the data set -- with the
depthwise and the pointwise part of the same layer side by side.

The chosen layer, part and channel live in the URL's query (``?layer=&part=&channel=``), so a view
can be shared; the Layer explorer links here with them set.
"""

from __future__ import annotations

import time
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from ui import session, widgets
from ui.client import ApiError

PARTS = {"depthwise": "Depthwise 3×3 · spatial", "pointwise": "Pointwise 1×1 · cross-channel"}
OTHER = {"depthwise": "pointwise", "pointwise": "depthwise"}
STEPS = [8, 32, 64, 128, 256, 512, 1024]
THUMB_PX = 88
LINKS = 4  # click-through buttons to the other part's channels
QUERY = ("layer", "part", "channel")
KEYS = {"layer": "ca_layer", "part": "ca_part", "channel": "ca_channel"}
WRITTEN = "ca_written"  # the query this page last wrote: another one arrived by a link
POLLS = "ca_polls"  # reruns spent waiting for an atlas being built
POLL_S, MAX_POLLS = 3.0, 100


def focus(part: str, channel: int, layer: str | None = None) -> None:
    """Make (layer, part, channel) the chosen channel (a button's callback: before the widgets)."""
    st.session_state[KEYS["part"]] = part
    st.session_state[KEYS["channel"]] = int(channel)
    if layer is not None:
        st.session_state[KEYS["layer"]] = layer


def apply_query(layers: dict[str, dict[str, Any]]) -> None:
    """A query that this page did not write (a shared or explorer link) sets the widgets."""
    query = {k: st.query_params.get(k) for k in QUERY}
    if None in query.values() or query == st.session_state.get(WRITTEN):
        return
    layer, part, channel = query["layer"], query["part"], query["channel"]
    if layer in layers and part in PARTS and str(channel).isdigit():
        focus(part, int(channel), layer)
    st.session_state[WRITTEN] = query


def channel_count(row: dict[str, Any], part: str) -> int:
    return int(row["in_channels"] if part == "depthwise" else row["out_channels"])


def histogram_chart(hist: dict[str, Any]) -> alt.Chart:
    edges, counts = hist["edges"], hist["counts"]
    bars = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "images": counts})
    return (
        alt.Chart(bars)
        .mark_bar(color="#6baed6")
        .encode(
            x=alt.X("from:Q", title="objective (spatial mean)"), x2="to:Q", y=alt.Y("images:Q", title="images"), y2=alt.datum(0),
            tooltip=[alt.Tooltip("from:Q", format=".3g"), alt.Tooltip("to:Q", format=".3g"), "images:Q"],
        )
        .properties(height=160, title=f"its values over {hist['samples']} images of the data set")
    )


def show_visualisation(ref: tuple[str, str, str, int], steps: int, seed: int) -> dict[str, Any] | None:
    with widgets.api_errors():
        with st.spinner(f"Optimising an image for {ref[2]} #{ref[3]} ({steps} steps)…"):
            vis = session.visualisation(session.api_url(), ref, steps, seed)
        st.image(widgets.b64(vis["png"]), width=2 * THUMB_PX, output_format="PNG", caption="feature visualisation")
        st.caption(
            f"objective {vis['objective_start']:.3g} → **{vis['objective_final']:.3g}** · {vis['steps']} steps, "
            f"{vis['size']} px · {vis['seconds']:.2f} s ({vis['precision']}, {vis['device']})"
        )
        return vis
    return None


def show_examples(ref: tuple[str, str, str, int], vis: dict[str, Any] | None) -> None:
    try:
        entry = session.atlas(session.api_url(), ref, 9)
    except ApiError as error:
        if error.status in (503, 504) and st.session_state.get(POLLS, 0) < MAX_POLLS:
            # the first request builds the atlas (up to a minute); it goes on after a 504: ask again soon
            st.info(f"{error.detail} — this page asks again every {POLL_S:g} s.", icon=":material/hourglass_top:")
            st.session_state["ca_poll_now"] = True
        elif error.status == 409:
            st.info(error.detail, icon=":material/dataset:")
        else:
            widgets.show_error(error)
        return
    st.session_state[POLLS] = 0
    examples = [e for e in entry["examples"] if e["png"]]
    st.markdown(f"**Top {len(examples)} of {entry['images']} data-set images**, cropped to the receptive field of the maximum")
    widgets.tile_grid(
        [widgets.b64(e["png"]) for e in examples], [f"{e['objective']:.3g} · max {e['max']:.3g}" for e in examples], THUMB_PX
    )
    if entry["histogram"]:
        st.altair_chart(histogram_chart(entry["histogram"]), width="stretch", height=190)
        stats = entry["stats"]
        versus = ""
        if vis is not None and stats["max"]:
            versus = f" · the visualisation reaches **{vis['objective_final']:.3g}** ({vis['objective_final'] / stats['max']:.2g}× the best image)"
        st.caption(f"over {stats['count']} images: mean {stats['mean']:.3g}, std {stats['std']:.3g}, best {stats['max']:.3g}{versus}")


def show_weights(ref: tuple[str, str, str, int], key: str) -> None:
    model, layer, part, channel = ref
    with widgets.api_errors():
        weights = session.channel_weights(session.api_url(), ref)
        if part == "depthwise":
            k1, k2 = st.columns([1, 3])
            k1.image(widgets.kernel_png(weights["kernel"], 24), caption="3×3 kernel", output_format="PNG")
            k2.caption(f"Read most by these of the {weights['used_by_count']} pointwise channels (1×1 weight):")
            links = weights["used_by"][:LINKS]
            for column, term in zip(k2.columns(LINKS), links):
                column.button(
                    f"pw #{term['channel']}", key=f"{key}_pw{term['channel']}", help=f"weight {term['weight']:+.3f}",
                    on_click=focus, args=("pointwise", term["channel"]),
                )
            return
        values = weights["weights"]
        frame = pd.DataFrame({"depthwise channel": range(len(values)), "weight": values})
        pick = alt.selection_point(name="pick", fields=["depthwise channel"], on="click")
        chart = (
            alt.Chart(frame).mark_bar().encode(
                x=alt.X("depthwise channel:O", axis=alt.Axis(labelOverlap=True, labelAngle=0)),
                y=alt.Y("weight:Q", title=f"W[{channel}, i]"),
                color=alt.condition("datum.weight >= 0", alt.value("#d62728"), alt.value("#1f77b4")),
                tooltip=["depthwise channel", alt.Tooltip("weight:Q", format=".4f")],
            ).add_params(pick).properties(height=170, title=f"W[{channel}, i] over the {len(values)} depthwise channels")
        )
        event = st.altair_chart(chart, width="stretch", height=200, on_select="rerun", key=f"{key}_bars")
        chosen = (event or {}).get("selection", {}).get("pick") or []
        if chosen:
            st.session_state.pop(f"{key}_bars", None)
            focus("depthwise", int(chosen[0]["depthwise channel"]))
            st.rerun()
        st.caption("Its 1×1 weights over the depthwise channels it mixes: click a bar, or one of the strongest, to open that channel.")
        links = weights["top"][:LINKS]
        for column, term in zip(st.columns(LINKS), links):
            column.button(
                f"dw #{term['channel']}", key=f"{key}_dw{term['channel']}", help=f"weight {term['weight']:+.3f}",
                on_click=focus, args=("depthwise", term["channel"]),
            )


def partner(ref: tuple[str, str, str, int]) -> int | None:
    """The other part's channel most tied to the chosen one by the 1x1 weights."""
    try:
        weights = session.channel_weights(session.api_url(), ref)
    except ApiError:
        return None
    terms = weights.get("used_by") if ref[2] == "depthwise" else weights.get("top")
    return int(terms[0]["channel"]) if terms else None


st.title("Channel atlas")
st.caption(
    "What one channel responds to: an image **optimised** to excite it (Olah et al., *Feature Visualization*, 2017), "
    "the **data-set images** that excite it most, its **weights**, and its values over the data set. A depthwise channel "
    "filters one input channel spatially (a 3×3 kernel); a pointwise channel mixes all depthwise channels at each pixel "
    "(1×1 weights) — both parts of the layer are shown side by side."
)

table = widgets.model_table()
model = session.current_model()
layers = {row["name"]: row for row in table["separable_layers"]}
apply_query(layers)
limits = session.limits(session.api_url())

widgets.forget_stale(KEYS["layer"], list(layers))
c1, c2, c3, c4, c5 = st.columns([4, 3, 2, 2, 2])
layer = c1.selectbox("Separable layer", list(layers), format_func=lambda n: widgets.layer_label(layers[n]), key=KEYS["layer"])
row = layers[layer]
part = c2.radio("Part", list(PARTS), format_func=lambda p: p.capitalize(), horizontal=True, key=KEYS["part"])
count = channel_count(row, part)
if not 0 <= int(st.session_state.get(KEYS["channel"], 0)) < count:
    st.session_state[KEYS["channel"]] = 0
channel = int(c3.number_input(f"Channel (0–{count - 1})", min_value=0, max_value=count - 1, step=1, key=KEYS["channel"]))
steps_options = [s for s in STEPS if s <= limits.max_visualisation_steps] or [limits.max_visualisation_steps]
if st.session_state.get("ca_steps") not in steps_options:
    st.session_state["ca_steps"] = min(256, steps_options[-1]) if 256 in steps_options else steps_options[-1]
st.session_state.setdefault("ca_seed", 0)
steps = c4.select_slider("Steps", steps_options, key="ca_steps", help="Optimisation steps of the visualisation.")
seed = int(c5.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="ca_seed"))

written = {"layer": layer, "part": part, "channel": str(channel)}
st.query_params.update(written)
st.session_state[WRITTEN] = written
st.caption(f"This view's link: `?layer={layer}&part={part}&channel={channel}` · model **{model}**")

chosen = (model, layer, part, channel)
other_channel = partner(chosen)
columns = dict(zip(PARTS, st.columns(2, gap="large")))
for shown_part, column in columns.items():
    with column:
        is_chosen = shown_part == part
        if not is_chosen and other_channel is None:
            st.subheader(PARTS[shown_part])
            continue
        shown_channel = channel if is_chosen else other_channel
        ref = (model, layer, shown_part, shown_channel)
        role = "chosen" if is_chosen else ("read most by it" if part == "depthwise" else "its strongest input")
        st.subheader(f"{PARTS[shown_part]} · #{shown_channel}", help=f"{role}: {channel_count(row, shown_part)} {shown_part} channels in this layer")
        st.caption(f"**{role}**")
        if not is_chosen:
            st.button(f"Choose {shown_part} #{shown_channel}", key=f"ca_choose_{shown_part}", on_click=focus, args=(shown_part, shown_channel))
        vis = show_visualisation(ref, steps, seed)
        show_weights(ref, f"ca_{shown_part}")
        show_examples(ref, vis)

if st.session_state.pop("ca_poll_now", False):
    st.session_state[POLLS] = st.session_state.get(POLLS, 0) + 1
    time.sleep(POLL_S)
    st.rerun()
