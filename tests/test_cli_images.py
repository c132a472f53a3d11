"""The command line in each image: the UI image has no PyTorch (so no ``xception_core``) and no API,
the API image no UI. Building the parser imports none of them, ``xception-demo ui`` reaches the
launcher without them, and a command whose stack is missing says so in one line."""

import json
import subprocess
import sys

import pytest

# A fresh interpreter in which the named top-level packages cannot be imported (as in an image
# without them); it runs the CLI with argv (the launcher's run_ui replaced by a recorder when
# asked) and reports what happened.
_PROBE = r"""
import importlib.abc, json, sys
blocked = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Block())
import xception_demo.cli as cli
if sys.argv[2] == "record-run-ui":
    from xception_demo import launch
    launch.run_ui = lambda **kw: print(json.dumps({"run_ui": kw})) or 0
code = cli.main(sys.argv[3:])
print(json.dumps({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules} & blocked)}))
"""


def _run(blocked: str, *argv: str, record_run_ui: bool = False) -> subprocess.CompletedProcess:
    mode = "record-run-ui" if record_run_ui else "-"
    return subprocess.run([sys.executable, "-c", _PROBE, blocked, mode, *argv], capture_output=True, text=True, timeout=120)


def test_ui_command_runs_without_torch_the_core_or_the_api():
    proc = _run("torch,torchvision,xception_core,api,fastapi", "ui", "--host", "0.0.0.0", "--port", "8501", "--api-url", "http://api-cpu:8000",
                record_run_ui=True)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0] == {"run_ui": {"api_url": "http://api-cpu:8000", "port": 8501, "host": "0.0.0.0"}}
    assert lines[1] == {"code": 0, "loaded": []}


@pytest.mark.parametrize("argv", [["--help"], ["ablate", "--help"], ["export", "onnx", "--help"], ["predict", "--help"]])
def test_help_of_every_command_needs_no_torch(argv):
    proc = _run("torch,xception_core,api,ui,streamlit,httpx", *argv)
    assert proc.returncode == 0 and "usage: xception-demo" in proc.stdout, proc.stderr


def test_a_command_without_its_stack_says_so_in_one_line():
    proc = _run("torch,xception_core", "info", "--json")
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: this command needs the Python package 'xception_core', which is not installed here"]
    assert json.loads(proc.stdout) == {"code": 1, "loaded": []}
    proc = _run("ui,streamlit,httpx", "up")
    assert proc.stderr.strip().splitlines() == ["error: this command needs the Python package 'httpx', which is not installed here"]
