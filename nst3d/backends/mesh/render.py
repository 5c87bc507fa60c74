"""Rendering a textured mesh through the G-buffer: silhouette framing, turntables, supersampled mip-mapped
texture renders, and MeshRenderer (for `nst3d render` and previews).

Device rule: G-buffers and renders live on the Rasterizer's device; cameras and framing points on the CPU;
MeshRenderer.render returns CPU Renders.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from nst3d.backends.base import Render
from nst3d.backends.mesh.asset import MeshAsset
from nst3d.backends.mesh.gbuffer import GBuffer, Rasterizer, mip_chain, pool, shade
from nst3d.cameras import Cameras, cameras_around, distances_to_fit, intrinsics, look_at, orbit_directions
from nst3d.scales import bounding_diagonal

FOV_DEGREES = 40.0
FRAME_MARGIN = 1.06
LIGHT = (0.35, 0.8, 0.5)  # world-space direction towards the light for Lambert shading
AMBIENT = 0.35
MAX_FRAMING_POINTS = 50_000


def lambert(normal: torch.Tensor) -> torch.Tensor:
    """[..., 3] world normals -> [...] ambient + diffuse shading from the fixed light."""
    light = F.normalize(torch.tensor(LIGHT, device=normal.device), dim=0)
    return AMBIENT + (1 - AMBIENT) * (normal * light).sum(-1).clamp(min=0)


def framing_points(vertices: np.ndarray) -> torch.Tensor:
    """Points whose projections bound the silhouette [N, 3]: every vertex, or a subsample + extremes."""
    if len(vertices) <= MAX_FRAMING_POINTS:
        return torch.from_numpy(vertices).float()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(vertices), MAX_FRAMING_POINTS, replace=False)
    extremes = np.concatenate([vertices.argmin(0), vertices.argmax(0)])
    return torch.from_numpy(vertices[np.concatenate([pick, extremes])]).float()


def frame_on_silhouette(points: torch.Tensor, directions: torch.Tensor, width: int, height: int,
                        fov_y_degrees: float = FOV_DEGREES, zoom: torch.Tensor | None = None,
                        margin: float = FRAME_MARGIN) -> Cameras:
    """Cameras looking along -directions [V, 3] whose image the object's silhouette fills (centred, with a
    small margin), rather than its bounding sphere: a long, thin object fills the frame from the side.

    zoom: [V] distance multipliers (1 = tight framing, > 1 farther away).
    """
    center = (points.min(0).values + points.max(0).values) / 2
    tan_y = math.tan(math.radians(fov_y_degrees) / 2) / margin
    tan_x = tan_y * width / height
    views = len(directions)
    eye = center[None] + directions
    rotation = look_at(eye, center)[:, :3, :3]  # rows: right, down, forward
    centers = center[None].repeat(views, 1)
    for _ in range(3):
        q = torch.einsum("vij,vnj->vni", rotation, points[None] - centers[:, None])  # [V, N, 3]
        distance = distances_to_fit(points, centers, rotation, tan_x, tan_y).max(1).values.clamp(min=1e-6)
        depth = (q[..., 2] + distance[:, None]).clamp(min=1e-6)
        ax, ay = q[..., 0] / depth, q[..., 1] / depth
        shift_x = (ax.max(1).values + ax.min(1).values) / 2 * distance
        shift_y = (ay.max(1).values + ay.min(1).values) / 2 * distance
        centers = centers + shift_x[:, None] * rotation[:, 0] + shift_y[:, None] * rotation[:, 1]
    distance = distances_to_fit(points, centers, rotation, tan_x, tan_y).max(1).values
    if zoom is not None:
        distance = distance * zoom
    eyes = centers - rotation[:, 2] * distance[:, None]
    K = intrinsics(width, height, fov_y_degrees).repeat(views, 1, 1)
    return Cameras(look_at(eyes, centers), K, width, height)


def render_textures(rasterizer: Rasterizer, textures: list[list[torch.Tensor]], cameras: Cameras, supersample: int,
                    background: torch.Tensor, shading: str = "none", device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, GBuffer]:
    """Render mip-mapped textures (one mip chain per slot) through a (supersampled) G-buffer.

    background: [V, 3] or [3]. Returns (rgb [V, 3, H, W] over the background, the base-resolution G-buffer).
    """
    rgb, base, _ = render_textures_with_samples(rasterizer, textures, cameras, supersample, background, shading,
                                                device)
    return rgb, base


def render_textures_with_samples(rasterizer: Rasterizer, textures: list[list[torch.Tensor]], cameras: Cameras,
                                 supersample: int, background: torch.Tensor, shading: str = "none",
                                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, GBuffer, GBuffer]:
    """render_textures, also returning the G-buffer that was shaded (the supersampled one, or the base one
    when supersample is 1): (rgb [V, 3, H, W], base G-buffer, shaded G-buffer)."""
    base, fine = rasterizer.rasterize(cameras, supersample, normals=shading == "lambert")
    gbuf = (fine if fine is not None else base).to(device)
    scale = lambert(gbuf.normal) if shading == "lambert" else None
    rgb = shade(gbuf, textures, scale).permute(0, 3, 1, 2)
    hit = gbuf.coverage[:, None]
    bg = background.to(device).view(-1, 3, 1, 1)
    return pool(rgb * hit + (1 - hit) * bg, supersample), base.to(device), gbuf


def turntable_cameras(points: torch.Tensor, frames: int, size: int, elevation_degrees: float = 20.0,
                      start_degrees: float = 0.0) -> Cameras:
    """An orbit of cameras around the bounding-box centre at ONE distance (the nearest at which every frame,
    looking at that centre, holds the whole object), so a turntable does not zoom in and out."""
    directions = orbit_directions(frames, elevation_degrees, start_degrees)
    center = (points.min(0).values + points.max(0).values) / 2
    rotation = look_at(center[None] + directions, center)[:, :3, :3]
    tan = math.tan(math.radians(FOV_DEGREES) / 2) / FRAME_MARGIN
    distance = float(distances_to_fit(points, center[None].expand(frames, 3), rotation, tan, tan).max())
    return cameras_around(center, distance, directions, size, size, FOV_DEGREES)


class MeshRenderer:
    """A mesh asset with its own textures, for `nst3d render` (turntables, stills) and previews."""

    def __init__(self, asset: MeshAsset, supersample: int = 2, shading: str = "lambert",
                 device: torch.device | str = "cpu", background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        self.asset = asset
        self.rasterizer = Rasterizer(asset.world(), device)
        self.points = framing_points(self.rasterizer.mesh.vertices)
        self.mips = [mip_chain(s.texture.to(device)[None]) for s in asset.slots]
        self.supersample, self.shading, self.device = supersample, shading, torch.device(device)
        self.background = torch.tensor(background, dtype=torch.float32)

    def turntable(self, frames: int, size: int, elevation_degrees: float = 20.0) -> Cameras:
        return turntable_cameras(self.points, frames, size, elevation_degrees)

    def still(self, size: int, elevation_degrees: float = 20.0, azimuth_degrees: float = 30.0) -> Cameras:
        """One view from the turntable's ring at `azimuth_degrees`, framed on the silhouette (a turntable's
        shared distance, looking at the bounding-box centre, can crop a single view of a long asset)."""
        return frame_on_silhouette(self.points, orbit_directions(1, elevation_degrees, azimuth_degrees), size, size)

    def diagonal(self) -> float:
        return bounding_diagonal(self.points)

    @torch.no_grad()
    def render(self, cameras: Cameras, batch: int = 4) -> Render:
        """rgb [V, 3, H, W] over the background, mask [V, 1, H, W] (coverage), depth [V, 1, H, W]; CPU."""
        rgbs, masks, depths = [], [], []
        for start in range(0, len(cameras), batch):
            cams = cameras[list(range(start, min(start + batch, len(cameras))))]
            rgb, gbuf = render_textures(self.rasterizer, self.mips, cams, self.supersample, self.background,
                                        self.shading, self.device)
            rgbs.append(rgb.cpu())
            masks.append(gbuf.coverage[:, None].cpu())
            depths.append(gbuf.depth[:, None].cpu())
        return Render(torch.cat(rgbs), torch.cat(masks), torch.cat(depths))
