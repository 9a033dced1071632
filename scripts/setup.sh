#!/usr/bin/env bash
# Set up dreamer_dynamics on a fresh machine: a virtual environment (or the one already active),
# torch (kept if already importable; otherwise the CPU build on CPU-only machines), then the
# package in editable mode with its test and Crafter extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PY=python
else
    [ -x .venv/bin/python ] || python3 -m venv .venv
    PY=.venv/bin/python
fi
$PY -m pip install --quiet --upgrade pip
if ! $PY -c "import torch" 2>/dev/null; then
    # No torch yet: 2.13.0 is the CPU build on CPU-only machines; GPU users install their own first.
    $PY -m pip install --quiet "torch==2.13.0"
fi
$PY -m pip install --quiet -e ".[test,crafter]"
echo "dreamer_dynamics set up with $($PY -c 'import torch; print("torch", torch.__version__)')"
