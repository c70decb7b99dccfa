#!/usr/bin/env bash
# Refresh requirements.lock: every package scripts/setup.sh installs (fedloop's runtime dependencies, its test,
# lint and type-check tools and the Ray extra the tests use), pinned for Python 3.11 on Linux, resolved from
# pyproject.toml by uv (installed here when missing). PyTorch itself is pinned by scripts/setup.sh (its CPU build
# comes from its own index) and left out; its dependencies are resolved from that CPU build and pinned here.
#
#   bash scripts/lock.sh              # refresh to the newest versions pyproject.toml allows
#   bash scripts/lock.sh --upgrade-package grpcio   # move one package, keep the rest
#
# Then run the tests (bash scripts/setup.sh && python -m pytest) and commit requirements.lock: an upgrade is a
# deliberate commit. scripts/test-latest.sh tries the newest versions without touching the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -m uv --version >/dev/null 2>&1 || "$PY" -m pip install --quiet --disable-pip-version-check uv
# PyTorch's dependencies are resolved from its CPU build, from where setup.sh takes it: TORCH_INDEX_URL, else the
# find-links of this machine's pip configuration, else PyTorch's CPU index (best version across indexes, so the
# other packages still come from PyPI).
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  where=(--index "$TORCH_INDEX_URL" --index-strategy unsafe-best-match)
else
  where=()
  for l in $("$PY" -m pip config list 2>/dev/null | sed -nE "s/^[^=]*find-links='(.*)'$/\1/p" | sort -u) \
           ${PIP_FIND_LINKS:-}; do
    where+=(--find-links "$l")
  done
  [[ ${#where[@]} -gt 0 ]] || where=(--index https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
# With no argument, every pin moves (--upgrade); give uv's own options (e.g. --upgrade-package NAME) to move fewer.
# The current pins seed the output, which uv keeps unless told to move them.
cp requirements.lock requirements.lock.tmp
"$PY" -m uv pip compile pyproject.toml --extra test --extra ray --python-version 3.11 --python-platform linux \
  --no-emit-package torch --no-header --annotation-style line "${where[@]}" "${@:---upgrade}" \
  -o requirements.lock.tmp --quiet
{
  echo "# The packages scripts/setup.sh installs, pinned for Python 3.11 on Linux (PyTorch 2.13.0 itself: setup.sh)."
  echo "# Generated from pyproject.toml by scripts/lock.sh (uv pip compile); do not edit by hand."
  cat requirements.lock.tmp
} > requirements.lock
rm requirements.lock.tmp
echo "requirements.lock: $(grep -c '==' requirements.lock) pinned packages"
