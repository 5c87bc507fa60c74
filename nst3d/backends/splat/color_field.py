"""A coarse-to-fine 3D colour field over the Gaussians' centres: an optional parametrisation of the splat
backend's colour offsets (nearby Gaussians share colour, so patterns stay coherent across views)."""

from __future__ import annotations

from typing import Any

import torch


class ColorField:
    """Colour offsets on sparse multi-resolution 3D grids, read (trilinearly) at each Gaussian's centre: the
    --color-field option.

    Gaussians in the same small region share their colour change and the coarse levels build strokes larger
    than a Gaussian. (Measured on the donut: it does not by itself make views more consistent, since large
    overlapping discs still blend differently per view, and it matches the style less well than free colours
    under the same consistency term; so it is off by default.) Only voxels that hold a Gaussian's corner are
    stored: level l has at most 8 N entries, whatever its resolution. Levels: `finest`, finest / 2, ... (up to
    `levels`, each at least 2 voxels a side) over the box lo..hi [3].
    """

    def __init__(self, positions: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, finest: int, levels: int = 4):
        span = (hi - lo).clamp(min=1e-9)
        self.corners: list[tuple[torch.Tensor, torch.Tensor]] = []  # per level: index [N, 8], weight [N, 8]
        self.values: list[torch.nn.Parameter] = []  # per level: [U, 3] colour offsets
        offsets = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=positions.device)
        self.resolutions = [finest >> level for level in range(levels) if finest >> level >= 2] or [2]
        for res in self.resolutions:
            u = ((positions - lo) / span * (res - 1)).clamp(0, res - 1)  # [N, 3] in voxel units
            base = u.floor().long().clamp(max=res - 2)
            frac = u - base
            corner = base[:, None] + offsets  # [N, 8, 3]
            flat = (corner[..., 0] * res + corner[..., 1]) * res + corner[..., 2]
            used, index = torch.unique(flat, return_inverse=True)
            w = torch.where(offsets.bool(), frac[:, None], 1 - frac[:, None]).prod(-1)  # [N, 8]
            self.corners.append((index, w))
            self.values.append(torch.nn.Parameter(torch.zeros(len(used), 3, device=positions.device)))

    def __call__(self) -> torch.Tensor:
        """Colour offsets [N, 3]."""
        total = 0
        for (index, w), values in zip(self.corners, self.values, strict=True):
            picked = torch.index_select(values, 0, index.reshape(-1)).view(*index.shape, 3)  # [N, 8, 3]
            total = total + (picked * w[..., None]).sum(1)
        return total

    def param_groups(self, lr: float, coarse_scale: float = 0.5) -> list[dict[str, Any]]:
        """One group per level; each coarser level steps `coarse_scale` times smaller (its voxels touch many
        Gaussians, so a full step moves large areas at once)."""
        return [{"params": [v], "lr": lr * coarse_scale**level} for level, v in enumerate(self.values)]


def resolution_for(span: float, stroke_scale: float, size: int, pixels: float = 4.0) -> int:
    """The finest resolution whose voxels (span / resolution, span the box's longest side) are at most `pixels`
    pixels of the finest training views (stroke_scale over `size` px): what a stroke needs. Above it, a voxel
    finer than the Gaussians' spacing adds nothing (each Gaussian reads one trilinear sample at its centre), and
    storage stays bounded by 8 entries per Gaussian per level whatever the resolution."""
    return max(2, int(-(-span * size // (pixels * stroke_scale))))
