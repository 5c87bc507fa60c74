"""A Gaussian-splat scene (means, rotations, scales, opacities, SH colours) and how to look at it: robust
framing bounds that ignore floaters, the scene's up axis, framed orbits, stills and turntables, and rendering
with the scene's own colours (render_scene). The splat backend (backend.py) optimises colours over these."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nst3d.backends.base import Render
from nst3d.backends.splat.ply import SplatPly
from nst3d.backends.splat.render import rasterize
from nst3d.cameras import Cameras, cameras_around, distances_to_fit, intrinsics, look_at, orbit_directions
from nst3d.errors import UserError

FOV_DEGREES = 40.0
FRAME_MARGIN = 1.08
FRAMING_QUANTILE = 0.99  # fit 98% of the (opaque) Gaussians, not floaters
# A still shows the whole object: fit 99% of the centres, and leave room for the outer Gaussians' own extent.
STILL_QUANTILE, STILL_MARGIN = 0.995, 1.2
MAX_FRAMING_POINTS = 50_000
DEPTH_ALPHA = 0.5  # a pixel has a depth where the accumulated opacity reaches this
UP_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0),
           "-x": (-1.0, 0.0, 0.0), "-y": (0.0, -1.0, 0.0), "-z": (0.0, 0.0, -1.0)}


@dataclass
class SplatScene:
    """Gaussians as tensors: means [N, 3], quats [N, 4] (w, x, y, z), scales [N, 3] (activated),
    opacities [N] (activated), sh_dc [N, 3], sh_rest [N, K - 1, 3] (K = (degree + 1)^2). All on one device
    (`to` moves them together); a `subset` mask lives on that device too."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh_dc: torch.Tensor
    sh_rest: torch.Tensor
    degree: int

    @classmethod
    def from_ply(cls, ply: SplatPly) -> SplatScene:
        return cls(ply.means(), ply.quats(), ply.log_scales().exp(), torch.sigmoid(ply.opacity_logits()),
                   ply.sh_dc(), ply.sh_rest(), ply.sh_degree)

    def __len__(self) -> int:
        return len(self.means)

    def to(self, device) -> SplatScene:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return SplatScene(**moved)

    def subset(self, keep: torch.Tensor) -> SplatScene:
        """Only the Gaussians where keep [N] (bool) is true."""
        return SplatScene(**{k: v[keep] if torch.is_tensor(v) else v for k, v in vars(self).items()})

    def sh(self) -> torch.Tensor:
        """All SH coefficients [N, K, 3]."""
        return torch.cat([self.sh_dc[:, None], self.sh_rest], dim=1)


def cleanup_mask(scene: SplatScene, radius: float, max_extent: float = 0.5, max_aspect: float = 10.0,
                 min_extent: float = 0.1) -> torch.Tensor:
    """Gaussians to keep [N] (bool): drops huge ones (3-sigma extent above `max_extent` of the scene radius)
    and needles (longest axis over `max_aspect` times the middle one, if its 3-sigma extent is above
    `min_extent` of the radius), which smear a style across the scene (as G-Style observes). Flat discs,
    what surfaces are made of, are kept."""
    axes = scene.scales.sort(dim=-1).values  # [N, 3] shortest .. longest
    longest, middle = axes[:, 2], axes[:, 1].clamp(min=1e-12)
    huge = 3 * longest > max_extent * radius
    needle = (longest / middle > max_aspect) & (3 * longest > min_extent * radius)
    return ~(huge | needle)


def framing_points(scene: SplatScene, seed: int = 0) -> torch.Tensor:
    """Means of the fairly opaque Gaussians (the ones that make the picture), at most 50k, [P, 3]."""
    keep = scene.opacities >= 0.2
    points = (scene.means[keep] if int(keep.sum()) >= 16 else scene.means).float().cpu()  # framing: on the CPU
    if len(points) > MAX_FRAMING_POINTS:
        generator = torch.Generator().manual_seed(seed)
        points = points[torch.randperm(len(points), generator=generator)[:MAX_FRAMING_POINTS]]
    return points


def robust_bounds(points: torch.Tensor, quantile: float = FRAMING_QUANTILE) -> tuple[torch.Tensor, float]:
    """(centre [3], radius): the middle of the per-axis percentile box, and the `quantile` of distances."""
    lo = torch.quantile(points, 1 - quantile, dim=0)
    hi = torch.quantile(points, quantile, dim=0)
    center = (lo + hi) / 2
    radius = float(torch.quantile((points - center).norm(dim=-1), quantile))
    return center, max(radius, 1e-6)


def up_vector(name: str, points: torch.Tensor) -> torch.Tensor:
    """The scene's up direction [3]: a named axis, or "auto" = the axis along which the scene is thinnest
    (a splat of an object on a table is flatter than it is wide; pass --up when that guess is wrong)."""
    if name in UP_AXES:
        return torch.tensor(UP_AXES[name])
    if name != "auto":
        raise UserError(f"unknown --up '{name}'; use auto, {', '.join(UP_AXES)}")
    spread = torch.quantile(points, 0.95, dim=0) - torch.quantile(points, 0.05, dim=0)
    return torch.eye(3)[int(spread.argmin())]


def canonical_to_world(up: torch.Tensor) -> torch.Tensor:
    """Rotation [3, 3] taking the y-up frame of nst3d's view samplers to a frame whose y is `up`."""
    up = torch.nn.functional.normalize(up.float(), dim=0)
    y = torch.tensor([0.0, 1.0, 0.0])
    v = torch.linalg.cross(y, up)
    c = float(y @ up)
    if v.norm() < 1e-8:
        return torch.eye(3) if c > 0 else torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    vx = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return torch.eye(3) + vx + vx @ vx / (1 + c)


def frame_views(points: torch.Tensor, center: torch.Tensor, directions: torch.Tensor, up: torch.Tensor,
                width: int, height: int, fov_y_degrees: float = FOV_DEGREES, zoom: torch.Tensor | None = None,
                quantile: float = FRAMING_QUANTILE, margin: float = FRAME_MARGIN) -> Cameras:
    """Cameras looking along -directions [V, 3] (world) whose image the object fills: the `quantile` of the
    points' angular extents fits the frame (robust to floaters), centred. zoom: [V] distance multipliers."""
    tan_y = math.tan(math.radians(fov_y_degrees) / 2) / margin
    tan_x = tan_y * width / height
    views = len(directions)
    rotation = look_at(center[None] + directions, center, up)[:, :3, :3]  # rows: right, down, forward
    centers = center[None].repeat(views, 1)
    for _ in range(3):
        q = torch.einsum("vij,vnj->vni", rotation, points[None] - centers[:, None])  # [V, N, 3]
        distance = torch.quantile(distances_to_fit(points, centers, rotation, tan_x, tan_y), quantile,
                                  dim=1).clamp(min=1e-6)
        depth = (q[..., 2] + distance[:, None]).clamp(min=1e-6)
        ax, ay = q[..., 0] / depth, q[..., 1] / depth
        lo = torch.quantile(torch.stack([ax, ay]), 1 - quantile, dim=2)
        hi = torch.quantile(torch.stack([ax, ay]), quantile, dim=2)
        shift = (lo + hi) / 2 * distance  # [2, V]
        centers = centers + shift[0, :, None] * rotation[:, 0] + shift[1, :, None] * rotation[:, 1]
    if zoom is not None:
        distance = distance * zoom
    eyes = centers - rotation[:, 2] * distance[:, None]
    K = intrinsics(width, height, fov_y_degrees).repeat(views, 1, 1)
    return Cameras(look_at(eyes, centers, up), K, width, height)


@torch.no_grad()
def render_scene(scene: SplatScene, cameras: Cameras, background=(1.0, 1.0, 1.0), batch: int = 4) -> Render:
    """Render a scene's own SH colours from any cameras (over a plain background), batch views at a time
    (gsplat on CUDA, else the PyTorch path). Returns a Render on the CPU: rgb [V, 3, H, W], mask
    [V, 1, H, W], depth [V, 1, H, W]."""
    s = scene
    out = []
    for start in range(0, len(cameras), batch):
        cams = cameras[list(range(start, min(start + batch, len(cameras))))].to(s.means.device)
        bg = torch.tensor(background, dtype=torch.float32, device=s.means.device).expand(len(cams), 3)
        raster = rasterize(s.means, s.quats, s.scales, s.opacities, s.sh(), cams.world_to_cam, cams.K,
                           cams.width, cams.height, sh_degree=s.degree, backgrounds=bg)
        out.append(tuple(t.cpu() for t in _to_render(raster)))
    rgb, mask, depth = (torch.cat(column) for column in zip(*out, strict=True))
    return Render(rgb, mask, depth)


def still_camera(scene: SplatScene, size: int, elevation_degrees: float = 20.0, azimuth_degrees: float = 30.0,
                 up: str = "auto") -> Cameras:
    """One camera from the turntable's ring direction at `azimuth_degrees`, framed on the object itself (a
    turntable's shared distance, made for the widest view of the ring, can crop a single one)."""
    points = framing_points(scene)
    center, _ = robust_bounds(points)
    up_dir = up_vector(up, points)
    direction = orbit_directions(1, elevation_degrees, azimuth_degrees) @ canonical_to_world(up_dir).T
    return frame_views(points, center, direction, up_dir, size, size, quantile=STILL_QUANTILE, margin=STILL_MARGIN)


def turntable_cameras(scene: SplatScene, frames: int, size: int, up: str = "auto",
                      elevation_degrees: float = 20.0) -> Cameras:
    """An orbit of `frames` cameras around the object at one distance (the nearest at which every frame, looking
    at the robust centre, holds the robust extent), about the scene's up axis (see `up_vector`)."""
    points = framing_points(scene)
    center, _ = robust_bounds(points)
    up_dir = up_vector(up, points)
    directions = orbit_directions(frames, elevation_degrees) @ canonical_to_world(up_dir).T
    rotation = look_at(center[None] + directions, center, up_dir)[:, :3, :3]
    tan = math.tan(math.radians(FOV_DEGREES) / 2) / FRAME_MARGIN
    need = distances_to_fit(points, center[None].expand(frames, 3), rotation, tan, tan)
    distance = float(torch.quantile(need, FRAMING_QUANTILE, dim=1).max())
    return cameras_around(center, distance, directions, size, size, FOV_DEGREES, up_dir)


def _to_render(raster) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raster (channel-last) -> rgb [V, 3, H, W], mask [V, 1, H, W], depth [V, 1, H, W] (0 where the
    accumulated opacity is under DEPTH_ALPHA)."""
    rgb = raster.rgb.permute(0, 3, 1, 2).detach()
    mask = raster.alpha.permute(0, 3, 1, 2)
    depth = raster.depth.permute(0, 3, 1, 2) * (mask >= DEPTH_ALPHA)
    return rgb, mask, depth
