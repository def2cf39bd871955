#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) and install lr_jax with every extra the
# demo and the tests need. Re-running it is cheap: the install is skipped until setup.py changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.lr_jax-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "installing lr_jax[judge,dev] into .venv (a few minutes on a fresh machine; log: .venv/pip.log)"
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".[judge,dev]"; } > .venv/pip.log 2>&1; then
    grep -v "^WARNING: Location" .venv/pip.log | tail -n 30 >&2
    echo "pip install failed; full log in .venv/pip.log" >&2
    exit 1
  fi
  touch "$stamp"
fi
