"""The NeRF backend's training views: its pool of capture cameras (as captured, and orbited a little about the
scene centre), zoomed crops of them at the stroke scale's octaves, and zoomed close-ups of held-out views.

Scale: a NeRF has no object to measure, so the extent stands in for the bounding diagonal that the training
cameras frame at the point they look at: `framed_height` = 2 distance tan(fov / 2) (nst3d.scales' fractions
apply to it; `--stroke-scale` in the scene's units overrides the default). A crop of a camera magnified by
`factor` covers 1 / factor of its height at the depth it looks at (nst3d.scales.zoomed), so the crop at octave
height h has factor = (that camera's height at the scene centre's depth) / h, never below 1.

Cameras stay on the CPU (nst3d.cameras); the backend turns them into rays on the model's device.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from nst3d.cameras import Cameras
from nst3d.held_out import HeldOutViews
from nst3d.scales import octave_heights, stroke_scale_or_default, zoomed


class SceneFrame(Protocol):
    """What these functions read of nst3d.backends.nerf.SceneFrame (which imports this module)."""

    center: torch.Tensor
    distance: float
    fov_y_degrees: float


def rotate_about(cameras: Cameras, center: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor) -> Cameras:
    """Cameras [V] orbited about `center` [3] by `angle` [V] radians around unit `axis` [V, 3]."""
    k = torch.zeros(len(cameras), 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    rotation = torch.eye(3) + s * k + (1 - c) * (k @ k)  # Rodrigues
    move = torch.eye(4).repeat(len(cameras), 1, 1)
    move[:, :3, :3] = rotation
    move[:, :3, 3] = center - (rotation @ center[:, None])[..., 0]
    return Cameras(cameras.world_to_cam @ torch.linalg.inv(move), cameras.K, cameras.width, cameras.height)


def default_pool_size(cameras: int) -> int:
    """Twice the training cameras (each once as captured, once jittered), up to 128 unless there are more."""
    return min(2 * cameras, max(cameras, 128))


def view_pool(train: Cameras, frame: SceneFrame, size: int, jitter_degrees: float, seed: int = 0) -> Cameras:
    """`size` training views: pool[k] is camera k % N, as captured for k < N, else orbited about the scene
    centre by a fixed random rotation of up to jitter_degrees."""
    index = [k % len(train) for k in range(size)]
    pool = train[index]
    jittered = [k for k in range(size) if k >= len(train)]
    if jittered and jitter_degrees > 0:
        generator = torch.Generator().manual_seed(seed)
        axis = torch.nn.functional.normalize(torch.randn(len(jittered), 3, generator=generator), dim=-1)
        angle = (torch.rand(len(jittered), generator=generator) * 2 - 1) * math.radians(jitter_degrees)
        moved = rotate_about(pool[jittered], frame.center, axis, angle)
        pool.world_to_cam[jittered] = moved.world_to_cam
    return pool


def joined(a: Cameras, b: Cameras) -> Cameras:
    """Cameras a then b (same image size)."""
    return Cameras(torch.cat([a.world_to_cam, b.world_to_cam]), torch.cat([a.K.float(), b.K.float()]), a.width,
                   a.height)


def framed_height(frame: SceneFrame) -> float:
    """The world height the training cameras' median view covers at the scene centre (the scene's extent)."""
    return 2 * frame.distance * math.tan(math.radians(frame.fov_y_degrees) / 2)


def octave_crops(train: Cameras, frame: SceneFrame, stroke_scale: float | None, count: int, seed: int = 0
                 ) -> tuple[list[float], Cameras | None]:
    """(octave heights, finest first; `count` crops of random training cameras cycling through them, or None).
    Each crop is centred on a random pixel of the middle half of its image (nerfacto renders every pixel, the
    background included, so every pixel is covered; the middle keeps the crop on what the capture aims at)."""
    extent = framed_height(frame)
    heights = octave_heights(stroke_scale_or_default(stroke_scale, extent), extent)
    if count <= 0:
        return heights, None
    generator = torch.Generator().manual_seed(seed + 7919)
    picked = torch.randint(len(train), (count,), generator=generator)
    cams = train[picked.tolist()]
    c2w = cams.cam_to_world
    depth = ((frame.center[None] - c2w[:, :3, 3]) * c2w[:, :3, 2]).sum(-1).clamp(min=1e-6)  # [V] along the axis
    covers = depth * cams.height / cams.K[:, 1, 1]
    target = torch.tensor([heights[k % len(heights)] for k in range(count)])
    size = torch.tensor([cams.width, cams.height], dtype=torch.float32)
    centers = size * (0.25 + 0.5 * torch.rand(count, 2, generator=generator))
    return heights, zoomed(cams, (covers / target).clamp(min=1.0), centers)


def close_up_crops(held: HeldOutViews, depth: torch.Tensor, mask: torch.Tensor, view_height: float) -> HeldOutViews:
    """Held-out views zoomed about their centres (anchor and partners alike) so that each anchor's height covers
    view_height at the median depth it shows (depth, mask: [3N, 1, H, W] renders of held.all(), CPU)."""
    n = held.count
    z = torch.stack([d[(m >= 0.5) & (d > 0)].median() if bool(((m >= 0.5) & (d > 0)).any()) else d.new_zeros(())
                     for d, m in zip(depth[:n], mask[:n], strict=True)])
    covers = z * held.anchors.height / held.anchors.K[:, 1, 1].float()
    factor = (covers / view_height).clamp(min=1.0)
    return HeldOutViews(zoomed(held.anchors, factor), zoomed(held.short, factor), zoomed(held.long, factor),
                        held.short_degrees, held.long_degrees, view_height)
