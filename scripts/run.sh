#!/usr/bin/env bash
# Set up a virtualenv and run sysadmd in the foreground on the embedded defaults:
# self-signed TLS on port 12150, SQLite state and the local socket in the state dir.
# The project is (re)installed into .venv only when the venv is new or the project's
# files changed since the last install, so later starts are quick and work offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.sysadmd-installed
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# What decides "the project changed": setup.py, the plugins and every file of the packages
# (the C source of bridge/relayscan.c included).
digest=$(find setup.py twisted/plugins sysadmd bridge -type f \( -name '*.py' -o -name '*.json' \
            -o -name '*.html' -o -name '*.js' -o -name '*.css' -o -name '*.c' \) -not -path '*/__pycache__/*' -print0 \
         | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/twistd ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$digest" ]; then
    echo "run.sh: installing sysadmd into .venv" >&2
    .venv/bin/python -m pip install --quiet .
    echo "$digest" > "$STAMP"
fi
exec .venv/bin/twistd -n --pidfile= sysadmd "$@"
