"""Throughput of the synthetic dataset generator on ONE core.

    python benchmarks/bench_synthetic.py [--n 400] [--sizes 64 96 128 224] [--repeats 3]

Prints img/s for ``make_sample`` (the per-index path a torch ``DataLoader``
worker takes) and for ``SyntheticDataset.__getitem__`` (plus the conversion to
a normalised tensor) at each size, both by wall clock and per CPU-second of
this process (the rate of one dedicated core, robust to a shared machine).  BLAS / OpenMP / torch are pinned to one
thread before numpy and torch are imported, so the figure is per core: with
``k`` DataLoader workers expect about ``k`` times as much.  The best of
``--repeats`` runs is reported (the machine may be shared).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from xception_core import synthetic as S  # noqa: E402


def _best_rates(fn, n: int, repeats: int) -> tuple[float, float]:
    """(img/s by wall clock, img/s per CPU-second of this process), best of ``repeats``."""
    best_wall = best_cpu = float("inf")
    for r in range(repeats):
        start = r * n  # fresh indices each repeat
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(start, start + n):
            fn(i)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return n / best_wall, n / best_cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400, help="images per timed run")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 224])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs visible, 1 thread used")
    print(f"{S.NUM_CLASSES} classes; best of {args.repeats} runs of {args.n} images\n")
    header = (f"{'size':>5} | {'make_sample img/s':>17} | {'per CPU-s':>9} | {'ms CPU/img':>10} | "
              f"{'Dataset[i] img/s':>16} | {'per CPU-s':>9}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        S.make_sample(0, args.seed, size)  # warm the per-size caches
        wall, cpu = _best_rates(lambda i: S.make_sample(i, args.seed, size), args.n, args.repeats)
        ds = S.SyntheticDataset(args.n * args.repeats, args.seed, size)
        ds_wall, ds_cpu = _best_rates(lambda i: ds[i], args.n, args.repeats)
        print(f"{size:>5} | {wall:>17.0f} | {cpu:>9.0f} | {1e3 / cpu:>10.2f} | {ds_wall:>16.0f} | {ds_cpu:>9.0f}")
    print("\nimg/s: wall clock (lower when the machine is shared); per CPU-s: images per second of\n"
          "CPU time of this single-threaded process, i.e. the rate of one dedicated core.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
