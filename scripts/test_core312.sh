#!/usr/bin/env bash
# The core job: the tests that need neither nerfstudio nor bpy, on Python 3.12 with numpy 2 (what GPU machines
# run), in ./.venv-core312: torch (the GPU machine's version, pinned in scripts/constraints.txt), the core, the
# splat and batch extras, the mesh extra without open3d (it cannot travel to such a machine), and the dev tools.
# scripts/test.sh runs it after the main job. Extra arguments go to pytest.
# Without a Python 3.12 (on PATH, $PYTHON312, or pyenv's versions) it says so in one line and exits 0, so a
# machine without one can still run scripts/test.sh; set NST3D_REQUIRE_CORE312=1 to make that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

works() { [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
python=""
for candidate in "${PYTHON312:-}" python3.12 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
    2>/dev/null | sort -V -r); do
  if works "$candidate"; then python=$candidate; break; fi
done
if [[ -z "$python" ]]; then
  echo "core312: no Python 3.12 found (set PYTHON312=/path/to/python3.12); the Python 3.12 + numpy 2 job is skipped"
  [[ "${NST3D_REQUIRE_CORE312:-0}" == 1 ]] && exit 1
  exit 0
fi

venv=.venv-core312
stamp_value="$(cat pyproject.toml scripts/constraints.txt scripts/test_core312.sh | sha256sum | cut -c1-16)"
if [[ ! -x $venv/bin/python || ! -f $venv/.nst3d-setup || "$(cat $venv/.nst3d-setup)" != "$stamp_value" ]]; then
  started=$SECONDS
  [[ -x $venv/bin/python ]] || "$python" -m venv $venv
  pip=($venv/bin/python -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --upgrade pip setuptools wheel
  # No CPU-only cp312 torch wheel is reachable from a plain registry: this is PyPI's CUDA build (~4.7 GB), which
  # runs on a CPU all the same. Pinned, and installed first, so nothing else chooses it.
  "${pip[@]}" install -c scripts/constraints.txt torch
  # The mesh extra as pyproject.toml states it, less open3d.
  readarray -t mesh < <($venv/bin/python -c 'import tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(r for r in extras["project"]["optional-dependencies"]["mesh"] if not r.startswith("open3d")))')
  "${pip[@]}" install -c scripts/constraints.txt -e ".[splat,batch,dev]" "${mesh[@]}"
  echo "$stamp_value" > $venv/.nst3d-setup
  echo "core312: $venv ready in $((SECONDS - started)) s" >&2
fi

export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$PWD/.cache}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export MPLBACKEND=Agg
echo "core312: $($venv/bin/python -c 'import sys, numpy, torch
print(f"Python {sys.version.split()[0]}, numpy {numpy.__version__}, torch {torch.__version__}")')" >&2
# Exit 5 (nothing selected) would mean the markers or the test files broke: it fails the job like any error.
exec $venv/bin/python -m pytest -q -m "not nerf and not blender" "$@"
