#!/usr/bin/env bash
# Builds bench/m3.py's FlagEmbedding venv (git-ignored) at .venv-flagembedding, or at $1 (bench/peer_venv.sh).
# FLAGEMBEDDING_PINS overrides the package line (the versions that ran are in bench/results/m3.md).
set -euo pipefail
# shellcheck disable=SC2086
exec bash "$(dirname "$0")/peer_venv.sh" "${1:-.venv-flagembedding}" ${FLAGEMBEDDING_PINS:-"FlagEmbedding==1.4.2"}
