"""Held-out cameras for evaluation (never optimised on): anchors and partners turned a short and a long way
about the up axis through the object, framed by each backend's own `frame(directions) -> Cameras`.

A core module: nst3d.eval reports on these views, and backends (the splat backend's capture split) build them,
so both import it and neither imports the other. Cameras stay on the CPU (nst3d.cameras).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nst3d.backends.base import Render
from nst3d.cameras import Cameras, cameras_around, framing_distance
from nst3d.scales import surface_cameras, turn_about_up


@dataclass
class HeldOutViews:
    """Held-out cameras (never optimised on): `count` anchors and, for each, a partner turned
    `short_degrees` and one turned `long_degrees` about the up axis through the object (whole-object views) or
    through the anchor's surface point (close-ups: `view_height` is then the world length each view's height
    covers there)."""

    anchors: Cameras
    short: Cameras
    long: Cameras
    short_degrees: float = 5.0
    long_degrees: float = 45.0
    view_height: float | None = None

    @property
    def count(self) -> int:
        return len(self.anchors)

    def all(self) -> Cameras:
        """Cameras [3N]: anchors, then short partners, then long partners."""
        parts = (self.anchors, self.short, self.long)
        return Cameras(torch.cat([c.world_to_cam for c in parts]), torch.cat([c.K for c in parts]),
                       self.anchors.width, self.anchors.height)

    def split(self, render: Render) -> tuple[Render, Render, Render]:
        """A Render of `all()` -> (anchors, short partners, long partners)."""
        n = self.count
        return tuple(_slice(render, slice(k * n, (k + 1) * n)) for k in range(3))  # type: ignore[return-value]


def _slice(render: Render, index: slice) -> Render:
    pick = (lambda t: None if t is None else t[index])
    return Render(render.rgb[index], pick(render.mask), pick(render.depth))


def held_out_directions(count: int = 4, short_degrees: float = 5.0, long_degrees: float = 45.0,
                        elevations: tuple[float, ...] = (12.0, 32.0), start_degrees: float = 17.0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit view directions (from the object towards the camera, y up), each [N, 3]: anchors evenly spread
    in azimuth (offset so they do not coincide with an orbit starting at 0) at alternating elevations, and
    their partners turned by short_degrees and long_degrees."""
    azimuth = torch.deg2rad(torch.arange(count, dtype=torch.float32) * 360.0 / count + start_degrees)
    elevation = torch.deg2rad(torch.tensor([elevations[k % len(elevations)] for k in range(count)]))
    anchors = torch.stack([torch.cos(elevation) * torch.sin(azimuth), torch.sin(elevation),
                           torch.cos(elevation) * torch.cos(azimuth)], dim=-1)
    return anchors, turn_about_up(anchors, short_degrees), turn_about_up(anchors, long_degrees)


def held_out_views(frame: Callable[[torch.Tensor], Cameras], count: int = 4, short_degrees: float = 5.0,
                   long_degrees: float = 45.0) -> HeldOutViews:
    """Held-out cameras framed by the backend's `frame(directions [V, 3]) -> Cameras`."""
    anchors, short, long = held_out_directions(count, short_degrees, long_degrees)
    return HeldOutViews(frame(anchors), frame(short), frame(long), short_degrees, long_degrees)


def sphere_framer(center: torch.Tensor, radius: float, width: int, height: int,
                  fov_y_degrees: float = 40.0) -> Callable[[torch.Tensor], Cameras]:
    """A `frame` for held_out_views: cameras looking at center [3] from where a sphere of `radius` fits."""
    distance = framing_distance(radius, fov_y_degrees)
    return lambda directions: cameras_around(center, distance, directions, width, height, fov_y_degrees)


def close_up_views(points: torch.Tensor, normals: torch.Tensor, view_height: float, width: int, height: int,
                   fov_y_degrees: float = 40.0, short_degrees: float = 5.0, long_degrees: float = 45.0
                   ) -> HeldOutViews:
    """Close-up held-out views: anchors looking along -normals [N, 3] at surface points [N, 3] from where
    the image height covers view_height, partners turned about the up axis through each point (same distance).
    The backend picks the points (area-sampled and visible; see nst3d.scales)."""
    def frame(directions: torch.Tensor) -> Cameras:
        return surface_cameras(points, directions, view_height, width, height, fov_y_degrees)

    unit = torch.nn.functional.normalize(normals, dim=-1)
    short, long = turn_about_up(unit, short_degrees), turn_about_up(unit, long_degrees)
    return HeldOutViews(frame(unit), frame(short), frame(long), short_degrees, long_degrees, view_height)
