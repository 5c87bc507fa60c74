"""The multi-view consistency term of splat stylization: each training batch's neighbouring views compared where
they see the same surface (warped by depth, as nst3d.eval measures it). See the splat backend's docstring for why."""

from __future__ import annotations

from typing import Any

import torch

from nst3d.cameras import Cameras
from nst3d.warp import backward_warp


@torch.no_grad()
def pair_warp(cameras: Cameras, depth: torch.Tensor, mask: torch.Tensor, i: int, j: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where view i's pixels land in view j: (grid [H, W, 2] for grid_sample, align_corners=False; valid
    [1, H, W]), by the depth-tested warp of eval's metric (nst3d.warp) applied to view j's pixel coordinates
    (bilinear sampling of a linear ramp returns the sample position itself), so training and the metric agree
    on co-visibility."""
    h, w = depth.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=depth.device) + 0.5,
                            torch.arange(w, dtype=torch.float32, device=depth.device) + 0.5, indexing="ij")
    coords = torch.stack([xs, ys, torch.zeros_like(xs)])[None]  # [1, 3, H, W]
    position, valid = backward_warp(coords, depth[j:j + 1], mask[j:j + 1], cameras[j], depth[i:i + 1],
                                    mask[i:i + 1], cameras[i])
    grid = torch.stack([position[0, 0] / w * 2 - 1, position[0, 1] / h * 2 - 1], dim=-1)
    return grid, valid[0].float()


def consistency_loss(rgb: torch.Tensor, warps: list[tuple[int, int, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean squared colour difference between each view i [3, H, W] of rgb [V, 3, H, W] and view j sampled
    where i's pixels land in j, over the co-visible pixels of every pair."""
    total, count = rgb.new_zeros(()), rgb.new_zeros(())
    for i, j, grid, valid in warps:
        sampled = torch.nn.functional.grid_sample(rgb[j:j + 1], grid[None], mode="bilinear", padding_mode="zeros",
                                                  align_corners=False)[0]
        total = total + ((rgb[i] - sampled).pow(2) * valid).sum()
        count = count + 3 * valid.sum()
    return total / count.clamp(min=1)


class ConsistentObjective:
    """An Objective plus a multi-view consistency term on each training batch (the backend's last rendered
    views and their precomputed warps): "consistency" = mean squared difference between co-visible pixels
    of the batch's views. Everything else (vgg, target, content features) is the wrapped objective's."""

    def __init__(self, objective: Any, backend: Any, weight: float):
        self.objective = objective
        self.backend = backend
        self.weight = weight

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objective, name)

    def __call__(self, rgb: torch.Tensor, mask: torch.Tensor | None, content: Any,
                 style_levels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        terms = self.objective(rgb, mask, content, style_levels)
        views = self.backend.last_views
        if self.weight > 0 and views is not None and views.warps and len(views.mask) == len(rgb):
            terms["consistency"] = consistency_loss(rgb, views.warps)
            terms["total"] = terms["total"] + self.weight * terms["consistency"]
        return terms
