"""Sub-commands beyond the core ones: generated data, training, ablations, services."""

from __future__ import annotations

import argparse
import json
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


# ----------------------------------------------------------------------------- synthetic


def cmd_synthetic(args: argparse.Namespace) -> int:
    from xception_core import synthetic

    out = synthetic.write_folder(args.out, args.n, args.seed, args.size)
    print(f"wrote {args.n} images of {synthetic.NUM_CLASSES} classes ({args.size} px, seed {args.seed}) to {out}")
    return 0


def add_synthetic(sub) -> None:
    p = sub.add_parser("synthetic", help="write generated pattern x colour images, one folder per class")
    p.add_argument("--out", required=True, help="output folder (class sub-folders + masks.npz)")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.set_defaults(func=cmd_synthetic)


# ----------------------------------------------------------------------------- train / ablate


def _train_config(args: argparse.Namespace, **overrides):
    from xception_core.train import TrainConfig

    fields = {
        "stem_channels": args.stem,
        "entry_channels": args.entry,
        "middle_repeats": args.middle_repeats,
        "exit_channels": args.exit,
        "intermediate_activation": args.activation,
        "residual": not args.no_residual,
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
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.update(overrides)
    return TrainConfig(**fields)


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("architecture and budget (defaults: the bundled model's)")
    g.add_argument("--stem", type=_widths(2), help="stem widths, e.g. 12,24")
    g.add_argument("--entry", type=_widths(3), help="entry block widths, e.g. 32,64,128")
    g.add_argument("--middle-repeats", type=int)
    g.add_argument("--exit", type=_widths(3), help="exit widths, e.g. 160,192,256")
    g.add_argument("--activation", choices=("none", "relu", "elu"), help="between depthwise and pointwise")
    g.add_argument("--no-residual", action="store_true")
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


def cmd_train(args: argparse.Namespace) -> int:
    from xception_core.train import save, train

    config = _train_config(args)
    result = train(config, progress=not args.quiet)
    card = save(result, args.out, args.name)
    print(
        f"validation top-1 {result.val_top1:.2%} after {result.seconds / 60:.1f} min; "
        f"wrote {card.weights_path} (sha256 {card.sha256[:12]}...) and its card"
    )
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train an Xception on generated data (the bundled model by default)")
    p.add_argument("--out", required=True, help="output folder for <name>.safetensors and <name>.json")
    p.add_argument("--name", default="xception-mini-synthetic", help="model id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_training_options(p)
    p.set_defaults(func=cmd_train)


def cmd_ablate(args: argparse.Namespace) -> int:
    from xception_core.train import ablate

    config = _train_config(args)
    csv_path = ablate(config, args.out, variants=args.variants, progress=not args.quiet)
    summary = json.loads((Path(args.out) / "ablation.json").read_text())["variants"]
    for name, s in summary.items():
        print(f"{name:20} val top-1 {s['val_top1']:.2%}  ({s['seconds']:.0f} s)")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.png')}")
    return 0


def add_ablate(sub) -> None:
    from xception_core.train import ABLATION_VARIANTS

    p = sub.add_parser("ablate", help="the paper's ablations with identical budgets: CSV + plot")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--variants", nargs="+", choices=list(ABLATION_VARIANTS), help="default: all")
    p.add_argument("--quiet", action="store_true")
    _add_training_options(p)
    p.set_defaults(func=cmd_ablate)


# ----------------------------------------------------------------------------- services


def cmd_serve(args: argparse.Namespace) -> int:
    from api.main import run

    run(host=args.host, port=args.port)
    return 0


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="the REST API (settings: XCEPTION_* environment variables)")
    p.add_argument("--host", help="default: XCEPTION_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default: XCEPTION_PORT or 8000")
    p.set_defaults(func=cmd_serve)


def cmd_ui(args: argparse.Namespace) -> int:
    from ui.launch import run_ui

    return run_ui(api_url=args.api_url, port=args.port, host=args.host)


def add_ui(sub) -> None:
    p = sub.add_parser("ui", help="the Streamlit app (talks to the API over HTTP)")
    p.add_argument("--api-url", default="http://127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_ui)


def cmd_up(args: argparse.Namespace) -> int:
    from ui.launch import run_up

    return run_up(host=args.host, api_port=args.api_port, ui_port=args.ui_port)


def add_up(sub) -> None:
    for name, help_text in (
        ("up", "API and UI together, for a person at a browser"),
        ("demo", "the demo: API and UI on the bundled offline model (what `make demo` runs)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--api-port", type=int, default=8000)
        p.add_argument("--ui-port", type=int, default=8501)
        p.set_defaults(func=cmd_up)


# ----------------------------------------------------------------------------- export


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from xception_core.export import ExportError, export_onnx

    from .cli import CommandError

    if args.opset < 13:
        raise CommandError("--opset must be at least 13")
    try:
        result = export_onnx(args.model, args.out, opset=args.opset, check=not args.no_check, atol=args.atol)
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    s = result.input_size
    print(
        f"wrote {result.path}: model {result.model_id}, input [batch, 3, {s}, {s}] "
        f"-> logits [batch, {result.num_classes}], opset {result.opset}"
    )
    if result.max_abs_diff is None:
        print("not checked (--no-check)")
    else:
        batches = " and ".join(str(n) for n in result.checked_batches)
        print(f"onnxruntime matches PyTorch on batches of {batches}: max |logit difference| {result.max_abs_diff:.2g}")
    print(f"feed it preprocessed {s}x{s} RGB images (the preprocessing and class names are in the file's metadata)")
    return 0


def add_export(sub) -> None:
    from xception_core.export import DEFAULT_ATOL, DEFAULT_OPSET

    formats = sub.add_parser("export", help="export a model for other runtimes (ONNX)").add_subparsers(
        dest="export_format", required=True, metavar="FORMAT"
    )
    p = formats.add_parser(
        "onnx",
        help="ONNX graph of the classifier, dynamic batch dimension, checked against PyTorch with onnxruntime",
    )
    p.add_argument("--model", help="model id (default: the default model)")
    p.add_argument("--out", required=True, help="output file, e.g. xception.onnx")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="largest logit difference accepted by the check")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_onnx)


REGISTER = [add_synthetic, add_train, add_ablate, add_serve, add_ui, add_up, add_export]
__all__ = ["REGISTER"]
