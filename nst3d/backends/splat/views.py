"""Training and held-out views of a capture for the splat backend: the capture's up, its held-out split, the
depth each camera looks at, cameras orbited about that point, and a neighbour order for training batches."""

from __future__ import annotations

import math

import numpy as np
import torch

from nst3d.backends.base import Render
from nst3d.cameras import Cameras
from nst3d.errors import UserError


def capture_up(cameras: Cameras) -> torch.Tensor:
    """The world up of a capture: the mean of its cameras' up axes (OpenCV's -y), snapped to nothing."""
    up = -cameras.cam_to_world[:, :3, 1].mean(0)
    return torch.nn.functional.normalize(up, dim=0)


def split_capture(cameras: Cameras, size: int, held: int = 4) -> tuple[Cameras, Cameras]:
    """(held-out cameras, training pool): `held` cameras evenly spread through the capture are kept out."""
    n = len(cameras)
    if n < 2:
        raise UserError("the camera file has fewer than 2 cameras; give the capture's transforms.json")
    held = min(held, max(1, n // 5))
    held_index = sorted({int(i) for i in np.linspace(0, n - 1, held + 2)[1:-1].round()})
    pool_index = [i for i in range(n) if i not in held_index]
    return cameras[held_index], cameras[pool_index]


def looked_at_depth(render: Render) -> torch.Tensor:
    """[V] the median depth of what each view of `render` shows (0 where it shows nothing): the distance to
    the point a capture camera looks at."""
    out = []
    for depth, mask in zip(render.depth, render.mask, strict=True):
        seen = depth[(mask >= 0.5) & (depth > 0)]
        out.append(seen.median() if seen.numel() else depth.new_zeros(()))
    return torch.stack(out)


def orbit_about(cameras: Cameras, up: torch.Tensor, degrees: float, pivot_depth: torch.Tensor) -> Cameras:
    """The cameras orbited by `degrees` about the world up axis through the point each looks at, pivot_depth
    [V] along its optical axis (0: turned in place), so a partner 45 degrees round still faces the object."""
    a = math.radians(degrees)
    u = torch.nn.functional.normalize(up.float(), dim=0)
    ux = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    rotation = torch.eye(3) + math.sin(a) * ux + (1 - math.cos(a)) * ux @ ux  # Rodrigues, world frame
    c2w = cameras.cam_to_world.clone()
    centre, forward = c2w[:, :3, 3], c2w[:, :3, 2]  # OpenCV: the camera looks along +z
    pivot = centre + forward * pivot_depth.float()[:, None]
    c2w[:, :3, :3] = rotation @ c2w[:, :3, :3]
    c2w[:, :3, 3] = pivot + (centre - pivot) @ rotation.T
    return Cameras(torch.linalg.inv(c2w), cameras.K.clone(), cameras.width, cameras.height)


def neighbour_chain(points: torch.Tensor, generator: torch.Generator) -> list[int]:
    """An order of points [V, 3] (view directions or camera centres) that walks to the nearest unvisited one
    each time, from a random start: consecutive views (one training batch) look at overlapping surface."""
    left = list(range(len(points)))
    order = [left.pop(int(torch.randint(len(left), (1,), generator=generator)))]
    while left:
        distance = (points[left] - points[order[-1]]).norm(dim=-1)
        order.append(left.pop(int(distance.argmin())))
    return order
