#!/usr/bin/env bash
# Set up fedloop on a fresh machine (Python 3.11+): the CPU build of PyTorch first, so that no multi-GB CUDA build
# is pulled in, then fedloop itself (editable) with its test tools, every package at the version requirements.lock
# pins (scripts/lock.sh refreshes it), so a machine set up today and one set up next month run the same code.
#
# Where PyTorch comes from, in this order:
#   1. TORCH_INDEX_URL, when set (e.g. a mirror of https://download.pytorch.org/whl/cpu);
#   2. this machine's own pip sources, when its pip config or PIP_* variables name any (find-links, index-url,
#      extra-index-url): an administrator who set them decides, as for every other package;
#   3. otherwise PyTorch's CPU-only wheel index, https://download.pytorch.org/whl/cpu. (PyPI's torch for Linux is
#      the CUDA build: a machine that reaches only PyPI must set TORCH_INDEX_URL or accept that download.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
pip_() { "$PY" -m pip --disable-pip-version-check "$@"; }
torch_() {
  pip_ install --quiet "torch==2.13.0" "$@" || {
    echo "error: could not install PyTorch 2.13.0 ${*:+($*)}; set TORCH_INDEX_URL to an index that has its CPU build" \
         "(https://download.pytorch.org/whl/cpu or a mirror of it) and run this script again" >&2
    exit 1
  }
}

"$PY" - <<'EOF'
import os
import sys

if sys.version_info < (3, 11):
    sys.exit(f"fedloop needs Python 3.11 or newer; {sys.executable} is {sys.version.split()[0]}")
in_venv = sys.prefix != sys.base_prefix or "CONDA_PREFIX" in os.environ
if not in_venv and "CI" not in os.environ:
    print(f"note: not in a virtual environment: fedloop, PyTorch and their dependencies go into {sys.prefix}.\n"
          "      To keep them apart: python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh",
          file=sys.stderr)
EOF

if "$PY" -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  echo "PyTorch 2.13.0 is installed"
elif [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  echo "PyTorch 2.13.0 from TORCH_INDEX_URL=$TORCH_INDEX_URL"
  torch_ --index-url "$TORCH_INDEX_URL"
elif pip_ config list 2>/dev/null | grep -qE '(find-links|index-url)=' \
     || env | grep -qE '^PIP_(FIND_LINKS|INDEX_URL|EXTRA_INDEX_URL)='; then
  echo "PyTorch 2.13.0 from this machine's pip sources (pip config list)"
  torch_
else
  echo "PyTorch 2.13.0 (CPU build) from https://download.pytorch.org/whl/cpu"
  torch_ --index-url https://download.pytorch.org/whl/cpu
fi
if [[ "${1:-}" == --latest ]]; then  # scripts/test-latest.sh: the newest versions pyproject.toml allows
  pip_ install --quiet --upgrade -e ".[test]"
else
  pip_ install --quiet -c requirements.lock -e ".[test]"
fi
