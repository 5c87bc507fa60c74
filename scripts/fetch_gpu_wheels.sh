#!/usr/bin/env bash
# Fill a folder with the wheels a registry-less GPU machine lacks for nst3d's core, image, mesh and splat paths
# (run it where pip reaches a registry; carry the folder over; scripts/gpu_check.sh installs it there):
#   bash scripts/fetch_gpu_wheels.sh [DIR]        (default DIR: .whl, which git ignores)
# The target is CPython 3.12 on manylinux x86_64 with PyTorch, numpy 2, pillow, tqdm, packaging, imageio, scipy,
# jaxtyping, rich and ninja already there (the GPU machine this project borrows; see README, "GPU and CPU").
# What it fetches (versions from scripts/constraints.txt; 13 MiB in all):
#   gsplat   pure Python; compiles its CUDA kernels on first use (nvcc, ninja), cached in $TORCH_EXTENSIONS_DIR
#   trimesh  pure Python (OBJ/PLY/STL loading); its [easy] extras are left out: nst3d does not need them
#   xatlas   cp312 manylinux wheel (UV atlases for meshes without UVs)
#   zstandard cp312 manylinux wheel (.spz version 4 splats)
# Not fetched: open3d (a ~400 MiB wheel with dash/plotly behind it, over the 64 MiB a carried folder may hold)
# and nerfstudio (open3d, nerfacc's CUDA build, pymeshlab, viser...: the nerf path runs where it can be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
mkdir -p "$dir"
python=${PYTHON:-python3}
pin() {  # NAME -> NAME==VERSION as scripts/constraints.txt pins it for Python 3.12
  local line
  line=$(grep -E "^$1==[^;]*(; *python_version *>= *\"3\.12\")?$" scripts/constraints.txt | tail -1)
  [[ -n "$line" ]] || { echo "fetch_gpu_wheels: $1 is not pinned in scripts/constraints.txt" >&2; exit 1; }
  echo "${line%%;*}"
}
for name in gsplat trimesh xatlas zstandard; do
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$(pin "$name")"
done
echo "fetch_gpu_wheels: $dir holds $(du -sh "$dir" | cut -f1):"
ls -1 "$dir"
