#!/usr/bin/env bash
# Every GPU check in one call of a lent machine (bench/GPU.md), so that its start is paid once:
#   1. the performance tables and the per-call host time, with nothing else on the GPU;
#   2. optionally, the tunables against each other (gpu_sweep.py), also alone;
#   3. then, side by side (they compile kernels on the CPU for most of their time, and none of
#      them times anything): gpu_check's correctness checks, compute-sanitizer memcheck and
#      racecheck, and the GPU test files (pytest-xdist).
# Each step has its own time limit, and each runs whatever the previous one gave. Logs go to
# $OUT (or ./gpu-logs). From the repository root:
#   bash bench/gpu_session.sh
# Settings (environment): PERF seconds for step 1 (default 250; 0 skips it), PERF_ARGS more
# gpu_check.py options (e.g. "--sizes 128,4096"), SWEEP seconds for step 2 (default 0: not
# run), SWEEP_ARGS, CHECKS seconds for step 3 (default 240; 0 skips it), SANITIZE_ARGS
# (e.g. "--tool memcheck --timeout 150"; a later --timeout wins), WORKERS pytest processes
# (default 10).
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
PERF=${PERF:-250}
CHECKS=${CHECKS:-240}
SWEEP=${SWEEP:-0}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if ls .whl/*.whl >/dev/null 2>&1; then  # numpy < 2.5 for numba-cuda 0.30 (GPU.md)
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

if [ "$PERF" -gt 0 ]; then
    stamp "performance"
    # shellcheck disable=SC2086
    timeout "$PERF" python3 bench/gpu_check.py --only performance --budget $((PERF - 40)) \
        ${PERF_ARGS:-} > "$OUT/perf.txt" 2>&1
    echo "rc $?" >> "$OUT/perf.txt"
    timeout 90 python3 bench/gpu_check.py --only per-call --profile >> "$OUT/perf.txt" 2>&1
    echo "rc $?" >> "$OUT/perf.txt"
fi
if [ "$SWEEP" -gt 0 ]; then
    stamp "sweep"
    # shellcheck disable=SC2086
    timeout "$SWEEP" python3 bench/gpu_sweep.py --budget $((SWEEP - 20)) ${SWEEP_ARGS:-} \
        > "$OUT/sweep.txt" 2>&1
    echo "rc $?" >> "$OUT/sweep.txt"
fi
if [ "$CHECKS" -gt 0 ]; then
    stamp "checks side by side"
    timeout "$CHECKS" python3 bench/gpu_check.py --only correctness > "$OUT/correct.txt" 2>&1 &
    p1=$!
    # shellcheck disable=SC2086
    timeout "$CHECKS" python3 bench/gpu_sanitize.py --timeout $(( (CHECKS - 20) / 2 )) \
        --log-dir "$OUT" ${SANITIZE_ARGS:-} > "$OUT/sanitize.txt" 2>&1 &
    p2=$!
    timeout "$CHECKS" python3 -m pytest tests/gpu -v --tb=short -p no:cacheprovider \
        -n "${WORKERS:-10}" --durations 15 > "$OUT/pytest.txt" 2>&1 &
    p3=$!
    wait $p1; echo "rc $?" >> "$OUT/correct.txt"
    wait $p2; echo "rc $?" >> "$OUT/sanitize.txt"
    wait $p3; echo "rc $?" >> "$OUT/pytest.txt"
fi
stamp "done"
for f in perf sweep correct sanitize pytest; do
    [ -f "$OUT/$f.txt" ] && { echo "=== $f"; tail -n 30 "$OUT/$f.txt"; }
done
