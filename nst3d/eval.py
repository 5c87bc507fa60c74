"""Evaluation on held-out views, for every 3D backend (mesh, splat, NeRF): written against the Backend
protocol's Render (rgb, mask, depth) and nst3d.cameras.Cameras only.

Public API (stable; other backends code against it):

- `HeldOutViews` (dataclass): `anchors`, `short`, `long`: Cameras [N] each; `short[k]` is `anchors[k]` turned
  `short_degrees` (~5) about the up axis through the object, `long[k]` turned `long_degrees` (~45).
  `all()` -> Cameras [3N] in the order anchors, short, long; `split(render)` -> (anchors, short, long)
  Renders.
- `held_out_directions(count=4, short_degrees=5.0, long_degrees=45.0, elevations=(12.0, 32.0),
  start_degrees=17.0)` -> (anchors [N, 3], short [N, 3], long [N, 3]) unit view directions (y up).
- `held_out_views(frame, count=4, short_degrees=5.0, long_degrees=45.0)` -> HeldOutViews, where
  `frame(directions [V, 3]) -> Cameras` is the backend's own framing (e.g. the mesh frames each view on the
  silhouette); `sphere_framer(center, radius, width, height, fov_y_degrees=40.0)` is a simple one.
- `backward_warp(rgb_j, depth_j, mask_j, cameras_j, depth_i, mask_i, cameras_i, depth_tolerance=0.01)`
  -> (warped [V, 3, H, W], valid [V, 1, H, W]): view j's colours seen from view i's pixels.
- `consistency_rmse(render_i, cameras_i, render_j, cameras_j, depth_tolerance=0.01)` -> (rmse, covisible
  fraction): masked RMSE in [0, 1] RGB over co-visible pixels, pooled over all pairs.
- `consistency(render, held)` -> {"short_range": float, "long_range": float, "covisible": {...}}, for a
  Render of `held.all()`.
- `evaluate_renders(stylized, content, held, objective)` -> {"style_distance": {"before", "after"},
  "content_distance", "consistency": {...}}: both Renders of `held.all()`.
- `per_view_baseline(content, objective, config, on_event=ignore, should_stop=None)` -> Render: each view
  of `content` stylized on its own by the image backend with the same objective (the 2D upper bound on
  style match, and the picture of what per-view stylization does to consistency).
- `evaluate(render, render_content, held, objective, *, baseline_config=None, on_event=ignore,
  should_stop=None)` -> the report's evaluation block: `evaluate_renders` figures, plus with a
  `baseline_config` "baseline" (the same figures for the per-view 2D baseline) and "floor" (consistency of
  the unstylized asset: the metric's own floor from resampling). `render`/`render_content`: Cameras -> Render.
- `evaluate_with_renders(...)` (same arguments) -> (that block, {"content", "stylized"[, "baseline"]: Render of
  `held.all()`}), for contact sheets without rendering twice.
- `baseline_config(steps, seed, stage="per-view baseline")` -> LoopConfig for the baseline (the image backend's
  learning rate, whatever the asset's own).
- `vgg_device(objective)` -> torch.device: where evaluation runs (see Devices below).
- `above_floor(figures, floor)` -> {"short_range", "long_range"}: consistency minus the floor (>= 0).
- `half_pixel_resample(render)` -> Render: the asset's pixels (where `render.mask` covers) resampled half a
  pixel diagonally (a 2x2 box), the background kept; with a baseline the report adds
  `half_pixel_style_distance` {"after", "baseline"}: both sides seen through the same resampling another
  camera or renderer would apply, which a per-view image's pixel-grid patterns do not survive (how much of
  the baseline's lead is pixel-aligned energy).

The consistency metric (issue 3, item 6): for each pair (i, j), every pixel of view i with a known depth is
lifted to 3D with view i's camera, projected into view j, and view j's colour and depth are sampled
bilinearly at that sub-pixel position (no other filtering). The pixel counts only if both views fully cover
it (masks >= 0.999, so silhouette pixels mixed with the background are left out) and the sampled depth
agrees with the projected depth within `depth_tolerance` (relative): an occluded point fails that test, and
so does a sample that straddles a depth edge. RMSE is over the co-visible pixels and the 3 channels, with
colours clamped to [0, 1] (what a viewer shows).

Devices: a Render's rgb, mask and depth share one device (nst3d.backends.base.Render checks it). Evaluation
runs on the objective's VGG device: evaluate_renders, per_view_baseline and evaluate_with_renders move every
Render they are given there once, on entry (`Render.to`), and the Renders they return live there; cameras
stay on the CPU and are moved where they meet pixels (backward_warp). No other function moves tensors.

Objectives: any nst3d.losses.Objective works; an objective with its own `style_distance(rgb, mask)` method
(e.g. several styles per region) is asked for that instead of nst3d.losses.style_distance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from nst3d.backends.base import Render
from nst3d.cameras import Cameras, cameras_around, framing_distance
from nst3d.events import EventSink, ignore
from nst3d.losses import content_distance, style_distance
from nst3d.stylize import LoopConfig, stylize

FULL_COVERAGE = 0.999


@dataclass
class HeldOutViews:
    """Held-out cameras (never optimised on): `count` anchors and, for each, a partner turned
    `short_degrees` and one turned `long_degrees` about the up axis through the object."""

    anchors: Cameras
    short: Cameras
    long: Cameras
    short_degrees: float = 5.0
    long_degrees: float = 45.0

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


def _turn(directions: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate directions [N, 3] about the y (up) axis by `degrees`."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return directions @ rotation.T


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
    return anchors, _turn(anchors, short_degrees), _turn(anchors, long_degrees)


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


@torch.no_grad()
def consistency_rmse(render_i: Render, cameras_i: Cameras, render_j: Render, cameras_j: Cameras,
                     depth_tolerance: float = 0.01) -> tuple[float, float]:
    """(RMSE over co-visible pixels of view i vs view j warped into it, in [0, 1] RGB and pooled over the
    pairs; fraction of view i's covered pixels that are co-visible). Pairs are (render_i[k], render_j[k])."""
    if render_i.depth is None or render_j.depth is None:
        raise ValueError("consistency needs depth: the backend's Render has none")
    warped, valid = backward_warp(render_j.rgb.clamp(0, 1), render_j.depth, render_j.mask, cameras_j,
                                  render_i.depth, render_i.mask, cameras_i, depth_tolerance)
    valid = valid.float()
    count = valid.sum()
    covered = (render_i.depth > 0).float().sum().clamp(min=1)
    if count == 0:
        return float("nan"), 0.0
    sq = (render_i.rgb.clamp(0, 1) - warped).pow(2) * valid
    return float((sq.sum() / (3 * count)).sqrt()), float(count / covered)


def consistency(render: Render, held: HeldOutViews, depth_tolerance: float = 0.01) -> dict[str, Any]:
    """Short- and long-range consistency RMSE for a Render of `held.all()` (partners warped into anchors)."""
    anchors, short, long = held.split(render)
    short_rmse, short_cov = consistency_rmse(anchors, held.anchors, short, held.short, depth_tolerance)
    long_rmse, long_cov = consistency_rmse(anchors, held.anchors, long, held.long, depth_tolerance)
    return {"short_range": short_rmse, "long_range": long_rmse,
            "covisible": {"short_range": short_cov, "long_range": long_cov}}


def _style_distance(objective: Any, rgb: torch.Tensor, mask: torch.Tensor | None) -> float:
    own = getattr(objective, "style_distance", None)
    if callable(own):
        return float(own(rgb, mask))
    return style_distance(objective.vgg, rgb, objective.target, mask)


def _union(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A [V, G, H, W] per-region mask -> [V, 1, H, W] (the asset's coverage)."""
    return None if mask is None else mask.sum(1, keepdim=True).clamp(max=1)


@torch.no_grad()
def _batched(fn: Callable[[slice], float], rgb: torch.Tensor, batch: int = 4) -> float:
    """Mean of fn(views slice) over batches of views (keeps VGG memory bounded), weighted by batch size."""
    total = 0.0
    for start in range(0, len(rgb), batch):
        part = rgb[start:start + batch]
        total += fn(slice(start, start + len(part))) * len(part)
    return total / len(rgb)


def _views_style_distance(objective: Any, rgb: torch.Tensor, mask: torch.Tensor | None) -> float:
    """Mean style distance of views rgb [V, 3, H, W] (mask [V, G, H, W] or None, on rgb's device, the VGG's),
    a few views at a time."""
    return _batched(lambda s: _style_distance(objective, rgb[s], None if mask is None else mask[s]), rgb)


def vgg_device(objective: Any) -> torch.device:
    """The device of the objective's VGG, where evaluation runs."""
    return objective.vgg.mean.device


@torch.no_grad()
def evaluate_renders(stylized: Render, content: Render, held: HeldOutViews, objective: Any,
                     depth_tolerance: float = 0.01) -> dict[str, Any]:
    """style_distance {before, after}, content_distance and consistency, from Renders of `held.all()` (on any
    device: both are moved to the VGG's)."""
    device = vgg_device(objective)
    stylized, content = stylized.to(device), content.to(device)
    after, before = stylized.rgb.clamp(0, 1), content.rgb.clamp(0, 1)
    mask = content.mask
    pick = (lambda m, s: None if m is None else m[s])
    return {
        "style_distance": {"before": _views_style_distance(objective, before, mask),
                           "after": _views_style_distance(objective, after, mask)},
        "content_distance": _batched(
            lambda s: content_distance(objective.vgg, after[s], before[s], objective.content_layer,
                                       pick(_union(mask), s)), after),
        "consistency": consistency(Render(after, _union(stylized.mask), stylized.depth), held,
                                   depth_tolerance),
        "views": len(after),
        "size": list(after.shape[-2:]),
    }


class _MaskedImage:
    """The image backend's pixels for one view, painted over the view's own background: the loss sees
    mask * pixels + (1 - mask) * content, as the 3D backends' renders are the asset over a background the
    stylization cannot change (a 2D baseline that also painted the background would not be a stylization of
    the asset, and its strokes around the silhouette would count in the masked style statistics)."""

    deferred = False

    def __init__(self, rgb: torch.Tensor, mask: torch.Tensor | None, lr: float | None):
        from nst3d.backends.image import ImageBackend

        self.image = ImageBackend(rgb, lr=lr)
        self.mask = None if mask is None else mask[None]
        self.key = "view"

    def parameters(self) -> list[dict[str, Any]]:
        return self.image.parameters()

    def train_views(self, step: int, generator: torch.Generator) -> _MaskedImage:
        return self

    def render(self, views: Any) -> Render:
        return Render(self._over_background(self.image.pixels), self.mask)

    def render_content(self, views: Any) -> Render:
        return Render(self.image.content, self.mask)

    def backward_image(self, views: Any, grad_rgb: torch.Tensor) -> None:
        raise NotImplementedError

    def _over_background(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return pixels
        coverage = _union(self.mask)
        return coverage * pixels + (1 - coverage) * self.image.content

    def result(self) -> torch.Tensor:
        """[3, H, W] the stylized view, clamped to [0, 1]."""
        return self._over_background(self.image.pixels.detach()).clamp(0, 1)[0]


BASELINE_LR = 0.02  # the image backend's default: the per-view baseline optimises pixels, whatever the asset


def baseline_config(steps: int, seed: int, stage: str = "per-view baseline") -> LoopConfig:
    """The per-view baseline's loop: the run's steps and seed at the image backend's learning rate."""
    return LoopConfig(steps=steps, lr=BASELINE_LR, seed=seed, stage=stage)


def per_view_baseline(content: Render, objective: Any, config: LoopConfig, on_event: EventSink = ignore,
                      should_stop: Callable[[], bool] | None = None) -> Render:
    """Each view of `content` stylized independently (image backend, the same objective, masks and steps;
    only the asset's pixels change, the background stays).

    Returns a Render on the VGG's device with the stylized rgb [V, 3, H, W] (clamped to [0, 1]) and content's
    mask and depth.
    """
    content = content.to(vgg_device(objective))
    out = []
    for index in range(len(content.rgb)):
        mask = None if content.mask is None else content.mask[index]
        view = _MaskedImage(content.rgb[index], mask, config.lr)
        stage = f"{config.stage} view {index + 1}/{len(content.rgb)}"
        view_config = replace(config, seed=config.seed + index, stage=stage)
        stylize(view, objective, view_config, on_event, should_stop)
        out.append(view.result())
    return Render(torch.stack(out), content.mask, content.depth)


def half_pixel_resample(render: Render) -> Render:
    """render.rgb [V, 3, H, W] sampled bilinearly half a pixel right and down (each pixel the mean of a 2x2
    block, the last row and column repeated) where render.mask ([V, G, H, W], the union of its channels)
    covers the asset; elsewhere as it was. Mask and depth are kept."""
    rgb = render.rgb
    padded = F.pad(rgb, (0, 1, 0, 1), mode="replicate")
    shifted = F.avg_pool2d(padded, 2, stride=1)
    coverage = _union(render.mask)
    resampled = shifted if coverage is None else coverage * shifted + (1 - coverage) * rgb
    return Render(resampled, render.mask, render.depth)


def above_floor(figures: dict[str, Any], floor: dict[str, Any]) -> dict[str, float]:
    """Consistency minus the unstylized floor, for short and long range (never below 0)."""
    return {key: max(0.0, figures[key] - floor[key]) for key in ("short_range", "long_range")}


def evaluate_with_renders(render: Callable[[Cameras], Render], render_content: Callable[[Cameras], Render],
                          held: HeldOutViews, objective: Any, *, baseline_config: LoopConfig | None = None,
                          on_event: EventSink = ignore, should_stop: Callable[[], bool] | None = None,
                          depth_tolerance: float = 0.01) -> tuple[dict[str, Any], dict[str, Render]]:
    """`evaluate`, also returning the Renders of `held.all()` it measured: {"content", "stylized"} and,
    with a baseline_config, "baseline" (for contact sheets), all on the VGG's device."""
    cameras = held.all()
    device = vgg_device(objective)
    with torch.no_grad():
        content = render_content(cameras).to(device)
        stylized = render(cameras).to(device)
    renders = {"content": content, "stylized": stylized}
    report = evaluate_renders(stylized, content, held, objective, depth_tolerance)
    report["held_out"] = {"count": held.count, "short_degrees": held.short_degrees,
                          "long_degrees": held.long_degrees}
    if baseline_config is None:
        return report, renders
    floor = consistency(Render(content.rgb, _union(content.mask), content.depth), held, depth_tolerance)
    baseline_render = per_view_baseline(content, objective, baseline_config, on_event, should_stop)
    renders["baseline"] = baseline_render
    baseline = evaluate_renders(baseline_render, content, held, objective, depth_tolerance)
    report["floor"] = {"consistency": floor}
    report["baseline"] = {key: baseline[key] for key in ("style_distance", "content_distance", "consistency")}
    report["consistency_above_floor"] = above_floor(report["consistency"], floor)
    report["baseline"]["consistency_above_floor"] = above_floor(baseline["consistency"], floor)
    report["baseline"]["steps"] = baseline_config.steps
    report["half_pixel_style_distance"] = {
        key: _views_style_distance(objective, half_pixel_resample(Render(r.rgb.clamp(0, 1), content.mask)).rgb,
                                   content.mask)
        for key, r in (("after", stylized), ("baseline", baseline_render))}
    return report, renders


def evaluate(render: Callable[[Cameras], Render], render_content: Callable[[Cameras], Render],
             held: HeldOutViews, objective: Any, *, baseline_config: LoopConfig | None = None,
             on_event: EventSink = ignore, should_stop: Callable[[], bool] | None = None,
             depth_tolerance: float = 0.01) -> dict[str, Any]:
    """The report's evaluation block on held-out views.

    render / render_content: Cameras -> Render of the stylized / original asset (with mask and depth).
    With baseline_config (a LoopConfig: steps, lr, seed), also "baseline" (the per-view 2D baseline's figures,
    with its consistency above the floor) and "floor" (the unstylized asset's consistency).
    """
    return evaluate_with_renders(render, render_content, held, objective, baseline_config=baseline_config,
                                 on_event=on_event, should_stop=should_stop, depth_tolerance=depth_tolerance)[0]
