#!/usr/bin/env bash
# The device checks of issue 25 as one script, for a machine with a CUDA GPU set up by scripts/setup.sh with a CUDA
# build of PyTorch 2.13.0 (TORCH_INDEX_URL: one of the CUDA indexes under https://download.pytorch.org/whl/):
# the gpu tests (training on CUDA against the CPU, same bits on one GPU, a client on CUDA, deterministic algorithms),
# seconds per round on the CPU and the GPU (benchmarks/device.py), then the fast suite on that machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -c 'import torch, sys; print(torch.__version__, torch.version.cuda, torch.cuda.is_available()); sys.exit(not torch.cuda.is_available())' \
  || { echo "error: PyTorch sees no CUDA device here" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
"$PY" -m pytest -q -rs -m gpu tests/test_device.py
"$PY" benchmarks/device.py --rounds "${ROUNDS:-3}"
"$PY" -m pytest -q -x -m "not slow" tests
