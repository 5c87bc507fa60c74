"""Offline machines: nerfacto builds an LPIPS metric (torchmetrics -> torchvision AlexNet) when a model is
set up, and that downloads AlexNet's ImageNet weights once into the torch hub cache. Without internet the
set-up fails. `placeholder_alexnet()` writes a randomly initialised AlexNet state_dict where torch looks for
it, so nerfacto builds; the LPIPS numbers nerfstudio logs are then meaningless (nothing in nst3d uses them).
For tests and offline CI only: on a machine with internet, let torchvision download the real file.

    python -m nst3d.integrations.nerfstudio.offline [TORCH_HOME]
    # writes $TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth
"""

from __future__ import annotations

import sys
from pathlib import Path

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def alexnet_path(torch_home: str | Path | None = None) -> Path:
    """Where torchvision's AlexNet weights are cached: $TORCH_HOME/hub/checkpoints (torch's default home)."""
    import torch.hub

    hub = Path(torch_home) / "hub" if torch_home is not None else Path(torch.hub.get_dir())
    return hub / "checkpoints" / ALEXNET_FILE


def placeholder_alexnet(torch_home: str | Path | None = None, seed: int = 0) -> Path:
    """Write a random AlexNet state_dict at alexnet_path(torch_home) unless a file is already there."""
    import torch

    from nst3d.files import atomic_path
    from nst3d.integrations.nerfstudio.tv_shim import apply

    path = alexnet_path(torch_home)
    if path.is_file():
        return path
    apply()
    from torchvision.models import alexnet

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(alexnet().state_dict(), tmp)
    return path


if __name__ == "__main__":
    print(placeholder_alexnet(sys.argv[1] if len(sys.argv) > 1 else None))
    sys.exit(0)
