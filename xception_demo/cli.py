"""``xception-demo``: architecture, models, weights, prediction, evaluation, and the services.

Errors are one line on stderr and a non-zero exit status (1 for a failure,
2 for a usage error), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PROG = "xception-demo"


class CommandError(Exception):
    """A failure to report as one line on stderr."""


def _run(command) -> str:
    """How this program words a command of a weights error's remedy (``xception_core.weights.Command``)."""
    return f"run: {command.line(PROG)}"


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


# ----------------------------------------------------------------------------- info / models


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
        _print_json({"model": args.model or "paper", **profile.to_dict()})
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
            f"{_human(r.params):>9} {_human(r.macs):>9}"
        )
    print("\nseparable layers: " + ", ".join(s.name for s in profile.separable))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from xception_core.weights import list_models

    cards = list_models()
    rows = [
        {
            "id": c.id,
            "classes": c.num_classes,
            "weights": c.status,
            "source": c.source,
            "description": c.description,
            "input_size": c.preprocess.input_size,
        }
        for c in cards
    ]
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'id':28} {'classes':>7}  {'weights':9}  source")
    for r in rows:
        print(f"{r['id']:28} {r['classes']:>7}  {r['weights']:9}  {r['source']}")
    return 0


# ----------------------------------------------------------------------------- weights


def cmd_weights_download(args: argparse.Namespace) -> int:
    from xception_core.weights import download_weights

    card = download_weights(args.id, url=args.url, progress=not args.quiet, file=args.file, force=args.force)
    print(f"stored {card.id} in {card.weights_path} (sha256 {card.sha256[:12]}...)")
    return 0


def cmd_weights_import(args: argparse.Namespace) -> int:
    from xception_core.weights import import_weights

    card = import_weights(args.path, args.name, format=args.format, labels=args.labels, overwrite=args.overwrite)
    print(f"imported {args.path} as {card.id} ({card.num_classes} classes) into {card.weights_path}")
    return 0


# ----------------------------------------------------------------------------- predict / eval


def _load(model_id: str | None):
    from xception_core.weights import default_model_id, load_model

    model_id = model_id or default_model_id()
    model, card = load_model(model_id, device=_device())
    return model, card


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from xception_core.inference import predict_logits, top_k
    from xception_core.transform import preprocess_bytes

    if args.top_k < 1:
        raise CommandError("--top-k must be at least 1")
    missing = [name for name in args.images if not Path(name).is_file()]
    if missing:
        raise CommandError(f"{missing[0]}: no such file")
    model, card = _load(args.model)
    tensors = []
    for name in args.images:
        path = Path(name)
        try:
            tensors.append(preprocess_bytes(path.read_bytes(), card.preprocess))
        except ValueError as exc:
            raise CommandError(f"{name}: {exc}") from None
    logits = predict_logits(model, torch.stack(tensors))
    results = [
        {"file": name, "predictions": [p.to_dict() for p in preds]}
        for name, preds in zip(args.images, top_k(logits, args.top_k, card.class_names))
    ]
    if args.json:
        _print_json(results)
    else:
        print(f"model: {card.id}")
        for r in results:
            print(r["file"])
            for p in r["predictions"]:
                print(f"  {p['probability']:7.2%}  {p['index']:4d}  {p['label']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from xception_core.inference import evaluate_folder

    model, card = _load(args.model)
    try:
        result = evaluate_folder(model, card.preprocess, args.data, batch_size=args.batch_size, progress=not args.json)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        _print_json({"model": card.id, **result.to_dict()})
    else:
        print(f"model {card.id} on {args.data}: {result.n} images, top-1 {result.top1:.2%}, top-5 {result.top5:.2%}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="architecture summary: parameters, MACs, per-layer table")
    p.add_argument("--model", help="a model id (default: the paper configuration)")
    p.add_argument("--input-size", type=int, help="input side in pixels (>= 71)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="models the service can host and their weights status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    weights = sub.add_parser("weights", help="download or import weights").add_subparsers(
        dest="weights_command", required=True, metavar="ACTION"
    )
    p = weights.add_parser("download", help="download pretrained weights into the cache")
    p.add_argument("id", nargs="?", default="xception-imagenet")
    p.add_argument("--url", help="download from this mirror instead")
    p.add_argument("--file", help="verify and convert this local copy of the file instead of downloading")
    p.add_argument("--force", action="store_true", help="download again even if the weights are cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_weights_download)
    p = weights.add_parser("import", help="convert a local checkpoint into the cache")
    p.add_argument("path")
    p.add_argument("--name", required=True, help="model id to register")
    p.add_argument("--format", choices=("auto", "timm", "ours"), default="auto")
    p.add_argument("--labels", help="class names file, one per line")
    p.add_argument("--overwrite", action="store_true", help="replace an imported model of the same name")
    p.set_defaults(func=cmd_weights_import)

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="top-1 / top-5 on a folder with one sub-folder per class")
    p.add_argument("--model")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


# Commands whose code lives elsewhere register themselves here (serve, ui, up, synthetic, train...).
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _register_extras() -> None:
    from . import commands

    EXTRA_COMMANDS[:] = commands.REGISTER


def main(argv: Sequence[str] | None = None) -> int:
    _register_extras()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the CLI's promise: one line, no traceback
        from xception_core.weights import WeightsError

        if isinstance(exc, WeightsError):
            print(f"error: {exc.explain(_run)}", file=sys.stderr)
            return 1
        if isinstance(exc, (ValueError, KeyError, FileNotFoundError, OSError)):
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"error: {message}", file=sys.stderr)
            return 1
        raise
