#!/usr/bin/env bash
# The device run (benchmarks/device_run.py, docs/benchmarks.md "GPU") on a bare GPU machine whose python has
# torch, Lightning and the rest, but neither this package nor the pure-Python wheels below, and no network.
#
#   bash scripts/device_run.sh --download                          # here, with network: fills .whl/ (git-ignored)
#   bash scripts/device_run.sh --out "$OUT" --budget 540           # there, with .whl carried: installs, then runs
#
# The wheels go to a scratch site directory on PYTHONPATH (the machine's environment is left as it is), with a
# `dreamer-dynamics` console script on PATH (the FSDP test calls it); every other argument goes to
# `python -m benchmarks.device_run`. PYTHON picks the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 ruamel.yaml==0.19.1)
PY="${PYTHON:-python3}"

if [ "${1:-}" = "--download" ]; then
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        -d .whl "${WHEELS[@]}"
    ls .whl
    exit 0
fi

SITE="${DEVICE_RUN_SITE:-/tmp/device_run_site}"
mkdir -p "$SITE/bin"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
printf '#!/bin/sh\nexec %s -m dreamer_dynamics.cli "$@"\n' "$(command -v "$PY")" > "$SITE/bin/dreamer-dynamics"
chmod +x "$SITE/bin/dreamer-dynamics"
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1
if ! "$PY" -c "import jsonargparse, lightning, torch, dreamer_dynamics.cli" 2> /tmp/device_run_import.err; then
    echo "device_run.sh: the package does not import with $PY (run 'bash scripts/device_run.sh --download' where" \
        "pip has network, and carry .whl): $(tail -1 /tmp/device_run_import.err)" >&2
    exit 1
fi
exec "$PY" -m benchmarks.device_run "$@"
