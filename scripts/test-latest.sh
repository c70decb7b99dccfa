#!/usr/bin/env bash
# Run the tests against the newest versions pyproject.toml allows, in a throw-away virtual environment, without
# touching requirements.lock: what a refresh of the lock (scripts/lock.sh) would bring. Not run by CI, so that an
# upgrade lands only as a deliberate commit of the lock. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$PY" -m venv "$venv"
# setup.sh with no lock: its PyTorch, then the newest of everything else
PYTHON="$venv/bin/python" bash scripts/setup.sh --latest
"$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^torch==' > "$(dirname "$venv")/latest.txt"
echo "versions that differ from requirements.lock:"
diff <(grep -E '^[A-Za-z0-9._-]+==' requirements.lock | sed 's/ .*//' | tr 'A-Z_' 'a-z-' | sort) \
     <(tr 'A-Z_' 'a-z-' < "$(dirname "$venv")/latest.txt" | sort) | grep -E '^[<>]' || echo "  none"
FEDLOOP_UNLOCKED=1 "$venv/bin/python" -m pytest "$@"
