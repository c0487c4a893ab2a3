#!/usr/bin/env bash
# GPU check in one command (< 8 minutes on one H100/A100): outputs vs CPU for every
# impl pair, then dmformer_s bf16 training at batch 128 per pair (img/s, MFU).
#   bash benchmarks/gpu_check.sh            # full
#   bash benchmarks/gpu_check.sh --smoke    # tiny sizes, also on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 480 python benchmarks/gpu_check.py "$@"
