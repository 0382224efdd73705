#!/usr/bin/env bash
# Creates .venv at the repo root and installs the project editable with its dev extras.
# Reuses the cached llama-cpp-python wheel (hack/build-llama-wheel.sh) so no compile happens twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
WHEEL_DIR=$(bash hack/build-llama-wheel.sh)
.venv/bin/python -m pip install -q --find-links "$WHEEL_DIR" -e '.[dev]'
touch .venv/.installed
