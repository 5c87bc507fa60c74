"""One camera convention for the whole package: OpenCV pinhole cameras (x right, y down, z forward),
world-to-camera 4x4 matrices and 3x3 intrinsics, as gsplat uses. View samplers and converters live here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Cameras:
    """A batch of V pinhole cameras that share one image size.

    world_to_cam: [V, 4, 4] OpenCV extrinsics; K: [V, 3, 3] intrinsics in pixels.
    """

    world_to_cam: torch.Tensor
    K: torch.Tensor
    width: int
    height: int

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    def __getitem__(self, index) -> Cameras:
        index = [index] if isinstance(index, int) else index
        return Cameras(self.world_to_cam[index], self.K[index], self.width, self.height)

    @property
    def cam_to_world(self) -> torch.Tensor:
        """[V, 4, 4]"""
        return torch.linalg.inv(self.world_to_cam)

    @property
    def centers(self) -> torch.Tensor:
        """Camera positions in world space, [V, 3]."""
        return self.cam_to_world[:, :3, 3]

    def to(self, device) -> Cameras:
        return Cameras(self.world_to_cam.to(device), self.K.to(device), self.width, self.height)

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space ray origins and unit directions through pixel centres, each [V, H, W, 3].

        Directions are scaled so that a ray's parameter t equals camera-space depth z (not distance).
        """
        ys, xs = torch.meshgrid(torch.arange(self.height, dtype=torch.float32) + 0.5,
                                torch.arange(self.width, dtype=torch.float32) + 0.5, indexing="ij")
        K = self.K.float()
        x = (xs[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
        y = (ys[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
        dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [V, H, W, 3], z = 1
        c2w = self.cam_to_world.float()
        dirs = torch.einsum("vij,vhwj->vhwi", c2w[:, :3, :3], dirs_cam)
        origins = c2w[:, None, None, :3, 3].expand_as(dirs)
        return origins, dirs


def intrinsics(width: int, height: int, fov_y_degrees: float) -> torch.Tensor:
    """[3, 3] pinhole intrinsics for a vertical field of view, principal point at the centre."""
    focal = 0.5 * height / math.tan(math.radians(fov_y_degrees) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
    """World-to-camera [V, 4, 4] (OpenCV) for cameras at eye [V, 3] looking at target [V, 3] or [3]."""
    up = torch.tensor([0.0, 1.0, 0.0]) if up is None else up
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    up = up.to(eye).expand_as(forward)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Looking straight along `up`: pick another reference axis.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.tensor([0.0, 0.0, 1.0]).to(eye).expand_as(forward)
    right = torch.where(degenerate, torch.linalg.cross(forward, alt, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world coords
    w2c = torch.eye(4).to(eye).repeat(eye.shape[0], 1, 1)
    w2c[:, :3, :3] = rotation
    w2c[:, :3, 3] = -torch.einsum("vij,vj->vi", rotation, eye)
    return w2c


def fibonacci_directions(n: int, min_elevation: float = -0.35, max_elevation: float = 0.85) -> torch.Tensor:
    """n unit vectors spread evenly over a band of the sphere (y is up), [n, 3].

    Elevations are sin(latitude) bounds: the default band skips views from straight below.
    """
    i = torch.arange(n, dtype=torch.float32) + 0.5
    y = max_elevation - (max_elevation - min_elevation) * i / n
    golden = math.pi * (3.0 - math.sqrt(5.0))
    theta = golden * i
    r = torch.sqrt((1 - y * y).clamp(min=0))
    return torch.stack([r * torch.cos(theta), y, r * torch.sin(theta)], dim=-1)


def orbit_directions(n: int, elevation_degrees: float = 20.0, start_degrees: float = 0.0) -> torch.Tensor:
    """n unit vectors on a horizontal ring at one elevation (a turntable), [n, 3]."""
    azimuth = torch.deg2rad(torch.arange(n, dtype=torch.float32) * 360.0 / n + start_degrees)
    elevation = math.radians(elevation_degrees)
    return torch.stack([math.cos(elevation) * torch.sin(azimuth),
                        torch.full_like(azimuth, math.sin(elevation)),
                        math.cos(elevation) * torch.cos(azimuth)], dim=-1)


def jitter_directions(directions: torch.Tensor, degrees: float, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """Rotate each direction [V, 3] by a random angle of up to `degrees`, [V, 3]."""
    noise = torch.randn(directions.shape, generator=generator) * math.radians(degrees)
    tangent = noise - (noise * directions).sum(-1, keepdim=True) * directions
    return torch.nn.functional.normalize(directions + tangent, dim=-1)


def cameras_around(center: torch.Tensor, radius: float, directions: torch.Tensor, width: int, height: int,
                   fov_y_degrees: float = 40.0, up: torch.Tensor | None = None) -> Cameras:
    """Cameras on a sphere of `radius` around `center` [3], one per direction [V, 3], all looking at it."""
    eye = center[None] + radius * directions
    K = intrinsics(width, height, fov_y_degrees).repeat(len(directions), 1, 1)
    return Cameras(look_at(eye, center, up), K, width, height)


def distances_to_fit(points: torch.Tensor, centers: torch.Tensor, rotation: torch.Tensor, tan_x: float,
                     tan_y: float) -> torch.Tensor:
    """[V, N] for each view and point [N, 3]: the nearest distance back from centers [V, 3] along the view's
    forward axis (rotation [V, 3, 3], rows: right, down, forward) at which the point lies within the half-angle
    tangents tan_x, tan_y of a camera looking at that centre."""
    q = torch.einsum("vij,vnj->vni", rotation, points[None] - centers[:, None])  # [V, N, 3]
    return torch.maximum(q[..., 0].abs() / tan_x - q[..., 2], q[..., 1].abs() / tan_y - q[..., 2])


def framing_distance(radius: float, fov_y_degrees: float, margin: float = 1.1) -> float:
    """Distance at which a sphere of the given radius fills the field of view (times `margin`)."""
    return margin * radius / math.sin(math.radians(fov_y_degrees) / 2)


def opengl_to_opencv(cam_to_world_gl: torch.Tensor) -> torch.Tensor:
    """Blender/nerfstudio camera-to-world [V, 4, 4] (x right, y up, z back) -> OpenCV world-to-camera."""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0])).to(cam_to_world_gl)
    return torch.linalg.inv(cam_to_world_gl @ flip)
