#!/usr/bin/env bash
# Set up fedloop on a fresh machine (Python 3.11): the CPU build of PyTorch first, so that no CUDA build is
# pulled in, then fedloop itself with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
