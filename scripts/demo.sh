#!/usr/bin/env bash
# Set up, then run the main job on the built-in sample: `nst3d demo` (writes ./nst3d-demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Offline machines: use the VGG-19 layers shipped beside the project when no weights are configured.
shared_weights="../shared/weights/vgg19-caffe-conv1_1-conv3_4.pth"
if [[ -z "${NST3D_VGG19_WEIGHTS:-}" && -f "$shared_weights" ]]; then
  export NST3D_VGG19_WEIGHTS="$PWD/$shared_weights"
fi
exec .venv/bin/nst3d demo "$@"
