#!/usr/bin/env bash
# The GPU check of issue 19: Triton kernels vs their torch twins, the SAE step vs SAELens, patching vs TransformerLens,
# one JSON (default benchmarks/results/gpu.json), capped at 8 minutes. See benchmarks/gpu_check.py.
#   benchmarks/gpu.sh                         # on a GPU, the issue's sizes
#   TRITON_INTERPRET=1 INTERP_FORCE_TRITON=1 benchmarks/gpu.sh --tiny --out /tmp/gpu.json   # on CPU, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
