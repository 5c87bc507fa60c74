"""Scales in world units: the stroke scale, the training views' octaves, and cameras that look at a surface
point from where the view's height covers a given length.

The stroke scale (`--stroke-scale`, in the asset's units) is the finest scale the texture must carry: the height
of the closest training views. Training views come in octaves from the whole object down to it, each view
seeing the surface at its octave's scale (about `view_height / size` world units per pixel), so VGG sees the
surface at the scale the style was analysed at, and a stroke has the same size in world units wherever it is
(a scene shares one stroke scale). A close-up held-out view covers CLOSE_UP_FRACTION of the bounding diagonal.

A core module (cameras and numbers only): backends and the evaluation import it. Everything here is on the CPU.
"""

from __future__ import annotations

import math

import torch

from nst3d.cameras import Cameras, intrinsics, look_at

#: The default stroke scale, as a share of the asset's (or scene's) bounding diagonal.
STROKE_FRACTION = 0.2
#: A close-up held-out view's height, as a share of the bounding diagonal.
CLOSE_UP_FRACTION = 0.2
#: Octaves stop before this share of the bounding diagonal: coarser than that, the whole-object views carry it.
WHOLE_FRACTION = 0.6


def bounding_diagonal(points: torch.Tensor) -> float:
    """The length of the axis-aligned bounding box's diagonal of points [N, 3]."""
    return float((points.max(0).values - points.min(0).values).norm())


def stroke_scale_or_default(stroke_scale: float | None, diagonal: float) -> float:
    """The given stroke scale, or STROKE_FRACTION of the bounding diagonal."""
    return float(stroke_scale) if stroke_scale else STROKE_FRACTION * diagonal


def octave_heights(stroke_scale: float, diagonal: float) -> list[float]:
    """View heights (world units) of the close octaves, finest first: stroke_scale, 2x, 4x, ... below
    WHOLE_FRACTION of the diagonal (whole-object views cover the rest). Never empty: a stroke scale as large as
    the object still gets its own octave."""
    heights = [stroke_scale]
    while heights[-1] * 2 < WHOLE_FRACTION * diagonal:
        heights.append(heights[-1] * 2)
    return heights


def world_style_levels(view_heights: torch.Tensor, stroke_scale: float) -> torch.Tensor:
    """[V] the style image's scale each training view asks for so that a stroke has one size on the surface: 1
    for views one stroke scale high, 1/2 an octave up, ... (exact powers of two, so they name the objective's
    targets exactly); whole-object views (height 0) one octave beyond the coarsest close one (1/2 without)."""
    close = view_heights > 0
    octave = torch.round(torch.log2(view_heights.clamp(min=1e-30) / stroke_scale)).clamp(min=0)
    beyond = float(octave[close].max()) + 1 if bool(close.any()) else 1.0
    return torch.where(close, 2.0 ** -octave, torch.tensor(2.0 ** -beyond))


def distance_for_height(view_height: float, fov_y_degrees: float) -> float:
    """How far from a surface point a camera must be for its image height to cover view_height there."""
    return view_height / 2 / math.tan(math.radians(fov_y_degrees) / 2)


def surface_cameras(points: torch.Tensor, normals: torch.Tensor, view_height: float | torch.Tensor, width: int,
                    height: int, fov_y_degrees: float = 40.0) -> Cameras:
    """Cameras at points [V, 3] + normals [V, 3] * distance, looking back at the points, each image's height
    covering view_height (a float, or [V]) at the point. Normals need not be unit length."""
    heights = torch.as_tensor(view_height, dtype=torch.float32).expand(len(points))
    distance = heights / 2 / math.tan(math.radians(fov_y_degrees) / 2)
    eyes = points + torch.nn.functional.normalize(normals, dim=-1) * distance[:, None]
    K = intrinsics(width, height, fov_y_degrees).repeat(len(points), 1, 1)
    return Cameras(look_at(eyes, points), K, width, height)


def turn_about_up(directions: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate directions [N, 3] about the y (up) axis by `degrees`."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return directions @ rotation.T


def zoomed(cameras: Cameras, factor: float | torch.Tensor, centers: torch.Tensor | None = None) -> Cameras:
    """The same cameras with focal lengths times `factor` (float or [V]), the principal point kept, or moved so
    that centers [V, 2] (pixels of the original image) land on the principal point: a crop of the original
    view, `factor` x magnified, at the same resolution."""
    K = cameras.K.clone().float()
    factor = torch.as_tensor(factor, dtype=torch.float32).expand(len(cameras))
    principal = K[:, :2, 2].clone()
    if centers is not None:
        principal = principal + (principal - centers.float()) * factor[:, None]
    K[:, 0, 0] *= factor
    K[:, 1, 1] *= factor
    K[:, :2, 2] = principal
    return Cameras(cameras.world_to_cam, K, cameras.width, cameras.height)
