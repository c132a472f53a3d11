#!/usr/bin/env bash
# One command on a CUDA machine: the test suite, then CUDA checks and figures.
#
#   benchmarks/gpu/run.sh [bench_gpu.py options, e.g. --no-compile --runs 10]
#
# Environment:
#   PYTHON        interpreter (default: .venv/bin/python if present, else python3)
#   TESTS         fast (default: pytest -m "not slow"), all, or none
#   TEST_TIMEOUT  seconds for the test run (default 1200)
#   OUT           folder for the logs and results.json (default: benchmarks/gpu/out)
#
# The test suite builds its own models on the CPU (tests inject device="cpu"); the API picks
# its device from XCEPTION_DEVICE (auto = CUDA when present), which the test fixtures clear.
# What runs on CUDA is bench_gpu.py: CUDA-vs-CPU logits, fused-vs-unfused, an API predict
# on device=cuda, then batch-1 latency, batch-256 throughput (bf16/fp16 autocast,
# channels_last, torch.compile) and Integrated Gradients (32 steps) latency; then
# bench_interactive.py with the API's model, timm and Captum all on CUDA, and
# bench_featurevis.py's bundled and paper runs on CUDA.
# Exits 2 without CUDA, 1 when a test or a correctness check fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT="${OUT:-benchmarks/gpu/out}"
mkdir -p "$OUT"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "run.sh: CUDA is not available to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')); nothing run." >&2
  command -v nvidia-smi >/dev/null && nvidia-smi -L >&2 || echo "run.sh: nvidia-smi not found" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

status=0
case "${TESTS:-fast}" in
  none) echo "== tests skipped (TESTS=none)" ;;
  all)  echo "== test suite (all)"
        timeout "${TEST_TIMEOUT:-1200}" "$PY" -m pytest -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25 || status=1 ;;
  *)    echo "== test suite (not slow)"
        timeout "${TEST_TIMEOUT:-1200}" "$PY" -m pytest -q -p no:cacheprovider -m "not slow" 2>&1 | tee "$OUT/tests.log" | tail -25 || status=1 ;;
esac

echo "== CUDA checks and figures"
"$PY" benchmarks/gpu/bench_gpu.py --json "$OUT/results.json" "$@" 2> >(tee "$OUT/bench_stderr.log" >&2) | tee "$OUT/bench.md" || status=1

echo "== interactive use through the API on CUDA (issue 12's rows; timm and Captum on CUDA too)"
"$PY" benchmarks/bench_interactive.py --device cuda --rounds 5 --auc-rounds 3 --ig-rounds 2 | tee "$OUT/interactive.md" || status=1

echo "== feature visualisation on CUDA (issue 13: <= 1 s per channel)"
"$PY" benchmarks/bench_featurevis.py --only bundled paper --device cuda --out "$OUT/featurevis.json" | tee "$OUT/featurevis.log" || status=1
exit $status
