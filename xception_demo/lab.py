"""``xception-demo synthetic`` (the generated dataset), ``train`` (an Xception on it; the bundled
model by default), ``ablate`` (the paper's ablations with identical budgets) and ``spectrum``
(points of the paper's spectrum, regular convolution to depthwise separable, trained alike)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _widths(n: int):
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated integers, got {text!r}") from None
        if len(values) != n or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated positive integers, got {text!r}")
        return values

    return parse


def _train_config(args: argparse.Namespace):
    from xception_core.train import TrainConfig

    fields = {
        "stem_channels": args.stem,
        "entry_channels": args.entry,
        "middle_repeats": args.middle_repeats,
        "exit_channels": args.exit,
        "intermediate_activation": args.activation,
        "residual": not args.no_residual,
        "segments": getattr(args, "segments", None),
        "order": getattr(args, "order", None),
        "input_size": args.input_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "data_seed": args.data_seed,
        "val_seed": args.val_seed,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "threads": args.threads,
    }
    return TrainConfig(**{k: v for k, v in fields.items() if v is not None})


def _parse_segments(text: str) -> list[int | str]:
    from xception_core.spectrum import parse_segments  # the core loads when a command runs, not with the parser

    return parse_segments(text)


def _segments(text: str) -> int | str:
    try:
        values = _parse_segments(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one value, an integer or C; got {text!r}")
    return values[0]


def _list(parse):
    def parse_list(text: str) -> list:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse_list


def _add_training_options(p: argparse.ArgumentParser, point: bool = True) -> None:
    """The architecture and budget options ``train``, ``ablate`` and ``spectrum`` share;
    ``point``: also ``--segments K`` / ``--order`` (``spectrum`` takes lists of them instead)."""
    g = p.add_argument_group("architecture and budget (defaults: the bundled model's)")
    g.add_argument("--stem", type=_widths(2), help="stem widths, e.g. 12,24")
    g.add_argument("--entry", type=_widths(3), help="entry block widths, e.g. 32,64,128")
    g.add_argument("--middle-repeats", type=int)
    g.add_argument("--exit", type=_widths(3), help="exit widths, e.g. 160,192,256")
    g.add_argument("--activation", choices=("none", "relu", "elu"), help="between depthwise and pointwise")
    g.add_argument("--no-residual", action="store_true")
    if point:
        g.add_argument("--segments", type=_segments, help="segments k of each 3x3 convolution: 1, an integer, or C (default)")
        g.add_argument("--order", choices=("depthwise-first", "pointwise-first"), help="which part runs first (default depthwise-first)")
    g.add_argument("--input-size", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--train-size", type=int)
    g.add_argument("--val-size", type=int)
    g.add_argument("--data-seed", type=int)
    g.add_argument("--val-seed", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--eval-every", type=int, help="steps between validations (0: each epoch)")
    g.add_argument("--threads", type=int)


def cmd_synthetic(args: argparse.Namespace) -> int:
    from xception_core import synthetic

    out = synthetic.write_folder(args.out, args.n, args.seed, args.size)
    print(f"wrote {args.n} images of {synthetic.NUM_CLASSES} classes ({args.size} px, seed {args.seed}) to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from xception_core.train import save, train

    result = train(_train_config(args), progress=not args.quiet)
    card = save(result, args.out, args.name)
    print(
        f"validation top-1 {result.val_top1:.2%} after {result.seconds / 60:.1f} min; "
        f"wrote {card.weights_path} (sha256 {card.sha256[:12]}...) and its card"
    )
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from xception_core.train import ablate

    csv_path = ablate(_train_config(args), args.out, variants=args.variants, progress=not args.quiet)
    summary = json.loads((Path(args.out) / "ablation.json").read_text())["variants"]
    for name, s in summary.items():
        print(f"{name:20} val top-1 {s['val_top1']:.2%}  ({s['seconds']:.0f} s)")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.png')}")
    return 0


def _orders(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"seeds are comma-separated integers; got {text!r}") from None


def cmd_spectrum(args: argparse.Namespace) -> int:
    from xception_core.spectrum import SpectrumRequest, run_spectrum, spectrum_points

    base = _train_config(args)
    points = spectrum_points(args.spectrum_segments, args.orders, args.seeds or [base.seed])
    request = SpectrumRequest(
        base=base, out_dir=Path(args.out), points=tuple(points), save=args.save, name_prefix=args.name_prefix,
        timing_batch=args.timing_batch, timing_rounds=args.timing_rounds,
    )
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    csv_path = run_spectrum(request, progress=not args.quiet, log=log)
    rows = json.loads((Path(args.out) / "spectrum.json").read_text())["points"]
    for r in rows:
        print(
            f"{r['label']:48} seed {r['seed']}  params {r['params']:>10,}  MACs {r['macs'] / 1e6:8.1f} M  "
            f"val top-1 {r['val_top1']:.2%}  train {r['train_seconds']:.0f} s ({r['train_step_ms']:.1f} ms/image a step)  "
            f"infer {r['infer_ms']:.2f} ms/image"
        )
    print(f"wrote {csv_path}, {csv_path.with_suffix('.json')} and {csv_path.with_suffix('.png')}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("synthetic", help="write generated pattern x colour images, one folder per class")
    p.add_argument("--out", required=True, help="output folder (class sub-folders + masks.npz)")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.set_defaults(func=cmd_synthetic)

    p = commands.add_parser("train", help="train an Xception on generated data (the bundled model by default)")
    p.add_argument("--out", required=True, help="output folder for <name>.safetensors and <name>.json")
    p.add_argument("--name", default="xception-mini-synthetic", help="model id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_training_options(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("ablate", help="the paper's ablations with identical budgets: CSV + plot")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--variants", nargs="+", metavar="VARIANT",
        help="which variants to train (default: all of the paper's; an unknown name is refused with the list)",
    )
    p.add_argument("--quiet", action="store_true")
    _add_training_options(p)
    p.set_defaults(func=cmd_ablate)

    p = commands.add_parser(
        "spectrum", help="train points of the paper's spectrum (regular conv ... depthwise separable) alike: CSV + plot"
    )
    p.add_argument("--out", required=True, help="output folder; points already trained there are kept (resume)")
    p.add_argument(
        "--segments", dest="spectrum_segments", type=_list(_parse_segments), default=[1, 2, 4, 8, "C"],
        help="segments k of each 3x3 convolution, comma-separated: 1 (regular), integers, C (one per channel); "
        "default 1,2,4,8,C",
    )
    p.add_argument(
        "--orders", type=_orders, default=["depthwise-first", "pointwise-first"],
        help="which part runs first, comma-separated (default both; k = 1 has none)",
    )
    p.add_argument("--seeds", type=_list(_seeds), help="training seeds, comma-separated (default: --seed)")
    p.add_argument("--save", action="store_true", help="also register each point in the model home as <prefix>-<point>")
    p.add_argument("--name-prefix", default="spectrum", help="model id prefix for --save (default spectrum)")
    p.add_argument("--timing-batch", type=int, default=16, help="images per timed forward pass")
    p.add_argument("--timing-rounds", type=int, default=7, help="interleaved timing rounds per point")
    p.add_argument("--quiet", action="store_true")
    _add_training_options(p, point=False)
    p.set_defaults(func=cmd_spectrum)
