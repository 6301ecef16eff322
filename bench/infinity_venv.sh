#!/usr/bin/env bash
# Builds bench/serve.py's infinity-emb venv (git-ignored) at .venv-infinity, or at $1.
# torch==2.13.0 first (the local CPU build), and named again on every later line so pip keeps it.
# INFINITY_PINS overrides the package line (the pins that ran are in bench/README.md).
set -euo pipefail
VENV=${1:-.venv-infinity}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q "torch==2.13.0" ${INFINITY_PINS:-"infinity-emb[server,optimum]==0.0.78"}
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"
