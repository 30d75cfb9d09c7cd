#!/usr/bin/env bash
# Device side of the GPU benchmark (one call per staged part; see .gpukit/RUN.md or the README's "GPU benchmark").
# Takes the part this call carried into /tmp/gpukit; when every part is there, puts the staged packages first on
# the path and runs benchmarks/bench_gpu.py (its own deadline, plus a hard `timeout` here) with the results in $OUT.
# Extra arguments go to bench_gpu.py. A rerun on the same warm machine resumes an interrupted run.
set -uo pipefail
cd "$(dirname "$0")/../.."
K=${GPUKIT_DIR:-/tmp/gpukit}
python3 benchmarks/gpu/payload.py recv --src .gpukit --dest "$K" || exit $?
if [ ! -f "$K/READY" ]; then nvidia-smi -L 2>/dev/null || true; exit 0; fi  # more parts to come
export PYTHONPATH="$K/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
out=${OUT:-$K/out}
mkdir -p "$out" "$K/out"
timeout -k 10 "${GPUKIT_TIMEOUT:-500}" python3 benchmarks/bench_gpu.py --models-dir "$K/cache" --out "$out" \
  --resume "$K/out/gpu.json" "$@" 2>&1 | tee "$out/bench_gpu.log"
rc=${PIPESTATUS[0]}
[ "$out" = "$K/out" ] || cp -f "$out/gpu.json" "$K/out/gpu.json" 2>/dev/null
exit "$rc"
