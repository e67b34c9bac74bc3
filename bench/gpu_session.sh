#!/usr/bin/env bash
# Every GPU check in one call of a lent machine (bench/GPU.md), so that its start is paid once:
#   1. the performance tables and the per-call host time, with nothing else on the GPU;
#   2. then, side by side (they compile kernels on the CPU for most of their time, and none of
#      them times anything): gpu_check's correctness checks, compute-sanitizer memcheck and
#      racecheck, and the GPU test files (pytest-xdist).
# Each step has its own time limit and the steps run whatever the previous one gave. Logs go
# to $OUT (or ./gpu-logs). Usage, from the repository root:
#   bash bench/gpu_session.sh [PERF_SECONDS [CHECK_SECONDS]]
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
PERF=${1:-230}
CHECKS=${2:-250}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem \
    --format=csv; } 2>&1 | tee "$OUT/card.txt"

stamp "performance"
timeout "$PERF" python3 bench/gpu_check.py --only performance --budget $((PERF - 40)) \
    > "$OUT/perf.txt" 2>&1
echo "rc $?" >> "$OUT/perf.txt"
timeout 60 python3 bench/gpu_check.py --only per-call >> "$OUT/perf.txt" 2>&1
echo "rc $?" >> "$OUT/perf.txt"
stamp "performance done"

stamp "checks side by side"
timeout "$CHECKS" python3 bench/gpu_check.py --only correctness > "$OUT/correct.txt" 2>&1 &
p1=$!
timeout "$CHECKS" python3 bench/gpu_sanitize.py --timeout $(( (CHECKS - 20) / 2 )) \
    > "$OUT/sanitize.txt" 2>&1 &
p2=$!
timeout "$CHECKS" python3 -m pytest tests/gpu -q -p no:cacheprovider -n 6 \
    > "$OUT/pytest.txt" 2>&1 &
p3=$!
wait $p1; echo "rc $?" >> "$OUT/correct.txt"
wait $p2; echo "rc $?" >> "$OUT/sanitize.txt"
wait $p3; echo "rc $?" >> "$OUT/pytest.txt"
stamp "done"
for f in perf correct sanitize pytest; do
    echo "=== $f"; tail -n 25 "$OUT/$f.txt"
done
