"""Depth warps between views: view j's colours seen from view i's pixels, with known depths and cameras.

A core module: nst3d.eval's consistency metric and the splat backend's consistency term both use it.
Devices: the warp runs on the pixels' device; cameras (CPU) are moved there where they meet pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nst3d.cameras import Cameras

#: a pixel counts as covered only at this mask value (silhouette pixels mixed with the background do not)
FULL_COVERAGE = 0.999


def _pixel_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (x + 0.5, y + 0.5), each [H, W] (the convention of Cameras.rays)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                            torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    return xs, ys


@torch.no_grad()
def backward_warp(rgb_j: torch.Tensor, depth_j: torch.Tensor, mask_j: torch.Tensor | None, cameras_j: Cameras,
                  depth_i: torch.Tensor, mask_i: torch.Tensor | None, cameras_i: Cameras,
                  depth_tolerance: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp view j into view i with known depths and cameras.

    rgb_j: [V, 3, H, W]; depth_*: [V, 1, H, W] camera-space z (0 = nothing); mask_*: [V, 1, H, W] or None.
    Returns (warped [V, 3, H, W]: view j's colour bilinearly sampled where view i's pixel lands in view j,
    valid [V, 1, H, W] bool: the pixel is covered in i, lands fully covered in j, and passes the depth test).
    """
    device = rgb_j.device
    v, _, h, w = depth_i.shape
    xs, ys = _pixel_grid(h, w, device)
    K_i, K_j = cameras_i.K.to(device).float(), cameras_j.K.to(device).float()
    z = depth_i[:, 0]  # [V, H, W]
    x_cam = (xs[None] - K_i[:, 0, 2, None, None]) / K_i[:, 0, 0, None, None] * z
    y_cam = (ys[None] - K_i[:, 1, 2, None, None]) / K_i[:, 1, 1, None, None] * z
    points_i = torch.stack([x_cam, y_cam, z, torch.ones_like(z)], dim=-1)  # [V, H, W, 4]
    w2c_i, w2c_j = cameras_i.world_to_cam.to(device).float(), cameras_j.world_to_cam.to(device).float()
    i_to_j = w2c_j @ torch.linalg.inv(w2c_i)
    points_j = torch.einsum("vab,vhwb->vhwa", i_to_j, points_i)[..., :3]  # [V, H, W, 3]
    z_j = points_j[..., 2]
    safe_z = z_j.clamp(min=1e-8)
    u = K_j[:, 0, 0, None, None] * points_j[..., 0] / safe_z + K_j[:, 0, 2, None, None]
    vv = K_j[:, 1, 1, None, None] * points_j[..., 1] / safe_z + K_j[:, 1, 2, None, None]
    grid = torch.stack([2 * u / cameras_j.width - 1, 2 * vv / cameras_j.height - 1], dim=-1)  # [V, H, W, 2]
    sample = (lambda image: F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=False))
    warped = sample(rgb_j)
    sampled_depth = sample(depth_j)[:, 0]
    covered_j = (depth_j > 0).float() if mask_j is None else mask_j * (depth_j > 0).float()
    sampled_cover = sample(covered_j)[:, 0]
    covered_i = z > 0
    if mask_i is not None:
        covered_i = covered_i & (mask_i[:, 0] >= FULL_COVERAGE)
    inside = (grid.abs() <= 1).all(-1) & (z_j > 0)
    depth_ok = (sampled_depth - z_j).abs() <= depth_tolerance * z_j
    valid = covered_i & inside & (sampled_cover >= FULL_COVERAGE) & depth_ok
    return warped, valid[:, None]
