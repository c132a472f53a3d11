"""``xception-demo serve`` (the REST API), ``ui`` (the Streamlit app) and ``up`` / ``demo`` (both,
for a person at a browser)."""

from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    from api.main import run  # not at the top: the UI image has no API

    run(host=args.host, port=args.port)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from .launch import run_ui  # not at the top: the API image has no UI

    return run_ui(api_url=args.api_url, port=args.port, host=args.host)


def cmd_up(args: argparse.Namespace) -> int:
    from .launch import run_up

    return run_up(host=args.host, api_port=args.api_port, ui_port=args.ui_port)


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="the REST API (settings: XCEPTION_* environment variables)")
    p.add_argument("--host", help="default: XCEPTION_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default: XCEPTION_PORT or 8000")
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("ui", help="the Streamlit app (talks to the API over HTTP)")
    p.add_argument("--api-url", default="http://127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_ui)

    for name, help_text in (
        ("up", "API and UI together, for a person at a browser"),
        ("demo", "the demo: API and UI on the bundled offline model (what `make demo` runs)"),
    ):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--api-port", type=int, default=8000)
        p.add_argument("--ui-port", type=int, default=8501)
        p.set_defaults(func=cmd_up)
