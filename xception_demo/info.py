"""``xception-demo info`` (architecture: parameters, MACs, per-layer table) and ``models``
(the models the service can host and their weights status)."""

from __future__ import annotations

import argparse

from .output import human, print_json


def cmd_info(args: argparse.Namespace) -> int:
    from xception_core.model import XceptionConfig
    from xception_core.profile import profile_model
    from xception_core.weights import get_card

    if args.model:
        card = get_card(args.model)
        config, size = card.config, args.input_size or card.preprocess.input_size
    else:
        config, size = XceptionConfig(), args.input_size or 299
    profile = profile_model(config, size)
    if args.json:
        print_json({"model": args.model or "paper", **profile.to_dict()})
        return 0
    print(f"Xception ({args.model or 'paper configuration'}), input {size}x{size}")
    print(f"parameters: {profile.total_params:,}   MACs: {profile.total_macs / 1e9:.3f} G")
    print(f"separable convolutions: {len(profile.separable)}")
    header = f"{'layer':34} {'flow':6} {'kind':11} {'in':>5} {'out':>5} {'size':>9} {'params':>9} {'MACs':>9}"
    print(header)
    print("-" * len(header))
    for r in profile.layers:
        size_s = f"{r.output_size[0]}x{r.output_size[1]}"
        print(
            f"{r.name:34} {r.flow:6} {r.kind:11} {r.in_channels:5d} {r.out_channels:5d} {size_s:>9} "
            f"{human(r.params):>9} {human(r.macs):>9}"
        )
    print("\nseparable layers: " + ", ".join(s.name for s in profile.separable))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from xception_core.weights import list_models

    rows = [
        {
            "id": c.id,
            "classes": c.num_classes,
            "weights": c.status,
            "source": c.source,
            "description": c.description,
            "input_size": c.preprocess.input_size,
        }
        for c in list_models()
    ]
    if args.json:
        print_json(rows)
        return 0
    print(f"{'id':28} {'classes':>7}  {'weights':9}  source")
    for r in rows:
        print(f"{r['id']:28} {r['classes']:>7}  {r['weights']:9}  {r['source']}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("info", help="architecture summary: parameters, MACs, per-layer table")
    p.add_argument("--model", help="a model id (default: the paper configuration)")
    p.add_argument("--input-size", type=int, help="input side in pixels (>= 71)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = commands.add_parser("models", help="models the service can host and their weights status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
