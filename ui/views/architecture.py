"""Architecture: entry, middle and exit flows; per layer its output size, parameters and MACs;
the paper's spectrum from regular to depthwise separable convolution for a chosen layer (counted
by the API with the core's formula), and the spectrum trained (the committed run's measured
accuracy against parameters and MACs)."""

from __future__ import annotations

from collections import OrderedDict

import altair as alt
import pandas as pd
import streamlit as st

from ui import session, urlstate, widgets

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
separable_names = {s["name"] for s in separable}


def _n_separable(layers: list[dict]) -> int:
    """Separable convolutions among a block's layer rows (whatever their parts: depthwise, grouped, conv...)."""
    return len({r["name"].rsplit(".", 1)[0] for r in layers} & separable_names)


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
            n_sep = _n_separable(blocks[0][1])
            label = f"{first} … {last}\\n{len(blocks)} × ({n_sep} sep conv)\\n{out['out_channels']} ch, {out['output_size'][0]}×{out['output_size'][1]}"
            lines.append(f'middle_all [label="{label}", fillcolor="{colours[flow]}"];')
            lines.append(f"{previous} -> middle_all;")
            previous = "middle_all"
        else:
            for block, layers in blocks:
                last = layers[-1]
                n_sep = _n_separable(layers)
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
            "parts": [" → ".join(s.get("parts", ("depthwise", "pointwise"))) for s in flow_separable],
        }
    )
    st.dataframe(
        sep_frame, hide_index=True, width="stretch",
        column_config={c: st.column_config.NumberColumn(format="localized") for c in sep_frame.columns[3:8]},
    )
    builds = sorted({s["spectrum_point"] for s in flow_separable if s.get("spectrum_point")})
    if builds and any(not s.get("decomposable", True) for s in flow_separable):
        st.caption(
            "This model sits elsewhere on the paper's spectrum: " + "; ".join(builds) + ". "
            "The depthwise columns count its 3×3 part (grouped, or a regular convolution at k = 1), the pointwise ones its 1×1 part."
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


def _bar_chart(frame: pd.DataFrame, column: str, colour: str) -> alt.Chart:
    return (
        alt.Chart(frame)
        .mark_bar(color=colour)
        .encode(
            x=alt.X("segments:N", sort=list(frame["segments"]), title=None, axis=alt.Axis(labelAngle=0, labelLimit=160)),
            y=alt.Y(f"{column}:Q", title=column),
            tooltip=["segments", "kind", alt.Tooltip(f"{column}:Q", format=",")],
        )
        .properties(height=220, title=f"{column} of {chosen_name}")
    )


def counted(points: list[dict]) -> None:
    """The chosen layer's spectrum as the API counts it (the core's formula: one definition)."""
    regular = points[0]
    frame = pd.DataFrame(
        {
            "segments": [p["label"] for p in points],
            "kind": [p["kind"] for p in points],
            "params": [p["params"] for p in points],
            "MACs": [p["macs"] for p in points],
            "vs regular": [f"{p['params'] / regular['params']:.1%}" for p in points],
        }
    )
    st.dataframe(
        frame, hide_index=True, width="stretch",
        column_config={"params": st.column_config.NumberColumn(format="localized"), "MACs": st.column_config.NumberColumn(format="localized")},
    )
    left, right = st.columns(2)
    left.altair_chart(_bar_chart(frame, "params", "#4C78A8"), width="stretch")
    right.altair_chart(_bar_chart(frame, "MACs", "#F58518"), width="stretch")
    actual = chosen["depthwise_params"] + chosen["pointwise_params"]
    parts = chosen.get("parts", ["depthwise", "pointwise"])
    where = "the right end of the spectrum" if chosen.get("decomposable", True) else chosen.get("spectrum_point", "")
    st.caption(
        f"{chosen_name}: this model's layer ({' → '.join(parts)}) has {actual:,} parameters "
        f"({chosen['depthwise_params']:,} in its 3×3 part + {chosen['pointwise_params']:,} in its 1×1 part) and "
        f"{chosen['depthwise_macs'] + chosen['pointwise_macs']:,} MACs — {where}."
    )


with widgets.api_errors():
    counted(session.spectrum(session.api_url(), model, chosen_name)["points"])

ORDER_NAMES = {None: "k = 1 (regular)", "depthwise-first": "depthwise first", "pointwise-first": "1×1 first"}
ORDER_COLOURS = ["#444444", "#4C78A8", "#F58518"]


def _measured_chart(frame: pd.DataFrame, column: str, title: str) -> alt.Chart:
    base = alt.Chart(frame).encode(
        x=alt.X(f"{column}:Q", scale=alt.Scale(type="log", zero=False), title=title),
        y=alt.Y("val top-1:Q", scale=alt.Scale(zero=False), axis=alt.Axis(format="%"), title="validation top-1"),
    )
    dots = base.mark_point(filled=True, size=70).encode(
        color=alt.Color("order:N", scale=alt.Scale(domain=list(ORDER_NAMES.values()), range=ORDER_COLOURS), legend=alt.Legend(orient="bottom")),
        shape=alt.Shape("order:N", scale=alt.Scale(domain=list(ORDER_NAMES.values()), range=["circle", "square", "triangle-up"])),
        tooltip=["point", "seed", alt.Tooltip(f"{column}:Q", format=","), alt.Tooltip("val top-1:Q", format=".1%")],
    )
    labels = base.mark_text(align="left", dx=6, dy=-6, fontSize=10).encode(text="k:N")
    return (dots + labels).properties(height=380, title=f"validation top-1 against {title}")  # legend and axes included


def measured(results: dict) -> None:
    """The committed spectrum run: accuracy against parameters and MACs, and its table."""
    pts = results["points"]
    frame = pd.DataFrame(
        {
            "point": [p["label"] for p in pts],
            "k": [str(p["segments"]) for p in pts],
            "order": [ORDER_NAMES.get(p["order"], p["order"]) for p in pts],
            "seed": [p["seed"] for p in pts],
            "params": [p["params"] for p in pts],
            "MACs": [p["macs"] for p in pts],
            "val top-1": [p["val_top1"] for p in pts],
            "infer ms/image": [p["infer_ms"] for p in pts],
            "train step ms/image": [p["train_step_ms"] for p in pts],
        }
    )
    left, right = st.columns(2)
    left.altair_chart(_measured_chart(frame, "params", "parameters"), width="stretch")
    right.altair_chart(_measured_chart(frame, "MACs", "MACs per image"), width="stretch")
    st.dataframe(
        frame, hide_index=True, width="stretch",
        column_config={
            "params": st.column_config.NumberColumn(format="localized"),
            "MACs": st.column_config.NumberColumn(format="localized"),
            "val top-1": st.column_config.NumberColumn(format="percent"),
        },
    )
    conf, machine = results["settings"], results["machine"]
    steps = max(p["steps"] for p in pts)
    st.caption(
        f"Whole networks of the bundled architecture (stem {conf.get('stem_channels')}, entry {conf.get('entry_channels')}, "
        f"{conf.get('middle_repeats')} middle blocks, exit {conf.get('exit_channels')}, {conf.get('input_size')} px), "
        f"every 3×3 convolution built as point k; {steps} training steps each on {conf.get('train_size'):,} generated images, "
        f"validated on {conf.get('val_size'):,}. Parameters and MACs come from the same formula as the table above. "
        f"Times measured on {machine.get('cpu')} ({machine.get('cores')} cores), interleaved. "
        f"Source: {results['source']}."
    )


st.subheader("The spectrum, trained")
st.caption(
    "The paper leaves the points between a regular and a depthwise separable convolution unexplored. "
    "Here each point was trained alike — same data, seeds and steps — and measured: "
    "`xception-demo spectrum` reruns it offline (README: “The paper's spectrum, trained”)."
)
with widgets.api_errors():
    measured(session.spectrum_results(session.api_url()))
