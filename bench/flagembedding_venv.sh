#!/usr/bin/env bash
# Builds bench/m3.py's FlagEmbedding venv (git-ignored) at .venv-flagembedding, or at $1.
# torch==2.13.0 first (the local CPU build), and named again on every later line so pip keeps it.
# FLAGEMBEDDING_PINS overrides the package line (the versions that ran are in bench/results/m3.md).
set -euo pipefail
VENV=${1:-.venv-flagembedding}
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q "torch==2.13.0" ${FLAGEMBEDDING_PINS:-"FlagEmbedding==1.4.2"}
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"
