#!/usr/bin/env bash
# The GPU check: on a CUDA machine, from this checkout plus a folder of carried wheels, run the CUDA tests and the
# GPU benchmark, and print one table (seconds per step, peak device memory). No registry is needed:
#   bash scripts/fetch_gpu_wheels.sh .whl     # where pip works; carry .whl along with the checkout
#   bash scripts/gpu_check.sh [.whl]          # on the GPU machine (Python 3.12, CUDA torch preinstalled)
# The wheels go into a private folder ($NST3D_GPU_SITE, default /tmp/nst3d-gpu-site), never into the machine's
# Python. The first run compiles gsplat's CUDA kernels (minutes; cached in $TORCH_EXTENSIONS_DIR, default
# .cache/torch_extensions). Last, it times the mesh step's resolve formulations side by side (bench_resolve.py).
# Whole run: under 8 minutes on an H200 (under 5 with gsplat's build cached). Exit 0 only if the tests and every
# benchmark case pass.
# On a machine without CUDA it stops at once with one line and exit 1.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
wheels=${1:-.whl}

why=$("$python" -c '
import sys
try:
    import torch
except ImportError:
    sys.exit("no torch in " + sys.executable)
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__} (torch.cuda.is_available() is False)")
' 2>&1) || { echo "gpu_check: ${why##*$'\n'}; run it on a machine with an NVIDIA GPU and CUDA torch"; exit 1; }

say() { echo "gpu_check: $*" >&2; }
site=${NST3D_GPU_SITE:-/tmp/nst3d-gpu-site}
if compgen -G "$wheels/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl || { echo "gpu_check: could not install the wheels in $wheels"; exit 1; }
else
  say "no wheels in $wheels (scripts/fetch_gpu_wheels.sh makes them); using what $python already has"
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$PWD/.cache}" MPLBACKEND=Agg
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"   # gsplat's one-time CUDA build
mkdir -p .cache

start=$SECONDS budget=470   # seconds for the whole run: the benchmark gets what the build and the tests left
say "building gsplat's CUDA kernels if not cached (first run: minutes)"
timeout 240 "$python" -c 'from gsplat.cuda._backend import _C; assert _C is not None, "gsplat CUDA build failed"' \
  >.cache/gsplat-build.log 2>&1 || say "gsplat's CUDA kernels did not build (see .cache/gsplat-build.log)"
say "gsplat ready after $((SECONDS - start)) s; running pytest -m gpu"
timeout 180 "$python" -m pytest -q -m gpu -p no:cacheprovider >.cache/gpu-tests.log 2>&1
tests=$?
case $tests in
  0) tests_line="passed" ;;
  5) tests_line="FAILED: no test is marked gpu (the marker or conftest.py broke)" ;;
  124) tests_line="timed out (see .cache/gpu-tests.log)" ;;
  *) tests_line="FAILED (see .cache/gpu-tests.log)" ;;
esac
summary=$(grep -E '[0-9]+ (passed|failed|error|skipped)' .cache/gpu-tests.log | tail -1 | tr -d '=' | xargs)
say "tests done after $((SECONDS - start)) s; running the benchmark"

timeout $(( budget - (SECONDS - start) > 60 ? budget - (SECONDS - start) : 60 )) \
  "$python" scripts/bench_gpu.py --device cuda --timeout 150 --json .cache/bench_gpu.json
bench=$?
(( bench == 124 )) && echo "bench_gpu: stopped at the ${budget} s budget (first gsplat build too slow? run again: it is cached)"
echo
say "comparing the mesh step's resolve formulations (scripts/bench_resolve.py, 512 px)"
timeout 90 "$python" scripts/bench_resolve.py --device cuda --size 512 || say "bench_resolve did not finish (exit $?)"
echo
echo "pytest -m gpu: $tests_line${summary:+ ($summary)}; $(( SECONDS - start )) s in all"
(( tests == 0 && bench == 0 ))
