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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from nst3d.backends.base import Render, pool_backgrounds
from nst3d.backends.splat.capture import capture_cameras as capture_cameras  # re-exported: its old home
from nst3d.backends.splat.consistency import ConsistentObjective as ConsistentObjective  # re-exported
from nst3d.backends.splat.consistency import consistency_loss as consistency_loss  # re-exported
from nst3d.backends.splat.consistency import pair_warp
from nst3d.backends.splat.engine import GSPLAT, TORCH, choose_engine
from nst3d.backends.splat.ply import SH_C0, SplatPly
from nst3d.backends.splat.render import Plan, covariances, plan, rasterize, shade
from nst3d.cameras import (
    Cameras,
    cameras_around,
    distances_to_fit,
    fibonacci_directions,
    intrinsics,
    jitter_directions,
    look_at,
    orbit_directions,
)
from nst3d.color import keep_content_chroma
from nst3d.errors import UserError
from nst3d.events import Cancelled, ignore
from nst3d.held_out import HeldOutViews, held_out_views

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


class ColorField:
    """Colour offsets on sparse multi-resolution 3D grids, read (trilinearly) at each Gaussian's centre: the
    --color-field option.

    Gaussians in the same small region share their colour change and the coarse levels build strokes larger
    than a Gaussian. (Measured on the donut: it does not by itself make views more consistent, since large
    overlapping discs still blend differently per view, and it matches the style less well than free colours
    under the same consistency term; so it is off by default.) Only voxels that hold a Gaussian's corner are
    stored: level l has at most 8 N entries, whatever its resolution. Levels: `finest`, finest / 2, ... (up to
    `levels`, each at least 2 voxels a side) over the box lo..hi [3].
    """

    def __init__(self, positions: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, finest: int, levels: int = 4):
        span = (hi - lo).clamp(min=1e-9)
        self.corners: list[tuple[torch.Tensor, torch.Tensor]] = []  # per level: index [N, 8], weight [N, 8]
        self.values: list[torch.nn.Parameter] = []  # per level: [U, 3] colour offsets
        offsets = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], device=positions.device)
        self.resolutions = [finest >> level for level in range(levels) if finest >> level >= 2] or [2]
        for res in self.resolutions:
            u = ((positions - lo) / span * (res - 1)).clamp(0, res - 1)  # [N, 3] in voxel units
            base = u.floor().long().clamp(max=res - 2)
            frac = u - base
            corner = base[:, None] + offsets  # [N, 8, 3]
            flat = (corner[..., 0] * res + corner[..., 1]) * res + corner[..., 2]
            used, index = torch.unique(flat, return_inverse=True)
            w = torch.where(offsets.bool(), frac[:, None], 1 - frac[:, None]).prod(-1)  # [N, 8]
            self.corners.append((index, w))
            self.values.append(torch.nn.Parameter(torch.zeros(len(used), 3, device=positions.device)))

    def __call__(self) -> torch.Tensor:
        """Colour offsets [N, 3]."""
        total = 0
        for (index, w), values in zip(self.corners, self.values, strict=True):
            picked = torch.index_select(values, 0, index.reshape(-1)).view(*index.shape, 3)  # [N, 8, 3]
            total = total + (picked * w[..., None]).sum(1)
        return total

    def param_groups(self, lr: float, coarse_scale: float = 0.5) -> list[dict[str, Any]]:
        """One group per level; each coarser level steps `coarse_scale` times smaller (its voxels touch many
        Gaussians, so a full step moves large areas at once)."""
        return [{"params": [v], "lr": lr * coarse_scale**level} for level, v in enumerate(self.values)]


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
                 on_event: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None):
        """held_out: capture cameras kept out of the pool for the report (a capture only, at most a fifth);
        field_resolution: 0 (default) gives every Gaussian a free colour offset; > 0 paints the offsets into
        a ColorField of that finest resolution instead (smoother, coarser strokes; on the donut it matched the
        style less well for the same consistency); white_share: share of pool views rendered over white (the
        others over a random colour each)."""
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
            self.free_colors = None
        else:
            self.field = None
            self.free_colors = torch.nn.Parameter(torch.zeros_like(base))  # [N, 3] per-Gaussian offsets
        self.keep_chroma = False  # --preserve-color luminance: applied to what is exported
        self.sh_rest = torch.nn.Parameter(self.scene.sh_rest.clone()) if self.view_dependent else None
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
        backgrounds = pool_backgrounds(len(pool), white_share, generator)
        self.batches: list[ViewBatch] = []
        starts = range(0, len(pool), views_per_step)
        for key, start in enumerate(starts):
            if should_stop is not None and should_stop():
                raise Cancelled()
            index = list(range(start, min(start + views_per_step, len(pool))))
            self.batches.append(self._prepare(key, pool[index], backgrounds[index]))
            if on_event is not None:
                on_event({"event": "progress", "stage": "preparing views", "step": key + 1,
                          "total": len(starts), "unit": "batch"})
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
