#!/usr/bin/env bash
# The GPU proof of issue 9, on a GPU machine, in at most 8 minutes, without network:
#   benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]
# Prints the environment, runs the GPU-marked tests of tests/convcore and tests/nn, the worker
# self-test and the GPU benchmark table (convcore vs PyTorch+cuDNN for N <= 3, JAX for N = 4, 5);
# everything lands in OUT_DIR (gpu_check.log, environment.txt, pytest.log/.xml, selftest.json,
# table.md/.json). Needs Python 3 with numpy, scipy, cupy, torch (CUDA), jax (CUDA), pytest and
# hypothesis; not the service's packages (celery, fastapi, redis). See docs/benchmarks.md, "GPU check".
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [--device cpu] [--tiny] [--skip-pytest] ..." >&2
  exit 64
fi
out=$1; shift
mkdir -p "$out"
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# 8 minutes in all: the steps keep to their own budgets (tests 240 s, table 150 s); this is the backstop.
timeout --kill-after=10 470 "${PYTHON:-python3}" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/console.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "gpu_check: stopped at the 8-minute limit; partial results are in $out" >&2
exit "$rc"
