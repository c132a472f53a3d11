"""Start the app: ``run_ui`` (the Streamlit app alone, against an API URL) and ``run_up``
(API and app together, for a person at a browser): what ``xception-demo ui`` and
``xception-demo up`` run.

Both run the servers as child processes and stop them cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from ui import config

#: The app's entry script (``ui/app.py``).
APP_PATH = Path(config.__file__).resolve().with_name("app.py")
#: The directory holding the ``ui`` and ``api`` packages (a checkout's root).
PACKAGE_ROOT = APP_PATH.parent.parent
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 15.0
#: Streamlit refuses bigger uploads before they reach the API (whose own limit is 10 MiB by default).
MAX_UPLOAD_MB = 32


class _Stop(Exception):
    """SIGTERM received."""


def streamlit_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The app under Streamlit (the API URL travels in the environment, see _child_env)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--client.showErrorDetails", "type",
        "--theme.base", "light",
    ]


def api_command(host: str, port: int) -> list[str]:
    """The API through its own ``run`` (settings from the XCEPTION_* environment, structured logs)."""
    code = "import sys; from api.main import run; run(sys.argv[1], int(sys.argv[2]))"
    return [sys.executable, "-c", code, host, str(port)]


#: The API's settings that name a folder or file (``api.settings.Settings``' ``Path`` fields; a
#: test keeps the two equal). The children run in the package's folder, so a relative value
#: is made absolute against the folder ``xception-demo`` was started in, where its user meant it.
PATH_SETTINGS = ("XCEPTION_ATLAS_DATA", "XCEPTION_HOME", "XCEPTION_SPECTRUM_DIR")


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in PATH_SETTINGS:
        if env.get(name):
            env[name] = str(Path(env[name]).expanduser().absolute())
    paths = [str(PACKAGE_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra)
    return env


def _spawn(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    # a session of its own: a Ctrl-C in the terminal reaches this process only, which then
    # stops the children in order
    return subprocess.Popen(list(command), env=env, cwd=str(PACKAGE_ROOT), start_new_session=True)


def _stop(process: subprocess.Popen | None, timeout: float = STOP_TIMEOUT_S) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
        except ProcessLookupError:
            pass
    return process.returncode


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _url(host: str, port: int) -> str:
    """The URL to open for a server bound to ``host`` (a wildcard address means this machine)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Stop()


class _Signals:
    """Inside: SIGTERM raises _Stop and SIGINT KeyboardInterrupt -- even where the parent made this
    process ignore SIGINT (a background job of a script); the previous handlers come back after."""

    def __enter__(self) -> _Signals:
        self.previous = {}
        if _main_thread():
            self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def run_ui(api_url: str, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Serve the Streamlit app on ``host:port`` against the API at ``api_url``; returns the exit status."""
    if not _port_free(host, port):
        print(f"error: port {port} on {host} is in use; choose another with --port", file=sys.stderr)
        return 1
    process = _spawn(streamlit_command(port, host), _child_env(**{config.API_URL_ENV: api_url}))
    print(f"Xception Explorer UI: {_url(host, port)} (API {api_url}); Ctrl-C stops it", flush=True)
    with _Signals():
        try:
            return process.wait()
        except (KeyboardInterrupt, _Stop):
            _stop(process)
            return 0


def _wait_ready(api_url: str, api: subprocess.Popen, timeout: float) -> str | None:
    """None once /readyz answers 200; else why not (the API exited, cannot load its model, timed out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            return f"the API exited with status {api.returncode} (see its log above)"
        try:
            response = httpx.get(f"{api_url}/readyz", timeout=5)
            if response.status_code == 200:
                return None
            detail = response.json().get("detail", "") if response.headers.get("content-type", "").endswith("json") else ""
            if "could not be loaded" in detail:
                return detail
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    return f"the API was not ready after {timeout:.0f} s"


def _wait_http(url: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False


def run_up(host: str = "127.0.0.1", api_port: int = 8000, ui_port: int = 8501, *, ready_timeout: float = READY_TIMEOUT_S) -> int:
    """Start the API and the UI, wait until the API's default model is loaded, print the URL to
    open, and run until Ctrl-C / SIGTERM (or until either server exits); stops both."""
    for name, port in (("API", api_port), ("UI", ui_port)):
        if not _port_free(host, port):
            print(f"error: port {port} on {host} (for the {name}) is in use; choose another", file=sys.stderr)
            return 1
    api_url = _url(host, api_port)
    api = ui = None
    with _Signals():
        try:
            print(f"starting the API on {api_url} ...", flush=True)
            api = _spawn(api_command(host, api_port), _child_env())
            ui_env = {config.API_URL_ENV: api_url}
            if os.environ.get("XCEPTION_API_KEY") and not os.environ.get(config.API_KEY_ENV):
                ui_env[config.API_KEY_ENV] = os.environ["XCEPTION_API_KEY"]  # the API wants a key: the UI sends it
            ui = _spawn(streamlit_command(ui_port, host), _child_env(**ui_env))
            problem = _wait_ready(api_url, api, ready_timeout)
            if problem is not None:
                print(f"error: {problem}", file=sys.stderr)
                return 1
            if not _wait_http(f"{_url(host, ui_port)}/_stcore/health", ui, 120):
                print(f"error: the UI did not start (status {ui.poll()})", file=sys.stderr)
                return 1
            print(f"\nXception Explorer is ready: open {_url(host, ui_port)}  (API {api_url}; Ctrl-C stops both)\n", flush=True)
            while True:
                for name, process in (("API", api), ("UI", ui)):
                    if process.poll() is not None:
                        print(f"error: the {name} exited with status {process.returncode}", file=sys.stderr)
                        return process.returncode or 1
                time.sleep(0.5)
        except (KeyboardInterrupt, _Stop):
            print("stopping ...", flush=True)
            return 0
        finally:
            _stop(ui)
            _stop(api)
