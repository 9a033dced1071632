#!/usr/bin/env bash
# Set up dreamer_dynamics: ALWAYS into ./.venv (CI, the README and the tests call .venv/bin/python), whether or
# not a virtual or conda environment is active; then torch (kept if already importable; otherwise the CPU build
# on CPU-only machines), then the package in editable mode with its test and Crafter extras.
#
# Which interpreter builds .venv: $PYTHON if set, else `python3` on PATH (an active environment's python).
# - active conda environment: .venv is created with --system-site-packages, so the conda env's packages (e.g. a
#   CUDA build of torch) are reused instead of installed again;
# - active virtual environment or none: a plain .venv from that python (a venv's own packages are not visible
#   to a venv made from it; install your CUDA torch into .venv first if you need one);
# - an existing .venv is reused, or rebuilt when its interpreter no longer runs (e.g. a removed python).
# Nothing is installed into the active environment.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import sys" 2>/dev/null; then
    echo "setup.sh: .venv/bin/python does not run any more; rebuilding .venv" >&2
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    if [ -n "${CONDA_PREFIX:-}" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
        "$BASE_PY" -m venv --system-site-packages .venv
    else
        "$BASE_PY" -m venv .venv
    fi
fi
PY=.venv/bin/python
$PY -m pip install --quiet --upgrade pip
if ! $PY -c "import torch" 2>/dev/null; then
    # No torch yet: 2.13.0 is the CPU build on CPU-only machines; GPU users install their own first.
    $PY -m pip install --quiet "torch==2.13.0"
fi
$PY -m pip install --quiet -e ".[test,crafter]"
echo "dreamer_dynamics set up in $(cd .venv && pwd) ($($PY -c 'import sys, torch; print("python", sys.version.split()[0] + ",", "torch", torch.__version__)'))"
