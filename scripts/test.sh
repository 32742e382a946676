#!/usr/bin/env bash
# Set up a virtualenv with everything the tests need, check the code with pyflakes,
# then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet ".[test]"
# Lint first: an unused import or an undefined name fails the run in seconds.
.venv/bin/python -m pyflakes setup.py sysadmd bridge twisted/plugins tests bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
