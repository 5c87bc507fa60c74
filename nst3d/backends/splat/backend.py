"""The Gaussian-splat backend: colours are the parameters; means, scales, rotations and opacities are fixed.

Parameters: an offset to each Gaussian's base colour (the SH DC term as RGB, c = SH_C0 * f_dc + 0.5), free
per Gaussian or read from a 3D ColorField, and, with `view_dependent`, its higher-order SH coefficients;
otherwise those are zeroed in the output (the style is the same from every side, as a painting is). The
original full-SH appearance is the content target.

Consistency: a trained splat builds its surface from many overlapping, semi-transparent discs, so a colour
pattern finer than the discs can only come from blends that change with the view angle. ConsistentObjective
(consistency.py) adds a term that compares each training batch's neighbouring views where they see the same
surface (warped by depth, as nst3d.eval measures it), which steers the optimiser to patterns that hold from
every side.

Views: a pool of training cameras is set up once, either orbiting the object (Fibonacci directions with
jitter and random zoom, framed on robust percentile bounds, since splat scenes have floaters) or the
capture's own cameras (inside-out scenes; read by capture.py). Pool views are rendered
over white, as the report and contact sheets show the splat: VGG features near the silhouette see the
background, and on the donut training over random colours left the held-out style distance over white 1.4x
the training one. `white_share` < 1 draws a random colour for the other views' backgrounds.
With the tiled compositor (on a CPU, or a GPU where gsplat's kernels cannot load: see engine.py) every pool view
is *planned* once (projection, tile lists and compositing weights do not depend on colour: see render.plan), so a
step costs one sparse gather/scatter per view; with gsplat (CUDA) each step renders them.
Batches carry a `key`, so the loop caches their content features.

The scene and its framing live in scene.py, the capture's held-out split and view order in views.py, the
optional 3D colour field in color_field.py; this module is the backend that optimises over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from nst3d.backends.base import Render, pool_backgrounds
from nst3d.backends.splat.capture import capture_cameras as capture_cameras  # re-exported: its old home
from nst3d.backends.splat.close import (
    close_cameras,
    octave_shares,
    scene_diagonal,
    surface_points,
    zoomed_capture,
)
from nst3d.backends.splat.color_field import ColorField, resolution_for
from nst3d.backends.splat.consistency import ConsistentObjective as ConsistentObjective  # re-exported
from nst3d.backends.splat.consistency import consistency_loss as consistency_loss  # re-exported
from nst3d.backends.splat.consistency import pair_warp
from nst3d.backends.splat.engine import GSPLAT, TORCH, choose_engine
from nst3d.backends.splat.ply import SH_C0
from nst3d.backends.splat.render import Plan, covariances, plan, rasterize, shade
from nst3d.backends.splat.scene import (
    FOV_DEGREES,
    SplatScene,
    _to_render,
    canonical_to_world,
    frame_views,
    framing_points,
    render_scene,
    robust_bounds,
    up_vector,
)
from nst3d.backends.splat.scene import cleanup_mask as cleanup_mask  # re-exported for the splat command
from nst3d.backends.splat.scene import still_camera as still_camera  # re-exported for `nst3d render`
from nst3d.backends.splat.scene import turntable_cameras as turntable_cameras  # re-exported for `nst3d render`
from nst3d.backends.splat.views import capture_up, looked_at_depth, neighbour_chain, orbit_about, split_capture
from nst3d.cameras import Cameras, fibonacci_directions, jitter_directions
from nst3d.color import keep_content_chroma
from nst3d.errors import UserError
from nst3d.events import Cancelled, ignore
from nst3d.held_out import HeldOutViews, close_up_views, held_out_views
from nst3d.scales import CLOSE_UP_FRACTION, octave_heights, stroke_scale_or_default


@dataclass
class ViewBatch:
    """Training views set up once. key: batch number (the loop caches content features by it). Every tensor
    here, the cameras' included, is on the backend's device: drawn on the CPU (seeded, so a seed gives the same
    views on any device) and moved once, in SplatBackend._prepare."""

    key: int
    cameras: Cameras
    backgrounds: torch.Tensor  # [V, 3]
    content: torch.Tensor  # [V, 3, H, W] the original splat over the backgrounds
    mask: torch.Tensor  # [V, 1, H, W] accumulated opacity
    depth: torch.Tensor  # [V, 1, H, W]
    plan: Plan | None  # the CPU renderer's colour-independent half (None on CUDA: gsplat renders each step)
    warps: list[tuple[int, int, torch.Tensor, torch.Tensor]]  # (i, j, grid [H, W, 2], valid [1, H, W]): view
    # i's pixels in view j, for the multi-view consistency term (geometry is fixed, so computed once)


class SplatBackend:
    """Stylize a SplatScene's colours (see the module docstring). Implements nst3d.backends.base.Backend.

    Devices: the scene, the parameters and the ViewBatches live on `device`; framing (points, centre, up) and
    the view pool are computed on the CPU and moved in `_prepare`; `render_cameras` takes cameras on any device
    and returns CPU tensors, as `stylized_sh` does. `train_views` and `render` make no host syncs.
    """

    deferred = False

    def __init__(self, scene: SplatScene, size: int = 256, views_per_step: int = 2, pool_size: int = 48,
                 view_dependent: bool = False, capture: Cameras | None = None, up: str = "auto",
                 lr: float | None = None, init: str = "content", device: torch.device | str = "cpu",
                 seed: int = 0, jitter_degrees: float = 12.0, zoom_range: tuple[float, float] = (0.8, 1.1),
                 field_resolution: int = 0, field_levels: int = 4, white_share: float = 1.0, held_out: int = 4,
                 on_event: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 stroke_scale: float | None = None, close_share: float = 0.0):
        """held_out: capture cameras kept out of the pool for the report (a capture only, at most a fifth);
        field_resolution: 0 (default) gives every Gaussian a free colour offset; > 0 paints the offsets into
        a ColorField of that finest resolution instead (smoother, coarser strokes; on the donut it matched the
        style less well for the same consistency); white_share: share of pool views rendered over white (the
        others over a random colour each); stroke_scale: the finest view height (world units; default
        nst3d.scales' share of the bounding diagonal); close_share: the share of the pool made of close views at
        the octaves down to it (close.py: surface views for orbits, zoomed capture cameras with a capture)."""
        self.device = torch.device(device)
        self.scene = scene.to(self.device)
        self.size = size
        self.lr = lr
        self.engine = choose_engine(self.device, on_event or ignore)  # GSPLAT or TORCH (the compositor)
        self.covars = covariances(self.scene.quats, self.scene.scales) if self.engine == TORCH else None
        self.view_dependent = view_dependent and scene.degree > 0
        if view_dependent and scene.degree == 0 and on_event is not None:
            on_event({"event": "warning", "text": "--view-dependent: this splat has no higher SH bands (degree 0), "
                      "so its colours are the same from every side; stylizing the base colours only"})
        self.points = framing_points(scene, seed)
        self.center, self.radius = robust_bounds(self.points)
        self.diagonal = scene_diagonal(scene)
        self.stroke_scale = stroke_scale_or_default(stroke_scale, self.diagonal)
        self.octaves = octave_heights(self.stroke_scale, self.diagonal)
        self.capture = capture
        self.up = capture_up(capture) if capture is not None and up == "auto" else up_vector(up, self.points)
        self.rotation = canonical_to_world(self.up)
        generator = torch.Generator().manual_seed(seed)
        base = SH_C0 * self.scene.sh_dc + 0.5
        if init == "noise":
            base = torch.rand(base.shape, generator=generator).to(base)
        elif init != "content":
            raise ValueError(f"unknown init {init!r}; use content or noise")
        self.start_colors = base.clone()  # [N, 3] colour of the DC term before optimising
        if field_resolution > 0:
            margin = 0.02 * (self.points.max(0).values - self.points.min(0).values)
            lo = torch.quantile(self.points, 0.005, dim=0) - margin
            hi = torch.quantile(self.points, 0.995, dim=0) + margin
            self.field: ColorField | None = ColorField(self.scene.means, lo.to(self.device), hi.to(self.device),
                                                       field_resolution, field_levels)
            needed = resolution_for(float((hi - lo).max()), self.stroke_scale, size)
            if field_resolution < needed and on_event is not None:
                on_event({"event": "warning", "text": f"--color-field {field_resolution}: its finest voxels are "
                          f"coarser than a stroke at --stroke-scale {self.stroke_scale:.3g}; {needed} holds those"})
            self.free_colors = None
        else:
            self.field = None
            self.free_colors = torch.nn.Parameter(torch.zeros_like(base))  # [N, 3] per-Gaussian offsets
        self.keep_chroma = False  # --preserve-color luminance: applied to what is exported
        self.sh_rest = torch.nn.Parameter(self.scene.sh_rest.clone()) if self.view_dependent else None
        close_points = round(pool_size * close_share / views_per_step) if close_share > 0 else 0
        close_count = min(close_points * views_per_step, pool_size - 1)
        pool_size -= close_count
        if capture is not None:
            self.held_capture, pool = split_capture(capture, size, held_out)
            if len(self.held_capture) < held_out and on_event is not None:
                on_event({"event": "warning", "text": f"--held-out {held_out}: a capture of {len(capture)} cameras "
                          f"spares {len(self.held_capture)} for the report (a fifth); the report uses those"})
            pool = pool[torch.randperm(len(pool), generator=generator)[:pool_size].tolist()]
            pool = pool[neighbour_chain(pool.centers, generator)]
        else:
            directions = jitter_directions(fibonacci_directions(pool_size), jitter_degrees, generator)
            directions = directions[neighbour_chain(directions, generator)]  # a batch's views overlap
            zoom = zoom_range[0] + (zoom_range[1] - zoom_range[0]) * torch.rand(pool_size, generator=generator)
            pool = self.frame(directions, zoom=zoom)
        self.batches: list[ViewBatch] = []
        self._prepare_pool(pool, views_per_step, white_share, generator, on_event, should_stop)
        self.whole_batches = len(self.batches)
        if close_count > 0:
            close = self._close_pool(close_count, views_per_step, generator)
            if close is not None:
                self._prepare_pool(close, views_per_step, white_share, generator, on_event, should_stop)
        if on_event is not None:
            on_event({"event": "stage_done", "stage": "preparing views"})
        self._order: list[int] = []
        self.last_views: ViewBatch | None = None
        self._plan_cache: tuple[Any, list[tuple[Cameras, Plan]]] | None = None
        self._check_visible()

    # ---------------------------------------------------------------------------------- set-up (once)

    def frame(self, directions: torch.Tensor, width: int | None = None, height: int | None = None,
              zoom: torch.Tensor | None = None) -> Cameras:
        """Cameras around the object for y-up view directions [V, 3] (eval's convention), framed on the
        robust bounds (for the training pool, held-out views and turntables)."""
        world = directions.float() @ self.rotation.T
        return frame_views(self.points, self.center, world, self.up, width or self.size, height or self.size,
                           zoom=zoom)

    def _prepare_pool(self, pool: Cameras, views_per_step: int, white_share: float, generator: torch.Generator,
                      on_event: Callable[[dict], None] | None, should_stop: Callable[[], bool] | None) -> None:
        """Set up `pool` as ViewBatches of views_per_step consecutive views, appended to self.batches."""
        backgrounds = pool_backgrounds(len(pool), white_share, generator)
        starts = range(0, len(pool), views_per_step)
        for number, start in enumerate(starts):
            if should_stop is not None and should_stop():
                raise Cancelled()
            index = list(range(start, min(start + views_per_step, len(pool))))
            self.batches.append(self._prepare(len(self.batches), pool[index], backgrounds[index]))
            if on_event is not None:
                on_event({"event": "progress", "stage": "preparing views", "step": number + 1,
                          "total": len(starts), "unit": "batch"})

    def _close_pool(self, count: int, group: int, generator: torch.Generator) -> Cameras | None:
        """`count` close training views at the octaves (finest first, the finest getting any remainder): surface
        views in groups of `group` (orbits), or zoomed crops of the pool's capture cameras."""
        cams, depth, mask = self._whole_pool()
        if self.capture is None:
            return close_cameras(self.scene, self.octaves, octave_shares(count // group, self.octaves), group,
                                 self.size, generator, cams, depth)
        crops = zoomed_capture(cams, depth, mask, self.octaves, count, generator)
        return None if crops is None else crops[neighbour_chain(crops.centers, generator)]

    def _whole_pool(self) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
        """The whole-object pool's cameras, depth and mask [C, 1, H, W], on the CPU (set-up and evaluation only)."""
        whole = self.batches[: self.whole_batches]
        cams = Cameras(torch.cat([b.cameras.world_to_cam for b in whole]).cpu(),
                       torch.cat([b.cameras.K for b in whole]).cpu(), self.size, self.size)
        return cams, torch.cat([b.depth for b in whole]).cpu(), torch.cat([b.mask for b in whole]).cpu()

    def close_ups(self, count: int = 4, seed: int = 1) -> HeldOutViews | None:
        """Close-up held-out views: CLOSE_UP_FRACTION of the bounding diagonal high, looking along the normal at
        surface points drawn like the training ones but from another seed (never trained on); None when the
        whole-object views see no point."""
        generator = torch.Generator().manual_seed(10_007 + seed)
        height = CLOSE_UP_FRACTION * self.diagonal
        cams, depth, _ = self._whole_pool()
        points, normals = surface_points(self.scene, count, height, generator, cams, depth)
        if len(points) == 0:
            return None
        return close_up_views(points, normals, height, self.size, self.size, FOV_DEGREES)

    def held_out(self, count: int = 4) -> HeldOutViews:
        """Held-out views: eval's orbit anchors and partners, or for a capture the cameras kept out of the
        pool, each with partners orbited about the world's up axis through the point it looks at."""
        if self.capture is None:
            return held_out_views(self.frame, count)
        anchors = self.held_capture[list(range(min(count, len(self.held_capture))))]
        pivots = looked_at_depth(self.render_cameras(anchors, "original"))
        return HeldOutViews(anchors, orbit_about(anchors, self.up, 5.0, pivots),
                            orbit_about(anchors, self.up, 45.0, pivots), 5.0, 45.0)

    def _prepare(self, key: int, cameras: Cameras, backgrounds: torch.Tensor) -> ViewBatch:
        s = self.scene
        cams = cameras.to(self.device)
        bg = backgrounds.to(self.device)
        if self.engine == TORCH:
            pl = plan(s.means, s.quats, s.scales, s.opacities, cams.world_to_cam, cams.K, cams.width, cams.height,
                      covars=self.covars)
            raster = shade(pl, s.sh(), s.means, cams.world_to_cam, s.degree, bg)
        else:
            pl = None
            raster = rasterize(s.means, s.quats, s.scales, s.opacities, s.sh(), cams.world_to_cam, cams.K,
                               cams.width, cams.height, sh_degree=s.degree, backgrounds=bg, engine=GSPLAT)
        content, mask, depth = _to_render(raster)
        warps = [(i, j, *pair_warp(cams, depth, mask, i, j)) for i in range(len(cams)) for j in range(len(cams))
                 if i != j]
        return ViewBatch(key, cams, bg, content, mask, depth, pl, warps)

    def _check_visible(self) -> None:
        covered = torch.stack([b.mask.mean() for b in self.batches]).mean()
        if float(covered) < 1e-3:
            raise UserError("the training cameras see (almost) none of the splat; check --cameras (a nerfstudio "
                            "export may need --dataparser-transforms) or --up")

    # ----------------------------------------------------------------------------------- the protocol

    def parameters(self) -> list[dict[str, Any]]:
        lr = self.lr or 0.02
        groups = self.field.param_groups(lr) if self.field is not None else [{"params": [self.free_colors], "lr": lr}]
        if self.sh_rest is not None:
            # Higher SH bands vary the colour around the base: a smaller step keeps them from taking over.
            groups.append({"params": [self.sh_rest], "lr": (self.lr or 0.02) * 0.25})
        return groups

    def train_views(self, step: int, generator: torch.Generator) -> ViewBatch:
        """The next pool batch, in a fresh random order each pass over the pool. Free colours are first put
        back into [0, 1] (projected gradient descent), so the training render is the exported splat's (an
        original colour already outside that range may stay where it is)."""
        if self.free_colors is not None:
            with torch.no_grad():
                start = self.start_colors
                current = torch.clamp(start + self.free_colors, start.clamp(max=0.0), start.clamp(min=1.0))
                self.free_colors.copy_(current - start)
        if not self._order:  # a CPU generator: no device sync
            self._order = torch.randperm(len(self.batches), generator=generator).tolist()
        return self.batches[self._order.pop()]

    def render(self, views: ViewBatch) -> Render:
        """The current colours (unclamped, so saturated Gaussians keep their gradients) over the batch's
        backgrounds."""
        rgb = self._shade(views.cameras, views.plan, self.colors(), views.backgrounds, clamp=False)
        self.last_views = views  # for ConsistentObjective
        return Render(rgb, views.mask, views.depth)

    def render_content(self, views: ViewBatch) -> Render:
        return Render(views.content, views.mask, views.depth)

    def backward_image(self, views: Any, grad_rgb: torch.Tensor) -> None:
        raise NotImplementedError("the splat backend back-propagates directly")

    # -------------------------------------------------------------------------------------- helpers

    def base_colors(self) -> torch.Tensor:
        """Current colour of each Gaussian's DC term [N, 3] (differentiable, unclamped)."""
        offset = self.field() if self.field is not None else self.free_colors
        return self.start_colors + offset

    def colors(self) -> torch.Tensor:
        """SH coefficients [N, K, 3] of the current parameters (K = 1 unless view-dependent)."""
        dc = (self.base_colors() - 0.5) / SH_C0
        if self.sh_rest is None:
            return dc[:, None]
        return torch.cat([dc[:, None], self.sh_rest], dim=1)

    def _shade(self, cameras: Cameras, pl: Plan | None, colors: torch.Tensor, backgrounds: torch.Tensor,
               clamp: bool = True) -> torch.Tensor:
        degree = int(math.isqrt(colors.shape[1])) - 1
        s = self.scene
        if pl is None:  # gsplat
            raster = rasterize(s.means, s.quats, s.scales, s.opacities, colors, cameras.world_to_cam, cameras.K,
                               cameras.width, cameras.height, sh_degree=degree, backgrounds=backgrounds,
                               engine=GSPLAT, clamp=clamp)
        else:
            raster = shade(pl, colors, s.means, cameras.world_to_cam, degree, backgrounds, clamp=clamp)
        return raster.rgb.permute(0, 3, 1, 2)

    @torch.no_grad()
    def stylized_sh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What goes into the file: (sh_dc [N, 3], sh_rest [N, K - 1, 3]); colours clamped to [0, 1], the
        higher bands the optimised ones or zeros. Gaussians whose colour did not move keep their exact DC.
        On the CPU (see `_stylized_sh` for the same on the backend's device)."""
        dc, rest = self._stylized_sh()
        return dc.cpu(), rest.cpu()

    @torch.no_grad()
    def _stylized_sh(self) -> tuple[torch.Tensor, torch.Tensor]:
        current = self.base_colors().detach()
        if self.keep_chroma:
            current = keep_content_chroma(current.T, (SH_C0 * self.scene.sh_dc + 0.5).T).T
        dc = (current.clamp(0, 1) - 0.5) / SH_C0
        unchanged = (current == SH_C0 * self.scene.sh_dc + 0.5).all(-1)
        dc = torch.where(unchanged[:, None], self.scene.sh_dc, dc)
        rest = self.sh_rest.detach() if self.sh_rest is not None else torch.zeros_like(self.scene.sh_rest)
        return dc, rest

    @torch.no_grad()
    def render_cameras(self, cameras: Cameras, which: str = "stylized", background=(1.0, 1.0, 1.0),
                       batch: int = 4) -> Render:
        """Render any cameras: "stylized" (what the output file holds) or "original". Returns rgb over
        `background`, mask (accumulated opacity) and depth, on the CPU."""
        if which == "stylized":
            dc, rest = self._stylized_sh()
            colors = torch.cat([dc[:, None], rest], dim=1)
        elif which == "original":
            colors = self.scene.sh()
        else:
            raise ValueError(f"unknown render {which!r}; use stylized or original")
        if self.engine == GSPLAT:
            return render_scene(replace(self.scene, sh_dc=colors[:, 0], sh_rest=colors[:, 1:]), cameras,
                                background, batch)
        degree = int(math.isqrt(colors.shape[1])) - 1
        out = []
        for cams, pl in self._plans(cameras, batch):
            bg = torch.tensor(background, dtype=torch.float32, device=self.device).expand(len(cams), 3)
            raster = shade(pl, colors, self.scene.means, cams.world_to_cam, degree, bg)
            out.append(tuple(t.cpu() for t in _to_render(raster)))
        rgb, mask, depth = (torch.cat(column) for column in zip(*out, strict=True))
        return Render(rgb, mask, depth)

    def _plans(self, cameras: Cameras, batch: int) -> list[tuple[Cameras, Plan]]:
        """Compositor plans for these cameras (moved to the device), `batch` views each; the last camera set's are
        kept (the evaluation renders the same views stylized and original)."""
        key = (cameras.world_to_cam.cpu().numpy().tobytes(), cameras.K.cpu().numpy().tobytes(), cameras.width,
               cameras.height, batch)
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        s = self.scene
        plans = []
        for start in range(0, len(cameras), batch):
            cams = cameras[list(range(start, min(start + batch, len(cameras))))].to(self.device)
            plans.append((cams, plan(s.means, s.quats, s.scales, s.opacities, cams.world_to_cam, cams.K, cams.width,
                                     cams.height, covars=self.covars)))
        self._plan_cache = (key, plans)
        return plans
