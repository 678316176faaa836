#!/usr/bin/env bash
# The whole GPU check in one command, for a GPU machine whose python3 has torch, transformers and triton
# (nothing is installed). From the repository root, writing the outputs to $OUT (default gpu-out/):
#   bash bench/gpu_session.sh        (about 6-8 minutes on one H200)
# To check the script itself on a CPU:  OUT=/tmp/out PYTHON=.venv/bin/python bash bench/gpu_session.sh --tiny
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src:bench
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if [ "${1:-}" = "--tiny" ]; then
  "$PY" bench/gpu.py --tiny --device cpu 2>&1 | tee "$OUT/gpu-tiny.txt"
  exit
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  git rev-parse --short HEAD 2>/dev/null || true; } 2>&1 | tee "$OUT/machine.txt"
timeout 330 "$PY" bench/gpu.py 2>&1 | tee "$OUT/gpu-1.3b.txt"
timeout 150 "$PY" bench/gpu.py --shape 6.7b --no-full 2>&1 | tee "$OUT/gpu-6.7b.txt"
