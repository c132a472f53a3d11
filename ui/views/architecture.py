"""Architecture: entry, middle and exit flows; per layer its output size, parameters and MACs;
the paper's spectrum from regular to depthwise separable convolution for a chosen layer."""

from __future__ import annotations

from collections import OrderedDict

import altair as alt
import pandas as pd
import streamlit as st

from ui import session, urlstate, widgets
from ui.client import ApiError

st.title("Architecture")
st.caption(
    "Xception stacks depthwise separable convolutions: a 3×3 depthwise convolution maps spatial "
    "correlations channel by channel, a 1×1 pointwise convolution maps cross-channel correlations."
)

table = widgets.model_table()
model = session.current_model()
rows = table["layers"]
separable = table["separable_layers"]

c1, c2, c3, c4 = st.columns(4)
c1.metric("Parameters", widgets.human(table["total_params"]))
c2.metric("MACs per image", widgets.human(table["total_macs"]))
c3.metric("Separable convolutions", len(separable))
c4.metric("Input", f"{table['input_size']}×{table['input_size']}")


def _block_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1].startswith("block") else parts[-1]


def _blocks(flow: str) -> OrderedDict[str, list[dict]]:
    out: OrderedDict[str, list[dict]] = OrderedDict()
    for r in rows:
        if r["flow"] == flow:
            out.setdefault(_block_of(r["name"]), []).append(r)
    return out


flows = [f for f in ("entry", "middle", "exit", "head") if any(r["flow"] == f for r in rows)]


def _diagram() -> str:
    """A DOT diagram: the flows as clusters, one node per block (the middle flow folded)."""
    colours = {"entry": "#dbe9f6", "middle": "#fde9d9", "exit": "#e2f0d9", "head": "#eeeeee"}
    lines = [
        "digraph xception {",
        "rankdir=LR; nodesep=0.25; ranksep=0.3; node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=10];",
        'input [label="image\\n' + f"{table['input_size']}×{table['input_size']}×3" + '", fillcolor=white];',
    ]
    previous = "input"
    for flow in flows:
        blocks = list(_blocks(flow).items())
        lines.append(f'subgraph cluster_{flow} {{ label="{widgets.FLOW_TITLES[flow]}"; fontname=Helvetica; fontsize=11; style=rounded; color="#999999";')
        if flow == "middle" and len(blocks) > 2:
            first, last = blocks[0][0], blocks[-1][0]
            out = blocks[-1][1][-1]
            n_sep = sum(1 for r in blocks[0][1] if r["kind"] == "depthwise")
            label = f"{first} … {last}\\n{len(blocks)} × ({n_sep} sep conv)\\n{out['out_channels']} ch, {out['output_size'][0]}×{out['output_size'][1]}"
            lines.append(f'middle_all [label="{label}", fillcolor="{colours[flow]}"];')
            lines.append(f"{previous} -> middle_all;")
            previous = "middle_all"
        else:
            for block, layers in blocks:
                last = layers[-1]
                n_sep = sum(1 for r in layers if r["kind"] == "depthwise")
                kinds = sorted({r["kind"] for r in layers} - {block})
                what = f"{n_sep} sep conv" if n_sep else ", ".join(kinds) or "layer"
                node = f"{flow}_{block}"
                label = f"{block}\\n{what}\\n{last['out_channels']} ch, {last['output_size'][0]}×{last['output_size'][1]}"
                lines.append(f'{node} [label="{label}", fillcolor="{colours[flow]}"];')
                lines.append(f"{previous} -> {node};")
                previous = node
        lines.append("}")
    lines.append("}")
    return "\n".join(lines)


with st.expander("Diagram of the flows", expanded=True):
    st.graphviz_chart(_diagram(), width="stretch")

st.subheader("Layers")
nav1, nav2 = st.columns([2, 5])
widgets.forget_stale("arch_flow", flows)
urlstate.restore("flow", "arch_flow", flows, what=f"a flow of this model ({', '.join(flows)})")
flow = nav1.radio("Flow", flows, format_func=lambda f: widgets.FLOW_TITLES[f], key="arch_flow")
blocks = _blocks(flow)
block = nav2.radio("Block", ["all", *blocks], horizontal=True, key=f"arch_block_{flow}")
shown = [r for b, layers in blocks.items() if block in ("all", b) for r in layers]
frame = pd.DataFrame(
    {
        "layer": [r["name"] for r in shown],
        "kind": [r["kind"] for r in shown],
        "in ch": [r["in_channels"] for r in shown],
        "out ch": [r["out_channels"] for r in shown],
        "output": [f"{r['output_size'][0]}×{r['output_size'][1]}" for r in shown],
        "params": [r["params"] for r in shown],
        "MACs": [r["macs"] for r in shown],
    }
)
st.dataframe(
    frame,
    hide_index=True,
    width="stretch",
    column_config={
        "params": st.column_config.NumberColumn(format="localized"),
        "MACs": st.column_config.NumberColumn(format="localized"),
    },
)
flow_rows = [r for r in rows if r["flow"] == flow]
st.caption(
    f"{widgets.FLOW_TITLES[flow]}: {widgets.human(sum(r['params'] for r in flow_rows))} parameters, "
    f"{widgets.human(sum(r['macs'] for r in flow_rows))} MACs "
    f"({sum(r['macs'] for r in flow_rows) / max(1, table['total_macs']):.0%} of the network)."
)

flow_separable = [s for s in separable if s["flow"] == flow and (block == "all" or _block_of(s["name"]) == block)]
if flow_separable:
    st.markdown("**Separable convolutions — depthwise and pointwise parts separately**")
    sep_frame = pd.DataFrame(
        {
            "layer": [s["name"] for s in flow_separable],
            "in→out": [f"{s['in_channels']}→{s['out_channels']}" for s in flow_separable],
            "output": [f"{s['output_size'][0]}×{s['output_size'][1]}" for s in flow_separable],
            "depthwise params": [s["depthwise_params"] for s in flow_separable],
            "pointwise params": [s["pointwise_params"] for s in flow_separable],
            "depthwise MACs": [s["depthwise_macs"] for s in flow_separable],
            "pointwise MACs": [s["pointwise_macs"] for s in flow_separable],
            "regular conv params": [s["regular_params"] for s in flow_separable],
        }
    )
    st.dataframe(
        sep_frame, hide_index=True, width="stretch",
        column_config={c: st.column_config.NumberColumn(format="localized") for c in sep_frame.columns[3:]},
    )

widgets.download("Layer table (CSV)", pd.DataFrame(rows).to_csv(index=False).encode(), f"layers-{model}.csv", "text/csv", "dl_layers")

st.subheader("The spectrum of the paper")
st.caption(
    "Between a regular convolution (k = 1 segment) and a depthwise separable one (k = one segment per channel) lie "
    "Inception-like modules: a 1×1 convolution, then a 3×3 convolution per segment of C_out / k channels. "
    "Parameters: regular C_in·C_out·9; k segments C_in·C_out + k·(C_out/k)²·9; separable C_in·9 + C_in·C_out. MACs = parameters × H × W."
)
names = [s["name"] for s in separable]
default = next((i for i, s in enumerate(separable) if s["flow"] == "middle"), 0)
widgets.forget_stale("spectrum_layer", names)
urlstate.restore("layer", "spectrum_layer", names, what="a separable layer of this model")
chosen_name = st.selectbox("Layer", names, index=default, key="spectrum_layer",
                           format_func=lambda n: widgets.layer_label(next(s for s in separable if s["name"] == n)))
chosen = next(s for s in separable if s["name"] == chosen_name)
urlstate.publish_all({"flow": flow, "layer": chosen_name})
try:
    points = session.spectrum(session.api_url(), model, chosen_name)["points"]
except ApiError as error:
    widgets.show_error(error)
    st.stop()
regular = points[0]
spec_frame = pd.DataFrame(
    {
        "segments": [p["label"] for p in points],
        "kind": [p["kind"] for p in points],
        "params": [p["params"] for p in points],
        "MACs": [p["macs"] for p in points],
        "vs regular": [f"{p['params'] / regular['params']:.1%}" for p in points],
    }
)
st.dataframe(
    spec_frame, hide_index=True, width="stretch",
    column_config={"params": st.column_config.NumberColumn(format="localized"), "MACs": st.column_config.NumberColumn(format="localized")},
)


def _spectrum_chart(column: str, colour: str) -> alt.Chart:
    return (
        alt.Chart(spec_frame)
        .mark_bar(color=colour)
        .encode(
            x=alt.X("segments:N", sort=list(spec_frame["segments"]), title=None, axis=alt.Axis(labelAngle=0, labelLimit=160)),
            y=alt.Y(f"{column}:Q", title=column),
            tooltip=["segments", "kind", alt.Tooltip(f"{column}:Q", format=",")],
        )
        .properties(height=220, title=f"{column} of {chosen_name}")
    )


left, right = st.columns(2)
left.altair_chart(_spectrum_chart("params", "#4C78A8"), width="stretch")
right.altair_chart(_spectrum_chart("MACs", "#F58518"), width="stretch")
actual = chosen["depthwise_params"] + chosen["pointwise_params"]
st.caption(
    f"{chosen_name}: the network's separable convolution has {actual:,} parameters "
    f"({chosen['depthwise_params']:,} depthwise + {chosen['pointwise_params']:,} pointwise) and "
    f"{chosen['depthwise_macs'] + chosen['pointwise_macs']:,} MACs — the right end of the spectrum."
)
