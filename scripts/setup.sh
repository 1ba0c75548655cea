#!/usr/bin/env bash
# Create ./.venv (or $VENV), install the pinned dependencies, then build and install convnext_fast
# (the compiled extension too, when a compiler is there). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q -r requirements-dev.txt
# --no-build-isolation: build against the torch installed above instead of downloading another
# multi-GB torch into an isolated build environment.
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" -m convnext_fast info || true
