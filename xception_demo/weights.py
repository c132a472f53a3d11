"""``xception-demo weights download`` and ``weights import``: pretrained or local weights into the cache."""

from __future__ import annotations

import argparse


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


def register(commands: argparse._SubParsersAction) -> None:
    actions = commands.add_parser("weights", help="download or import weights").add_subparsers(
        dest="weights_command", required=True, metavar="ACTION"
    )
    p = actions.add_parser("download", help="download pretrained weights into the cache")
    p.add_argument("id", nargs="?", default="xception-imagenet")
    p.add_argument("--url", help="download from this mirror instead")
    p.add_argument("--file", help="verify and convert this local copy of the file instead of downloading")
    p.add_argument("--force", action="store_true", help="download again even if the weights are cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_weights_download)

    p = actions.add_parser("import", help="convert a local checkpoint into the cache")
    p.add_argument("path")
    p.add_argument("--name", required=True, help="model id to register")
    p.add_argument("--format", choices=("auto", "timm", "ours"), default="auto")
    p.add_argument("--labels", help="class names file, one per line")
    p.add_argument("--overwrite", action="store_true", help="replace an imported model of the same name")
    p.set_defaults(func=cmd_weights_import)
