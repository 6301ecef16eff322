#!/usr/bin/env bash
# Builds a peer's own git-ignored venv: bash bench/peer_venv.sh VENV PACKAGE_SPEC...
# torch==2.13.0 first (the local CPU build), and named again on the packages' line so pip keeps it.
set -euo pipefail
VENV=$1
shift
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q "torch==2.13.0" "$@"
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"
