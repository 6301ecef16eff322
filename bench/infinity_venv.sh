#!/usr/bin/env bash
# Builds bench/serve.py's infinity-emb venv (git-ignored) at .venv-infinity, or at $1 (bench/peer_venv.sh).
# INFINITY_PINS overrides the package line (the pins that ran are in bench/README.md).
set -euo pipefail
# shellcheck disable=SC2086
exec bash "$(dirname "$0")/peer_venv.sh" "${1:-.venv-infinity}" ${INFINITY_PINS:-"infinity-emb[server,optimum]==0.0.78"}
