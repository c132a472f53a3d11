"""``xception-demo export onnx``: the classifier as an ONNX graph, checked against PyTorch."""

from __future__ import annotations

import argparse

from .errors import CommandError
from .output import print_json


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from xception_core.export import DEFAULT_ATOL, DEFAULT_OPSET, ExportError, export_onnx

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    if opset < 13:
        raise CommandError("--opset must be at least 13")
    atol = DEFAULT_ATOL if args.atol is None else args.atol
    try:
        result = export_onnx(args.model, args.out, opset=opset, check=not args.no_check, atol=atol)
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print_json(result.to_dict())
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


def register(commands: argparse._SubParsersAction) -> None:
    formats = commands.add_parser("export", help="export a model for other runtimes (ONNX)").add_subparsers(
        dest="export_format", required=True, metavar="FORMAT"
    )
    p = formats.add_parser(
        "onnx",
        help="ONNX graph of the classifier, dynamic batch dimension, checked against PyTorch with onnxruntime",
    )
    p.add_argument("--model", help="model id (default: the default model)")
    p.add_argument("--out", required=True, help="output file, e.g. xception.onnx")
    p.add_argument("--opset", type=int, help="ONNX opset, at least 13 (default: the exporter's, xception_core.export.DEFAULT_OPSET)")
    p.add_argument("--atol", type=float, help="largest logit difference the check accepts (default: xception_core.export.DEFAULT_ATOL)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export_onnx)
