#!/usr/bin/env bash
# Stage the GPU benchmark for the device machine (run here, by hand, from the checkout the device call sends):
# downloads the pinned wheels (pip), fetches the real models, packs everything into .gpukit/p1, p2, ...
# and writes .gpukit/RUN.md with the exact device calls. Options: see python3 benchmarks/gpu/stage.py --help.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exec python3 benchmarks/gpu/stage.py "$@"
