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

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from nst3d.backends.base import Render
from nst3d.cameras import Cameras
from nst3d.events import EventSink, ignore
from nst3d.held_out import HeldOutViews as HeldOutViews  # re-exported: eval's public API
from nst3d.held_out import held_out_directions as held_out_directions  # re-exported
from nst3d.held_out import held_out_views as held_out_views  # re-exported
from nst3d.held_out import sphere_framer as sphere_framer  # re-exported
from nst3d.losses import content_distance, style_distance
from nst3d.stylize import LoopConfig, stylize
from nst3d.warp import FULL_COVERAGE as FULL_COVERAGE  # re-exported
from nst3d.warp import backward_warp as backward_warp  # re-exported


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
                          "long_degrees": held.long_degrees, "view_height": held.view_height}
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
