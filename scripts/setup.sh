#!/usr/bin/env bash
# Set up ./.venv with nst3d and what it needs. Idempotent: a second run with nothing changed takes a second.
#   scripts/setup.sh            core + meshes + splats + batch (Ray) + dev tools
#   scripts/setup.sh --all      also nerfstudio and the bpy module (what the test suite uses), and .venv-bpy5
#                               (Blender 5.0's bpy over .venv, for the add-on tests; scripts/setup_bpy5.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="mesh,splat,batch,dev"
if [[ "${1:-}" == "--all" ]]; then extras="mesh,splat,batch,nerf,blender,dev"; fi

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null; then python=$candidate; break; fi
  done
fi
[[ -n "$python" ]] || { echo "setup: no python3 found; install Python 3.11" >&2; exit 1; }

# open3d needs libusb-1.0 at import time (Debian/Ubuntu package libusb-1.0-0).
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libusb-1.0-0; }
  else
    echo "setup: open3d needs libusb-1.0: run 'sudo apt-get install libusb-1.0-0'" >&2
  fi
fi

stamp_value="$extras $(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
bpy5() {  # --all: the Blender 5.0 add-on job's .venv-bpy5, layered over .venv (see scripts/setup_bpy5.sh)
  if [[ ",$extras," == *",blender,"* ]]; then bash scripts/setup_bpy5.sh; fi
}
if [[ -x .venv/bin/python && -f .venv/.nst3d-setup && "$(cat .venv/.nst3d-setup)" == "$stamp_value" ]]; then
  bpy5
  exit 0
fi
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip setuptools wheel
# torch first and pinned: an unpinned torch (or torchvision) pulls a multi-GB CUDA build on a CPU machine.
"${pip[@]}" install -q -c scripts/constraints.txt torch
"${pip[@]}" install -q -c scripts/constraints.txt -e ".[$extras]"
if [[ ",$extras," == *",nerf,"* ]]; then
  # torchvision's only wheel is a CUDA build: on a CPU-only torch its ops library cannot load and
  # `import torchvision` (which nerfstudio needs) fails; this hook lets it import (see tv_shim.py).
  .venv/bin/python -m nst3d.integrations.nerfstudio.tv_shim install
fi
echo "$stamp_value" > .venv/.nst3d-setup
echo "setup: .venv ready ($extras)" >&2
bpy5
