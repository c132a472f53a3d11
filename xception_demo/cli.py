"""``xception-demo``: architecture, models, weights, prediction, evaluation, and the services.

One module per command group registers its sub-commands (``register``) and runs them
(``cmd_*``). The command line is installed in both images: the API image has no UI, the UI
image has no PyTorch. So the core (``xception_core``, PyTorch), the API and the launcher are
imported by the commands that use them, never while the parser is built.

Errors are one line on stderr and a non-zero exit status (1 for a failure,
2 for a usage error), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import PROG, atlas, errors, export, info, lab, predict, serve, weights

#: The command groups, in the order ``--help`` lists them.
GROUPS = (info, weights, predict, lab, atlas, serve, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the CLI's promise: one line, no traceback
        message = errors.describe(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
