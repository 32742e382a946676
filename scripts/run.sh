#!/usr/bin/env bash
# Set up a virtualenv and run sysadmd in the foreground on the embedded defaults:
# self-signed TLS on port 12150, SQLite state and the local socket in the state dir.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet .
exec .venv/bin/twistd -n --pidfile= sysadmd "$@"
