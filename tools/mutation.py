"""Mutation testing of the modules where a silent change does the most harm (``make mutation``).

The modules, the functions of each to mutate and the fast tests that exercise
them are data: ``[tool.mutation.modules.*]`` in ``pyproject.toml``, beside the
mutmut settings they share (``[tool.mutation.mutmut]``). For each module, mutmut
runs in its own folder ``.mutation/<module>/`` (git-ignored, made afresh each
run: links to the sources and tests, and a ``pyproject.toml`` whose
``[tool.mutmut]`` section is built from those tables), so every module is
measured against its own tests only, and mutmut runs for each mutant only the
tests of that list that call the mutated function.

    python tools/mutation.py                 # every module
    python tools/mutation.py convert limits  # some of them
    python tools/mutation.py --list          # the table, nothing run
    python tools/mutation.py --resume train  # finish an interrupted run of a module
    python tools/mutation.py --survivors train  # after adding tests: retest only the mutants not killed

Prints, per module, killed / total and the mutants that were not killed by
kind; writes ``.mutation/scores.json`` (merged under a lock: two processes running different
modules keep each other's figures) and, per module, ``.mutation/<module>/survivors.diff``
(the diff of every mutant that was not killed). Inspect one mutant with
``cd .mutation/<module> && mutmut show NAME``. Two runs of one module at once: the second stops
at once (``.mutation/<module>.lock``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    from tomllib import loads as toml_loads
except ModuleNotFoundError:  # Python 3.10: mutmut brings the toml package there
    from toml import loads as toml_loads

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), grouped for the report.
STATUS = {
    1: "killed", 3: "killed",
    0: "survived",
    5: "no tests", 33: "no tests",
    34: "skipped",
    36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
    37: "type check",
    -11: "segfault", -9: "segfault",
    2: "interrupted",
    None: "not checked",
}
REPORTED = ("survived", "timeout", "suspicious", "no tests", "segfault", "not checked")


@dataclass(frozen=True)
class Module:
    name: str
    mutate: str  # one source file, relative to the project root
    functions: tuple[str, ...]  # "*", "name" or "Class.method"
    tests: tuple[str, ...]  # pytest arguments: files, node ids, --deselect ...

    @property
    def dotted(self) -> str:
        return self.mutate.removesuffix(".py").replace("/", ".").removesuffix(".__init__")

    def mutant_globs(self) -> list[str]:
        """mutmut's mutant names for the chosen functions (``pkg.mod.x_fn__mutmut_3``, ``pkg.mod.xǁClsǁm__mutmut_1``)."""
        globs = []
        for f in self.functions:
            if f == "*":
                globs.append(f"{self.dotted}.*")
            elif "." in f:
                cls, method = f.split(".", 1)
                globs.append(f"{self.dotted}.xǁ{cls}ǁ{method}__mutmut_*")
            else:
                globs.append(f"{self.dotted}.x_{f}__mutmut_*")
        return globs


def load_table(pyproject: Path = ROOT / "pyproject.toml") -> tuple[dict, list[str], list[Module]]:
    table = toml_loads(pyproject.read_text())["tool"]["mutation"]
    modules = [
        Module(name, spec["mutate"], tuple(spec.get("functions", ["*"])), tuple(spec["tests"]))
        for name, spec in table["modules"].items()
    ]
    return table["mutmut"], list(table.get("test_args", [])), modules


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # strings and lists of strings: JSON's syntax is TOML's


def prepare(module: Module, shared: dict, test_args: list[str], resume: bool = False, survivors: bool = False) -> Path:
    """A fresh ``.mutation/<module>/``: links to what mutmut copies, and the generated config.

    With ``resume``, an existing folder is kept as it is (its mutants, test map and results).
    With ``survivors``, it is kept too, but mutmut's copy of the tests is replaced by the
    current tests (mutmut copies them once, and then finds the new ones' callers itself).
    """
    work = WORK / module.name
    if (resume or survivors) and (work / "mutants" / (module.mutate + ".meta")).exists():
        if survivors:
            shutil.rmtree(work / "mutants" / "tests")
            shutil.copytree(ROOT / "tests", work / "mutants" / "tests",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for top in {*shared["source_paths"], *shared.get("also_copy", []), "tests"}:
        (work / top).symlink_to(ROOT / top, target_is_directory=(ROOT / top).is_dir())
    settings = {
        **shared,
        "only_mutate": [module.mutate],
        "pytest_add_cli_args_test_selection": [*test_args, *module.tests],
    }
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in settings.items())
    (work / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text() + f"\n# generated by tools/mutation.py for {module.name}\n[tool.mutmut]\n{config}\n"
    )
    return work


def results(module: Module, work: Path) -> dict[str, int | None]:
    """Exit code per mutant of the chosen functions (None: not run)."""
    import fnmatch

    meta = json.loads((work / "mutants" / (module.mutate + ".meta")).read_text())
    globs = module.mutant_globs()
    return {k: v for k, v in meta["exit_code_by_key"].items() if any(fnmatch.fnmatch(k, g) for g in globs)}


def score(codes: dict[str, int | None]) -> dict:
    counts = Counter(STATUS.get(code, "suspicious") for code in codes.values())
    total = len(codes)
    return {
        "total": total,
        "killed": counts["killed"],
        "score": round(counts["killed"] / total, 4) if total else None,
        **{kind: counts[kind] for kind in REPORTED},
        "survivors": sorted(k for k, v in codes.items() if STATUS.get(v, "suspicious") != "killed"),
    }


def write_diffs(work: Path, names: list[str], statuses: dict[str, int | None]) -> Path:
    """``survivors.diff``: mutmut's diff of each mutant that was not killed."""
    out = work / "survivors.diff"
    with out.open("w") as f:
        for name in names:
            shown = subprocess.run(
                [sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True
            )
            f.write(f"### {name}: {STATUS.get(statuses[name], 'suspicious')}\n{shown.stdout}{shown.stderr}\n")
    return out


@contextmanager
def only_run(module: Module) -> Iterator[None]:
    """Hold ``.mutation/<module>.lock`` for a run: a second run of the same module at the same time
    would remake the folder the first one is using; it stops at once with a message instead."""
    work = WORK
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{module.name}.lock"
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another run of {module.name} is in progress (it holds {path}); wait for it to end") from None
        yield


def run(module: Module, shared: dict, test_args: list[str], workers: int, resume: bool = False,
        survivors: bool = False) -> dict:
    with only_run(module):
        return _run(module, shared, test_args, workers, resume, survivors)


def _run(module: Module, shared: dict, test_args: list[str], workers: int, resume: bool,
         survivors: bool) -> dict:
    work = prepare(module, shared, test_args, resume, survivors)
    names = module.mutant_globs()
    if (resume or survivors) and (work / "mutants" / (module.mutate + ".meta")).exists():
        # mutmut reruns every mutant it is named: name only those without a result yet
        # (resume), or those not killed (survivors)
        keep = (lambda v: v is None) if resume else (lambda v: STATUS.get(v, "suspicious") != "killed")
        names = [k for k, v in results(module, work).items() if keep(v)]
    env = dict(os.environ)
    # One process per mutant at a time, one thread each: the machine is shared.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    start_wall, start_cpu = time.monotonic(), _children_cpu()
    log = work / "mutmut.log"
    with log.open("a" if resume or survivors else "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(workers), *names],
            cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
        ) if names else subprocess.CompletedProcess([], 0)
    wall, cpu = time.monotonic() - start_wall, _children_cpu() - start_cpu
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-25:]
        raise SystemExit(f"mutmut failed for {module.name} (exit {proc.returncode}); end of {log}:\n" + "\n".join(tail))
    codes = results(module, work)
    summary = {"module": module.name, "file": module.mutate, "functions": list(module.functions),
               "wall_s": round(wall), "cpu_s": round(cpu), **score(codes)}
    write_diffs(work, summary["survivors"], codes)
    return summary


def record(path: Path, s: dict, retest: bool = False) -> dict:
    """Merge one module's summary ``s`` into ``path`` (``scores.json``); returns it as recorded.

    The file is read, merged and replaced under an exclusive lock, at the time of writing: runs
    of other modules at the same time (other processes) keep their entries. A ``retest``
    (``--survivors``) keeps the time of the whole run recorded before, the retests' time apart.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        scores = json.loads(path.read_text()) if path.exists() else {}
        before = scores.get(s["module"])
        if retest and before:
            s = {**s, "retest_wall_s": s["wall_s"] + before.get("retest_wall_s", 0),
                 "wall_s": before["wall_s"], "cpu_s": before["cpu_s"]}
        scores[s["module"]] = s
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(scores, indent=2) + "\n")
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    return s


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def line(s: dict) -> str:
    rest = ", ".join(f"{s[k]} {k}" for k in REPORTED if s[k])
    pct = f"{100 * s['score']:5.1f} %" if s["score"] is not None else "  n/a  "
    return f"{s['module']:<20} {s['killed']:>4} / {s['total']:<4} killed {pct}   {rest or 'none left'}   ({s['wall_s']} s wall, {s['cpu_s']} s CPU)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module names from [tool.mutation.modules] (default: all)")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("--workers", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--resume", action="store_true", help="keep .mutation/<module>/ and test only the mutants without a result")
    parser.add_argument("--survivors", action="store_true",
                        help="keep .mutation/<module>/, take the current tests, and retest only the mutants not killed")
    args = parser.parse_args(argv)
    shared, test_args, modules = load_table()
    by_name = {m.name: m for m in modules}
    unknown = [n for n in args.modules if n not in by_name]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; modules are {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.modules] if args.modules else modules
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.mutate} [{', '.join(m.functions)}] <- {' '.join([*test_args, *m.tests])}")
        return 0
    summaries = []
    scores_path = WORK / "scores.json"
    for m in chosen:
        print(f"mutating {m.name} ({m.mutate}: {', '.join(m.functions)}) ...", flush=True)
        s = record(scores_path, run(m, shared, test_args, args.workers, args.resume, args.survivors),
                   args.survivors)
        print("  " + line(s), flush=True)
        summaries.append(s)
    print("\nmutation score per module (killed / total; the rest by kind):")
    for s in summaries:
        print("  " + line(s))
    print(f"not killed, with diffs: {WORK}/<module>/survivors.diff; all figures: {scores_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
