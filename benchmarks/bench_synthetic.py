"""Throughput of the synthetic dataset generator on ONE core.

    python benchmarks/bench_synthetic.py [--n 400] [--sizes 64 96 128 224] [--repeats 3]

Prints img/s for ``make_sample`` (the per-index path a torch ``DataLoader``
worker takes) and for ``SyntheticDataset.__getitem__`` (plus the conversion to
a normalised tensor) at each size.  BLAS / OpenMP / torch are pinned to one
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


def _best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for r in range(repeats):
        start = r * n  # fresh indices each repeat
        t0 = time.perf_counter()
        for i in range(start, start + n):
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return n / best


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
    header = f"{'size':>5} | {'make_sample img/s':>17} | {'ms/img':>7} | {'Dataset[i] img/s':>16}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        S.make_sample(0, args.seed, size)  # warm the per-size caches
        rate = _best_rate(lambda i: S.make_sample(i, args.seed, size), args.n, args.repeats)
        ds = S.SyntheticDataset(args.n * args.repeats, args.seed, size)
        rate_ds = _best_rate(lambda i: ds[i], args.n, args.repeats)
        print(f"{size:>5} | {rate:>17.0f} | {1e3 / rate:>7.2f} | {rate_ds:>16.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
