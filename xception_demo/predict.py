"""``xception-demo predict`` (classify image files) and ``eval`` (top-1 / top-5 on a class folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import CommandError
from .output import print_json


def _load(model_id: str | None):
    """The model (on the GPU when there is one) and its card; default: the service's default model."""
    import torch

    from xception_core.weights import default_model_id, load_model

    return load_model(model_id or default_model_id(), device="cuda" if torch.cuda.is_available() else "cpu")


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
        try:
            tensors.append(preprocess_bytes(Path(name).read_bytes(), card.preprocess))
        except ValueError as exc:
            raise CommandError(f"{name}: {exc}") from None
    logits = predict_logits(model, torch.stack(tensors))
    results = [
        {"file": name, "predictions": [p.to_dict() for p in preds]}
        for name, preds in zip(args.images, top_k(logits, args.top_k, card.class_names))
    ]
    if args.json:
        print_json(results)
        return 0
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
        print_json({"model": card.id, **result.to_dict()})
    else:
        print(f"model {card.id} on {args.data}: {result.n} images, top-1 {result.top1:.2%}, top-5 {result.top5:.2%}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("predict", help="classify image files")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("eval", help="top-1 / top-5 on a folder with one sub-folder per class")
    p.add_argument("--model")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
