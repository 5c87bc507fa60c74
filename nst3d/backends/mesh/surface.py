"""Views of a mesh's surface at a scale in world units: area-sampled surface points that a camera placed along
the (jittered) outward normal actually sees, for the multi-scale training pool and the close-up held-out views.

Device rule: everything here is on the CPU (cameras and points are small); the Rasterizer's G-buffers are
read back to the CPU once per call.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nst3d.backends.mesh.asset import WorldMesh
from nst3d.backends.mesh.gbuffer import Rasterizer
from nst3d.cameras import Cameras, intrinsics, jitter_directions
from nst3d.scales import surface_cameras

#: A candidate point counts as visible when the ray from its camera hits within this share of the distance.
VISIBLE_TOLERANCE = 0.01
#: Candidates drawn per point wanted (the others are occluded or fail).
OVERSAMPLE = 4


def triangle_areas(mesh: WorldMesh) -> np.ndarray:
    """[F] world-space area of each triangle."""
    v, f = mesh.vertices, mesh.faces
    return 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)


def surface_area(mesh: WorldMesh) -> float:
    return float(triangle_areas(mesh).sum())


def area_sample(mesh: WorldMesh, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """count points uniformly by area over the mesh's triangles and their interpolated vertex normals (the
    outward normals as authored): ([count, 3], [count, 3] unit)."""
    v, f = mesh.vertices, mesh.faces
    area = triangle_areas(mesh)
    weights = torch.from_numpy(area / max(area.sum(), 1e-30))
    faces = torch.multinomial(weights, count, replacement=True, generator=generator).numpy()
    r1, r2 = torch.rand(2, count, generator=generator, dtype=torch.float64).numpy()
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], axis=1)[:, :, None]  # uniform over each triangle
    corners = f[faces]
    points = (v[corners] * bary).sum(1)
    normals = (mesh.normals[corners] * bary).sum(1)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(points).float(), torch.from_numpy(normals).float()


def centre_depth(rasterizer: Rasterizer, cameras: Cameras) -> torch.Tensor:
    """[V] the depth the ray through each camera's image centre hits (0: nothing), one ray per camera."""
    fov = 2 * math.degrees(math.atan(cameras.height / 2 / float(cameras.K[0, 1, 1])))
    one_pixel = Cameras(cameras.world_to_cam, intrinsics(1, 1, fov).repeat(len(cameras), 1, 1), 1, 1)
    return rasterizer.cast(one_pixel, normals=False).depth.reshape(-1).cpu()


def visible_surface_views(rasterizer: Rasterizer, count: int, view_height: float, size: int,
                          generator: torch.Generator, jitter_degrees: float = 0.0, fov_y_degrees: float = 40.0
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [n, 3], view directions [n, 3]) for n <= count views of view_height at area-sampled surface
    points, each looking along a direction within jitter_degrees of the outward normal, from where the ray
    through the image centre meets that point first (not hidden by other geometry)."""
    points, normals = area_sample(rasterizer.mesh, count * OVERSAMPLE, generator)
    directions = jitter_directions(normals, jitter_degrees, generator) if jitter_degrees else normals
    cameras = surface_cameras(points, directions, view_height, size, size, fov_y_degrees)
    distance = view_height / 2 / math.tan(math.radians(fov_y_degrees) / 2)
    seen = (centre_depth(rasterizer, cameras) - distance).abs() <= VISIBLE_TOLERANCE * distance
    keep = torch.nonzero(seen).reshape(-1)[:count]
    return points[keep], directions[keep]
