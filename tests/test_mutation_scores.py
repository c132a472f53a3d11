"""``.mutation/scores.json`` keeps every module's figures when modules run at the same time.

Two ``tools/mutation.py`` processes (``tools/mutation.py convert`` and ``tools/mutation.py limits``
side by side) each write their module's summary into the one file: each write must merge into
what the file holds then, not into what it held when the process started.
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_mutation_table import ROOT, _mutation_tool


def _summary(module: str, wall_s: int = 10, cpu_s: int = 9) -> dict:
    return {"module": module, "file": f"{module}.py", "functions": ["*"], "wall_s": wall_s, "cpu_s": cpu_s,
            "total": 2, "killed": 1, "score": 0.5, "survived": 1, "timeout": 0, "suspicious": 0,
            "no tests": 0, "segfault": 0, "not checked": 0, "survivors": [f"{module}.x_f__mutmut_1"]}


def test_a_module_finished_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch):
    """The other process writes its module while this one is still mutating: both are in the file."""
    tool = _mutation_tool()
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"old": _summary("old")}))
    mine = tool.Module("mine", "mine.py", ("*",), ("tests/x.py",))
    monkeypatch.setattr(tool, "WORK", tmp_path)
    monkeypatch.setattr(tool, "load_table", lambda: ({}, [], [mine]))

    def run(module, *args):
        tool.record(scores, _summary("other"))  # the other process, done first
        return _summary(module.name)

    monkeypatch.setattr(tool, "run", run)
    assert tool.main(["mine"]) == 0
    written = json.loads(scores.read_text())
    assert sorted(written) == ["mine", "old", "other"]
    assert written["mine"] == _summary("mine")


def test_processes_recording_at_the_same_time_lose_nothing(tmp_path):
    """Four processes, 25 modules each, written as fast as they can: all 100 entries are there."""
    scores = tmp_path / "scores.json"
    writer = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('mutation_tool', {str(ROOT / 'tools' / 'mutation.py')!r})\n"
        "tool = importlib.util.module_from_spec(spec); sys.modules[spec.name] = tool; spec.loader.exec_module(tool)\n"
        "from pathlib import Path\n"
        "for i in range(25):\n"
        "    tool.record(Path(sys.argv[1]), {'module': f'{sys.argv[2]}-{i}', 'wall_s': 1, 'cpu_s': 1})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(scores), f"p{p}"]) for p in range(4)]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    written = json.loads(scores.read_text())
    assert sorted(written) == sorted(f"p{p}-{i}" for p in range(4) for i in range(25))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_retest_keeps_the_whole_run_time_and_adds_its_own(tmp_path):
    """``--survivors``: wall and CPU time stay the first run's; the retests' wall time adds up apart."""
    tool = _mutation_tool()
    scores = tmp_path / "scores.json"
    tool.record(scores, _summary("m", wall_s=500, cpu_s=480))
    first = tool.record(scores, _summary("m", wall_s=30, cpu_s=28), retest=True)
    second = tool.record(scores, _summary("m", wall_s=20, cpu_s=19), retest=True)
    assert (first["wall_s"], first["cpu_s"], first["retest_wall_s"]) == (500, 480, 30)
    assert (second["wall_s"], second["cpu_s"], second["retest_wall_s"]) == (500, 480, 50)
    assert json.loads(scores.read_text())["m"] == second


def test_a_second_run_of_the_same_module_stops_at_once(tmp_path, monkeypatch):
    """It would remake ``.mutation/<module>/`` under the first run; another module runs freely."""
    import fcntl

    import pytest

    tool = _mutation_tool()
    monkeypatch.setattr(tool, "WORK", tmp_path)
    ran = []
    monkeypatch.setattr(tool, "_run", lambda module, *args: ran.append(module.name) or {"module": module.name})
    mine, other = (tool.Module(n, f"{n}.py", ("*",), ("tests/x.py",)) for n in ("mine", "other"))
    with open(tmp_path / "mine.lock", "a") as held:  # the first run, in another process
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit, match="another run of mine is in progress"):
            tool.run(mine, {}, [], 1)
        assert tool.run(other, {}, [], 1) == {"module": "other"}
    assert ran == ["other"]
    assert tool.run(mine, {}, [], 1) == {"module": "mine"} and ran == ["other", "mine"]
