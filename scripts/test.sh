#!/usr/bin/env bash
# Set up everything the tests use, then run them: the main job (Python 3.11, numpy 1.26, every extra, bpy 4.5),
# the Blender 5.0 job (the add-on tests, -m blender, with bpy 5.0 from .venv-bpy5), then the core job (Python
# 3.12, numpy 2, no nerfstudio/bpy/open3d; scripts/test_core312.sh). Extra arguments go to the main job's pytest
# alone (e.g. -m "not slow") and skip the other two. Exit status: the first job that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --all
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$PWD/.cache}"           # Mesa shader cache (bpy), pip, etc.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export MPLBACKEND=Agg
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
if (( $# == 0 )); then
  .venv-bpy5/bin/python -m pytest -q -m blender tests/test_blender_addon*.py || { b5=$?; (( status )) || status=$b5; }
  bash scripts/test_core312.sh || { core=$?; (( status )) || status=$core; }
fi
exit "$status"
