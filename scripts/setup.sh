#!/usr/bin/env bash
# Create ./.venv (or $VENV), install the pinned dependencies and convnext_fast (`pip install -e .`,
# what users run), then compile the extension ahead of its first use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q -r requirements-dev.txt
"$VENV/bin/python" -m pip install -q -e ".[bench]"
# The compiled extension is otherwise compiled on the first call that needs it.
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" -m convnext_fast build || true
"$VENV/bin/python" -m convnext_fast info || true
