#!/usr/bin/env bash
# Set up everything the tests use, then run them. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --all
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$PWD/.cache}"           # Mesa shader cache (bpy), pip, etc.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export MPLBACKEND=Agg
exec .venv/bin/python -m pytest -q "$@"
