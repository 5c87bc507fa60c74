"""The NeRF backend: a trained nerfstudio nerfacto scene, stylized with its geometry frozen.

- Load (nst3d.integrations.nerfstudio.run): `load_run(config.yml)` reads a nerfstudio run (nerfacto and its
  variants) and builds the model on CUDA or CPU as a `StyleNerfactoModel` (nst3d.integrations.nerfstudio.model):
  same weights, density field and proposal networks frozen, a trainable appearance branch (a twin of the
  hash-grid MLP that feeds the colour head, plus the colour head) that starts equal to the original. Only the
  dataparser runs (for the cameras and the scene box); no images are loaded.
- Render: rays from nerfstudio's own camera model, through the model's own forward (collider, proposal
  sampler, field, renderers), in eval mode so that sampling is deterministic. Render gives rgb, mask
  (accumulation) and depth (expected depth as camera z).
- Deferred back-propagation (ARF): `render` runs without autograd; the loop takes d loss / d image;
  `backward_image` re-renders the view in patches of `patch_rays` rays with autograd and feeds each patch
  its slice of that gradient. The autograd graph never holds more than one patch, so its memory depends on
  the patch size, not on the view resolution, and the parameter gradients equal those of direct
  back-propagation (tests/test_nerf_stylize.py checks both).
- Frozen geometry is computed once: for the training views, the samples nerfacto's proposal networks place
  along each ray and their weights never change, so they are kept (up to `geometry_cache_mb`) and each step
  only evaluates the appearance branch on them; held-out and other views go through the model's forward.
- Views: a pool of the dataset's training cameras, rescaled to the working size, as captured and jittered by
  a small fixed rotation about the scene centre, and (crop_share) zoomed crops of them at the stroke scale's
  octaves (nerf_views.py; their content renders are kept); held-out cameras come from nst3d.eval around the same
  centre. The colour branch's hash grid limits the finest stroke: its finest level's cell (the scene box / its
  max resolution, nerfacto 2048) must be under a stroke's few pixels at the finest crops.
- Save: `save_run` writes a normal nerfstudio run (config.yml + step-N.ckpt) beside the original, which
  ns-viewer, ns-render and ns-export load (also nst3d.integrations.nerfstudio.run). This module keeps
  only the model-facing side: rendering, back-propagation, views; it never reads or writes a run's files.

Devices: the model, its renders (rgb, mask, depth) and kept geometry live on the model's device; nst3d Cameras
on the CPU become rays there; the pool's content renders are kept on the CPU and returned on the model's device.

nerfstudio is imported lazily: importing this module needs only torch (the CLI builds its help without it).
Splatfacto scenes: export them with `ns-export gaussian-splat` and stylize the PLY with `nst3d splat`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nst3d.backends.base import Render
from nst3d.backends.nerf_views import default_pool_size, joined, octave_crops, view_pool
from nst3d.cameras import Cameras, cameras_around, opengl_to_opencv
from nst3d.sampling import evenly_spaced_indices

PATCH_RAYS = 4096
#: memory for the frozen geometry (samples, weights) of training views, computed once per view; 0 = off
GEOMETRY_CACHE_MB = 1024.0
JITTER_DEGREES = 5.0
#: depth is reported (non-zero) where the accumulated opacity reaches this
DEPTH_MIN_ACCUMULATION = 0.5


# ----------------------------------------------------------------------------------------------- cameras
def to_nerfstudio(cameras: Cameras, device: torch.device | str = "cpu"):
    """nst3d (OpenCV) cameras -> nerfstudio Cameras [V] (OpenGL camera axes, camera-to-world 3x4)."""
    from nerfstudio.cameras.cameras import Cameras as NSCameras
    from nerfstudio.cameras.cameras import CameraType

    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    c2w = cameras.cam_to_world.float().cpu() @ flip
    K = cameras.K.float().cpu()
    return NSCameras(camera_to_worlds=c2w[:, :3, :4], fx=K[:, 0, 0:1], fy=K[:, 1, 1:2], cx=K[:, 0, 2:3],
                     cy=K[:, 1, 2:3], width=cameras.width, height=cameras.height,
                     camera_type=CameraType.PERSPECTIVE).to(device)


def from_nerfstudio(cameras, width: int, height: int) -> Cameras:
    """nerfstudio Cameras [V] -> nst3d Cameras [V] rendered at width x height (intrinsics rescaled per axis,
    so every camera keeps its field of view). Lens distortion is dropped: views are rendered as pinholes."""
    c2w = torch.eye(4).repeat(len(cameras), 1, 1)
    c2w[:, :3, :4] = cameras.camera_to_worlds.detach().float().cpu()
    sx = width / cameras.width.float().cpu()  # [V, 1]
    sy = height / cameras.height.float().cpu()
    K = torch.zeros(len(cameras), 3, 3)
    K[:, 0, 0] = (cameras.fx.float().cpu() * sx)[:, 0]
    K[:, 1, 1] = (cameras.fy.float().cpu() * sy)[:, 0]
    K[:, 0, 2] = (cameras.cx.float().cpu() * sx)[:, 0]
    K[:, 1, 2] = (cameras.cy.float().cpu() * sy)[:, 0]
    K[:, 2, 2] = 1.0
    return Cameras(opengl_to_opencv(c2w), K, width, height)


def working_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(W, H) with the longer side `size` and the aspect of width x height."""
    scale = size / max(width, height)
    return max(8, round(width * scale)), max(8, round(height * scale))


@dataclass
class SceneFrame:
    """Where the scene is, estimated from the training cameras: the point they look at (`center` [3]), the
    world `up` [3] (mean camera up), a reference horizontal direction `front` [3] (towards the first camera),
    their median `distance` to the centre and vertical field of view."""

    center: torch.Tensor
    up: torch.Tensor
    front: torch.Tensor
    distance: float
    fov_y_degrees: float

    @classmethod
    def from_cameras(cls, cameras: Cameras) -> SceneFrame:
        c2w = cameras.cam_to_world.double()
        centres, forward = c2w[:, :3, 3], c2w[:, :3, 2]
        # The point nearest to every optical axis (least squares); forward-facing rigs are nearly parallel,
        # so regularise towards the point at the median camera spacing in front of the cameras.
        projector = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]
        spread = (centres - centres.mean(0)).norm(dim=-1).median().clamp(min=1e-3)
        guess = centres.mean(0) + forward.mean(0) * 2 * spread
        weight = 1e-3
        lhs = projector.sum(0) + weight * torch.eye(3, dtype=torch.float64)
        rhs = (projector @ centres[:, :, None]).sum(0)[:, 0] + weight * guess
        center = torch.linalg.solve(lhs, rhs)
        up = torch.nn.functional.normalize(-c2w[:, :3, 1].mean(0), dim=0)  # OpenCV y points down
        to_first = centres[0] - center
        front = to_first - (to_first @ up) * up
        if front.norm() < 1e-6:
            front = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
        front = torch.nn.functional.normalize(front, dim=0)
        distance = float((centres - center).norm(dim=-1).median())
        fov = 2 * math.degrees(math.atan(0.5 * cameras.height / float(cameras.K[0, 1, 1])))
        return cls(center.float(), up.float(), front.float(), distance, fov)

    def to_world(self, directions: torch.Tensor) -> torch.Tensor:
        """Directions [V, 3] in nst3d's y-up sampler frame (z towards `front`) -> world directions [V, 3]."""
        right = torch.linalg.cross(self.up, self.front)
        basis = torch.stack([right, self.up, self.front], dim=1)  # columns: x, y, z of the sampler frame
        return directions.float() @ basis.T

    def framer(self, width: int, height: int):
        """A `frame(directions [V, 3]) -> Cameras` for nst3d.eval.held_out_views."""
        return lambda directions: cameras_around(self.center, self.distance, self.to_world(directions), width,
                                                 height, self.fov_y_degrees, up=self.up)


# --------------------------------------------------------------------------------------------- rendering
@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Deterministic sampling (no stratified jitter, no camera-pose tweaks, mean appearance embedding)."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _view_rays(model: Any, cameras: Cameras, index: int):
    """Flat RayBundle [H*W] of one view (row-major) on the model's device."""
    rays = to_nerfstudio(cameras[index], model.device).generate_rays(camera_indices=0, keep_shape=True)
    return rays.flatten()


def _render_view(model: Any, cameras: Cameras, index: int, chunk: int) -> Render:
    """One view, differentiable if grad is enabled. rgb [1, 3, H, W], mask [1, 1, H, W], depth [1, 1, H, W]."""
    rays = _view_rays(model, cameras, index)
    rgb, accumulation, depth = [], [], []
    for start in range(0, len(rays), chunk):
        part = rays[start:start + chunk]
        out = model(part)
        rgb.append(out["rgb"])
        accumulation.append(out["accumulation"])
        # expected depth is along the unit ray; camera z = distance / |direction before normalising|
        depth.append(out["expected_depth"] / part.metadata["directions_norm"])
    h, w = cameras.height, cameras.width
    image = lambda parts, c: torch.cat(parts).view(h, w, c).permute(2, 0, 1)[None]  # noqa: E731
    mask = image(accumulation, 1).detach()
    z = image(depth, 1).detach()
    return Render(image(rgb, 3), mask, torch.where(mask >= DEPTH_MIN_ACCUMULATION, z, torch.zeros_like(z)))


def render(model: Any, cameras: Cameras, chunk: int = 1 << 15, original: bool = False) -> Render:
    """Render every view [V] (autograd follows torch's grad mode); `original` for the unstylized colours."""
    appearance = model.original() if original else contextlib.nullcontext()
    with eval_mode(model), appearance:
        views = [_render_view(model, cameras, v, chunk) for v in range(len(cameras))]
    return Render(torch.cat([r.rgb for r in views]), torch.cat([r.mask for r in views]),
                  torch.cat([r.depth for r in views]))


def backward_patches(model: Any, cameras: Cameras, grad_rgb: torch.Tensor, patch_rays: int = PATCH_RAYS) -> None:
    """Deferred back-propagation: accumulate d loss / d params into .grad, given grad_rgb [V, 3, H, W] =
    d loss / d rendered rgb, by re-rendering patches of `patch_rays` rays with autograd. Every patch is
    back-propagated, even one whose gradient is zero (masked-out background): telling which are would read
    the gradient on the host, a device sync per patch."""
    with eval_mode(model), torch.enable_grad():
        for v in range(len(cameras)):
            rays = _view_rays(model, cameras, v)
            grad = grad_rgb[v].to(model.device).permute(1, 2, 0).reshape(-1, 3)
            for start in range(0, len(rays), patch_rays):
                out = model(rays[start:start + patch_rays])
                torch.autograd.backward(out["rgb"], grad[start:start + patch_rays])


@dataclass
class GeometryPiece:
    """Frozen geometry of a run of rays (a patch): nerfacto's final samples, their weights and normalised
    positions, the original appearance's view-dependent colour part, and the per-ray coverage and depth.
    Density and the original are frozen, so these never change during stylization; only the colours of the
    samples do."""

    samples: Any  # RaySamples [n, S]
    positions: torch.Tensor  # [n, S, 3], as the hash grids read them
    view_dependent: torch.Tensor  # [n, S, 3], StyleNerfactoField.view_dependent_rgb
    weights: torch.Tensor  # [n, S, 1]
    accumulation: torch.Tensor  # [n, 1]
    depth: torch.Tensor  # [n, 1] camera z (0 where accumulation < DEPTH_MIN_ACCUMULATION)

    @property
    def nbytes(self) -> int:
        tensors = [self.positions, self.view_dependent, self.weights, self.accumulation, self.depth]
        tensors += [t for t in vars(self.samples.frustums).values() if isinstance(t, torch.Tensor)]
        tensors += [t for t in vars(self.samples).values() if isinstance(t, torch.Tensor)]
        return sum(t.untyped_storage().nbytes() for t in tensors)


def view_geometry(model: Any, cameras: Cameras, index: int, patch_rays: int) -> Iterator[GeometryPiece]:
    """One view's geometry, patch by patch (patch_rays rays each, row-major), from the model's own collider,
    proposal sampler and density field. A generator: only the patch being used is in memory."""
    rays = _view_rays(model, cameras, index)
    for start in range(0, len(rays), patch_rays):
        with torch.no_grad(), eval_mode(model), model.original():
            part = model.collider(rays[start:start + patch_rays])
            samples, _, _ = model.proposal_sampler(part, density_fns=model.density_fns)
            density, base_features = model.field.get_density(samples)
            positions = model.field._sample_locations.detach()
            view_dependent = model.field.view_dependent_rgb(samples, base_features)
            weights = samples.get_weights(density)
            accumulation = model.renderer_accumulation(weights=weights)
            z = model.renderer_expected_depth(weights=weights, ray_samples=samples) / part.metadata["directions_norm"]
            depth = torch.where(accumulation >= DEPTH_MIN_ACCUMULATION, z, torch.zeros_like(z))
        yield GeometryPiece(samples, positions, view_dependent, weights, accumulation, depth)


def shade(model: Any, piece: GeometryPiece) -> torch.Tensor:
    """Stylized colours [n, 3] of a geometry piece: the stylized branch and colour head on the cached samples,
    composited by nerfacto's renderer, exactly as the model's forward would (autograd follows grad mode)."""

    with eval_mode(model):
        features = model.field.style_features(piece.positions)
        rgb = model.field.stylized_rgb(piece.samples, features, piece.view_dependent)
        return model.renderer_rgb(rgb=rgb, weights=piece.weights)


# ------------------------------------------------------------------------------------------------ backend
class NerfViews:
    """The views of one step: cameras [V] and their indices in the backend's view pool. `key` is None: the
    backend caches the content renders of pool views itself (small: rgb, mask and depth images), and the loop
    recomputes their VGG features, which costs little next to a NeRF render."""

    key = None

    def __init__(self, cameras: Cameras, pool_index: list[int] | None = None):
        self.cameras = cameras
        self.pool_index = pool_index

    def __len__(self) -> int:
        return len(self.cameras)


class NerfBackend:
    """Stylize a StyleNerfactoModel's appearance (nst3d.backends.base.Backend, deferred).

    train_cameras: the dataset's training cameras at the working size (nst3d Cameras [N]); the optimisation
    draws views_per_step views per step from a pool of `pool_size` of them (see view_pool).
    """

    deferred = True

    def __init__(self, model: Any, train_cameras: Cameras, frame: SceneFrame, views_per_step: int = 1,
                 jitter_degrees: float = JITTER_DEGREES, patch_rays: int = PATCH_RAYS, lr: float | None = None,
                 pool_size: int | None = None, seed: int = 0, geometry_cache_mb: float = GEOMETRY_CACHE_MB,
                 chunk_rays: int | None = None, stroke_scale: float | None = None, crop_share: float = 0.0):
        self.model = model
        self.train_cameras = train_cameras
        self.frame = frame
        self.views_per_step = views_per_step
        self.patch_rays = patch_rays
        self.chunk_rays = chunk_rays or patch_rays  # renders without autograd too: memory set by the patch
        self.lr = lr
        size = pool_size or default_pool_size(len(train_cameras))
        crops = int(size * crop_share)  # zoomed crops at the stroke scale's octaves (nerf_views.octave_crops)
        self.pool = view_pool(train_cameras, frame, size - crops, jitter_degrees, seed)
        self.octaves, self.crops = octave_crops(train_cameras, frame, stroke_scale, crops, seed)
        if self.crops is not None:
            self.pool = joined(self.pool, self.crops)
        self._content: dict[int, Render] = {}  # pool index -> content render (CPU)
        self.geometry_budget = geometry_cache_mb * 2**20
        self._geometry: dict[int, list[GeometryPiece]] = {}  # pool index -> geometry (model device)
        self.geometry_bytes = 0

    def geometry(self, pool_index: int) -> Iterator[GeometryPiece]:
        """A pool view's frozen geometry, patch by patch: from the cache, else computed (and cached when the
        whole view fits in the budget; otherwise each patch is dropped once used)."""
        if pool_index in self._geometry:
            yield from self._geometry[pool_index]
            return
        kept: list[GeometryPiece] | None = []
        size = 0
        for piece in view_geometry(self.model, self.pool, pool_index, self.patch_rays):
            if kept is not None:
                size += piece.nbytes
                kept = kept + [piece] if self.geometry_bytes + size <= self.geometry_budget else None
            yield piece
        if kept is not None:
            self._geometry[pool_index] = kept
            self.geometry_bytes += size

    def _pool_render(self, views: NerfViews) -> Render:
        """Stylized render of pool views from their geometry (autograd follows grad mode)."""
        h, w = views.cameras.height, views.cameras.width
        image = lambda parts, c: torch.cat(parts).view(h, w, c).permute(2, 0, 1)[None]  # noqa: E731
        out = []
        for index in views.pool_index:
            rgb, accumulation, depth = [], [], []
            for piece in self.geometry(index):
                rgb.append(shade(self.model, piece))
                accumulation.append(piece.accumulation)
                depth.append(piece.depth)
            out.append(Render(image(rgb, 3), image(accumulation, 1), image(depth, 1)))
        return Render(torch.cat([r.rgb for r in out]), torch.cat([r.mask for r in out]),
                      torch.cat([r.depth for r in out]))

    def parameters(self) -> list[dict[str, Any]]:
        return [{"params": self.model.appearance_parameters()} | ({"lr": self.lr} if self.lr else {})]

    def train_views(self, step: int, generator: torch.Generator) -> NerfViews:
        """views_per_step distinct views of the pool."""
        count = min(self.views_per_step, len(self.pool))
        index = torch.randperm(len(self.pool), generator=generator)[:count].tolist()
        return NerfViews(self.pool[index], index)

    def render(self, views: NerfViews | Cameras) -> Render:
        """The stylized appearance, without autograd (deferred): rgb [V, 3, H, W], mask, depth."""
        with torch.no_grad():
            if _in_pool(views):
                return self._pool_render(views)
            return render(self.model, _cameras(views), self.chunk_rays)

    def render_content(self, views: NerfViews | Cameras) -> Render:
        """The original appearance; pool views are rendered once and kept."""
        if not isinstance(views, NerfViews) or views.pool_index is None:
            with torch.no_grad():
                return render(self.model, _cameras(views), self.chunk_rays, original=True)
        missing = [i for i in dict.fromkeys(views.pool_index) if i not in self._content]
        if missing:
            with torch.no_grad():
                fresh = render(self.model, self.pool[missing], self.chunk_rays, original=True)
            for k, i in enumerate(missing):
                self._content[i] = Render(fresh.rgb[k:k + 1].cpu(), fresh.mask[k:k + 1].cpu(),
                                          fresh.depth[k:k + 1].cpu())
        parts = [self._content[i] for i in views.pool_index]
        device = self.model.device
        return Render(torch.cat([r.rgb for r in parts]).to(device), torch.cat([r.mask for r in parts]).to(device),
                      torch.cat([r.depth for r in parts]).to(device))

    def render_with_grad(self, views: NerfViews | Cameras) -> Render:
        """Direct (non-deferred) differentiable render: memory grows with the view's pixels."""
        with torch.enable_grad():
            if _in_pool(views):
                return self._pool_render(views)
            return render(self.model, _cameras(views), self.patch_rays)

    def backward_image(self, views: NerfViews | Cameras, grad_rgb: torch.Tensor) -> None:
        """Deferred back-propagation of grad_rgb [V, 3, H, W] in patches of patch_rays rays (every patch, with
        no host read of the gradient: see backward_patches)."""
        if not _in_pool(views):
            backward_patches(self.model, _cameras(views), grad_rgb, self.patch_rays)
            return
        with torch.enable_grad():
            for v, index in enumerate(views.pool_index):
                grad = grad_rgb[v].to(self.model.device).permute(1, 2, 0).reshape(-1, 3)
                start = 0
                for piece in self.geometry(index):
                    part = grad[start:start + len(piece.weights)]
                    start += len(piece.weights)
                    torch.autograd.backward(shade(self.model, piece), part)


def content_palette(backend: NerfBackend, count: int = 4) -> torch.Tensor:
    """The scene's colours [3, N] (covered pixels of a few training views), for colour preservation."""
    train = backend.train_cameras
    content = backend.render_content(train[evenly_spaced_indices(len(train), count).tolist()])
    covered = content.mask[:, 0] > 0.5
    if not covered.any():
        return content.rgb[0]
    return content.rgb.permute(1, 0, 2, 3)[:, covered]


def _cameras(views: NerfViews | Cameras) -> Cameras:
    return views.cameras if isinstance(views, NerfViews) else views


def _in_pool(views: NerfViews | Cameras) -> bool:
    return isinstance(views, NerfViews) and views.pool_index is not None


class TrainedRun(Protocol):
    """What backend_for_run needs of a loaded run (nst3d.integrations.nerfstudio.run.LoadedRun)."""

    model: Any  # StyleNerfactoModel
    train_cameras: Any  # nerfstudio Cameras [N] of the training split


def backend_for_run(run: TrainedRun, size: int, views_per_step: int = 1, jitter_degrees: float = JITTER_DEGREES,
                    patch_rays: int = PATCH_RAYS, lr: float | None = None, pool_size: int | None = None,
                    seed: int = 0, geometry_cache_mb: float = GEOMETRY_CACHE_MB, stroke_scale: float | None = None,
                    crop_share: float = 0.0) -> NerfBackend:
    """A NerfBackend over a loaded run's training cameras at working size `size` (longer side, px)."""
    first = run.train_cameras[0:1]
    width, height = working_size(int(first.width), int(first.height), size)
    train = from_nerfstudio(run.train_cameras, width, height)
    return NerfBackend(run.model, train, SceneFrame.from_cameras(train), views_per_step, jitter_degrees,
                       patch_rays, lr, pool_size, seed, geometry_cache_mb, stroke_scale=stroke_scale,
                       crop_share=crop_share)
