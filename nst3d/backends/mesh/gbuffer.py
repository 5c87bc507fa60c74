"""Rasterize once, shade every step: one ray per (sub-)pixel is cast into the fixed geometry (open3d's
RaycastingScene (Embree) on the CPU, nst3d's PyTorch rasterizer on CUDA or without open3d: see raster.py) and
the hits are kept in a G-buffer; renders then only sample the textures through it with `grid_sample`
(differentiable, CPU or CUDA), as pytorch3d/nvdiffrast split rasterize and shade. Training steps go one further:
their samples, fixed for a pool batch, become one sparse matrix (resolve.py).

Anti-aliasing: textures are sampled trilinearly from a mip chain at each pixel's level of detail (the
texel footprint of the pixel, from the triangle's UV-to-world area ratio, depth and slant), and views can be
rasterized at `supersample` x the resolution and area-averaged (smooth silhouettes and material borders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nst3d.backends.mesh.asset import WorldMesh
from nst3d.backends.mesh.raster import choose_engine, pixel_directions, rasterize_camera
from nst3d.cameras import Cameras

MIN_SLANT = 0.25  # |cos| floor for the level of detail: grazing triangles are blurred, not erased


@dataclass
class GBuffer:
    """A batch of V views of H x W pixels, rasterized once. Background pixels: face = slot = -1, depth = 0.
    All fields live on the device of the Rasterizer that made it.

    face:     [V, H, W] int64   triangle index into the WorldMesh (-1 = background)
    bary:     [V, H, W, 2]      barycentrics (u, v) of the hit: point = (1-u-v) p0 + u p1 + v p2
                                (bary, uv, normal, lod and stretch are undefined on the background: check face/slot)
    depth:    [V, H, W]         camera-space z (OpenCV) of the hit, 0 on the background
    normal:   [V, H, W, 3]      world-space unit shading normal (vertex normals interpolated), facing the camera
                                (None when the rasterize call did not ask for normals)
    slot:     [V, H, W] int64   texture slot of the hit (-1 = background)
    uv:       [V, H, W, 2]      texture coordinates of the hit, image convention, in [0, 1] (repeats wrapped)
    lod:      [V, H, W]         log2 of the longer side of the pixel's footprint in UV units (a slanted surface
                                stretches it along the slope): for a texture of N x N texels the mip level is
                                lod + log2(N)
    stretch:  [V, H, W]         how much longer that side is than the footprint's mean side (the square root of
                                its area), in log2 units (>= 0; 0 facing the camera): lod - stretch is the mean side's
    coverage: [V, H, W]         share of the pixel covered by the mesh (1 or 0 without supersampling)
    """

    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor | None
    slot: torch.Tensor
    uv: torch.Tensor
    lod: torch.Tensor
    stretch: torch.Tensor
    coverage: torch.Tensor

    @property
    def hit(self) -> torch.Tensor:
        """[V, H, W] bool"""
        return self.face >= 0

    def to(self, device) -> GBuffer:
        return GBuffer(**{k: None if getattr(self, k) is None else getattr(self, k).to(device)
                          for k in self.__dataclass_fields__})


def scale_cameras(cameras: Cameras, factor: int) -> Cameras:
    """The same cameras with `factor` x the pixels (for supersampling)."""
    K = cameras.K.clone().float()
    K[:, :2] *= factor
    return Cameras(cameras.world_to_cam, K, cameras.width * factor, cameras.height * factor)


class Rasterizer:
    """The fixed geometry ready for ray casting, plus the per-triangle data shading needs.

    Device rule: every G-buffer lives on `device` (the backend's device; cameras may be anywhere). The engine
    is raster.choose_engine(device) unless given: "open3d" (a RaycastingScene on the CPU, results moved to
    `device`) or "torch" (nst3d.backends.mesh.raster on `device` itself).
    """

    def __init__(self, mesh: WorldMesh, device: torch.device | str = "cpu", engine: str | None = None):
        self.mesh = mesh
        self.device = torch.device(device)
        self.engine = engine or choose_engine(self.device)
        if self.engine == "open3d":
            import open3d as o3d

            self.scene = o3d.t.geometry.RaycastingScene()
            self.scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)),
                                     o3d.core.Tensor(mesh.faces.astype(np.uint32)))
        elif self.engine != "torch":
            raise ValueError(f"unknown rasterizer engine {self.engine!r}; use open3d or torch")
        v, f = mesh.vertices, mesh.faces
        cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        world_area = 0.5 * np.linalg.norm(cross, axis=1)
        uv = mesh.uv
        e1, e2 = uv[f[:, 1]] - uv[f[:, 0]], uv[f[:, 2]] - uv[f[:, 0]]  # np.cross of 2-vectors fails on numpy 2
        uv_area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        face_normal = cross / np.maximum(2 * world_area[:, None], 1e-30)
        # UV area per unit of world area: how many texels a square of surface holds (log2, per triangle).
        density = np.where(world_area > 1e-30, uv_area / np.maximum(world_area, 1e-30), 1e-12)
        # Per-triangle rows gathered with one index_select per view (advanced indexing is slow on CPU):
        # corner UVs (6), corner normals (9), face normal (3), log2 density (1), slot (1).
        face_table = torch.from_numpy(np.concatenate([
            uv[f].reshape(-1, 6), mesh.normals[f].reshape(-1, 9), face_normal,
            np.log2(np.maximum(density, 1e-12))[:, None], mesh.face_slot[:, None].astype(np.float64)],
            axis=1).astype(np.float32))
        background = torch.zeros(1, face_table.shape[1])
        background[0, 19] = -1  # the row misses read: slot -1
        self.face_table = torch.cat([face_table, background]).to(self.device)
        self.wraps = bool(uv.size and (uv.min() < 0 or uv.max() > 1))
        self.vertices = torch.from_numpy(v.astype(np.float32)).to(self.device)
        self.faces = torch.from_numpy(f.astype(np.int64)).to(self.device)

    def cast(self, cameras: Cameras, normals: bool = True) -> GBuffer:
        """One ray through each pixel centre of each view (views cast one at a time: bounded memory)."""
        parts = []
        for index in range(len(cameras)):
            cam = cameras[index]
            t, ids, bary, dirs = self._cast_open3d(cam) if self.engine == "open3d" else self._cast_torch(cam)
            parts.append(self._shade_data(cam, t, ids, bary, dirs, normals))
        return GBuffer(**{k: None if getattr(parts[0], k) is None else torch.cat([getattr(p, k) for p in parts])
                          for k in GBuffer.__dataclass_fields__})

    def _cast_open3d(self, cam: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(depth [P], face [P] int64 (-1 = miss), bary [P, 2], world directions with camera z = 1 [P, 3])."""
        import open3d as o3d

        # open3d's pinhole rays match Cameras.rays(): pixel centres, directions with camera z = 1, so
        # t_hit is the camera-space depth.
        rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
            o3d.core.Tensor(cam.K[0].double().cpu().numpy()),
            o3d.core.Tensor(cam.world_to_cam[0].double().cpu().numpy()), cam.width, cam.height).reshape((-1, 6))
        result = self.scene.cast_rays(rays)
        ids = result["primitive_ids"].numpy().astype(np.int64)
        ids[ids == self.scene.INVALID_ID] = -1
        return tuple(torch.from_numpy(x).to(self.device) for x in (
            result["t_hit"].numpy(), ids, result["primitive_uvs"].numpy(), rays.numpy()[:, 3:].copy()))

    def _cast_torch(self, cam: Cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As _cast_open3d, by the PyTorch rasterizer on the rasterizer's device."""
        hits = rasterize_camera(self.vertices, self.faces, cam.world_to_cam[0], cam.K[0], cam.width, cam.height)
        dirs = pixel_directions(cam.world_to_cam[0], cam.K[0], cam.width, cam.height, self.device)
        return hits.depth, hits.face, hits.bary, dirs

    def _shade_data(self, cam: Cameras, t: torch.Tensor, ids: torch.Tensor, bary: torch.Tensor,
                    dirs: torch.Tensor, normals: bool) -> GBuffer:
        h, w = cam.height, cam.width
        hit = ids >= 0
        face = ids
        safe = torch.where(hit, ids, len(self.face_table) - 1)  # misses read the last row: slot -1, zeros
        rows = self.face_table.index_select(0, safe)  # [P, 21]
        b1, b2 = bary[:, 0:1], bary[:, 1:2]
        uv = _interpolate(rows, b1, b2, 0, 2)
        if self.wraps:
            uv = torch.where((uv < 0) | (uv > 1), uv - uv.floor(), uv)
        unit_dirs = F.normalize(dirs, dim=-1)
        normal = None
        if normals:
            normal = F.normalize(_interpolate(rows, b1, b2, 6, 3), dim=-1)
            normal = torch.where((normal * unit_dirs).sum(-1, keepdim=True) > 0, -normal, normal).view(1, h, w, 3)
        slant = (rows[:, 15:18] * unit_dirs).sum(-1).abs().clamp(min=MIN_SLANT)
        depth = torch.where(hit, t, 0.0)
        focal = float(cam.K[0, 0, 0]) * float(cam.K[0, 1, 1])
        # Pixel footprint on the surface: z / f world units across the slope, z / (f * slant) along it, so
        # (z / f)^2 / slant world units^2; times the UV density -> UV area. The level of detail follows the
        # longer side (log2 of the side = half the area's, less half log2(slant)): a slanted view is never
        # undersampled along the slope. With the area's side it was, and the optimiser wrote patterns into the
        # texture that alias into the style only from grazing views (a purple-green mosaic on a cube face seen
        # head-on: BENCHMARKS.md, "The level of detail follows the footprint's longer side").
        log_area = rows[:, 18] + torch.log2(depth.square().clamp(min=1e-24) / slant) - math.log2(focal)
        stretch = -0.5 * torch.log2(slant)
        return GBuffer(face=face.view(1, h, w), bary=bary.view(1, h, w, 2), depth=depth.view(1, h, w),
                       normal=normal, slot=rows[:, 19].long().view(1, h, w), uv=uv.view(1, h, w, 2),
                       lod=(0.5 * log_area + stretch).view(1, h, w), stretch=stretch.view(1, h, w),
                       coverage=hit.float().view(1, h, w))

    def rasterize(self, cameras: Cameras, supersample: int = 1, normals: bool = True
                  ) -> tuple[GBuffer, GBuffer | None]:
        """(G-buffer at the cameras' resolution, the supersampled one or None).

        With supersample s > 1, rays are cast at s x s sub-pixels; the returned base-resolution buffer takes
        each pixel's data from one covered sub-pixel (its coverage is the covered share, its lod is adjusted
        to the bigger pixel), so one ray cast gives both.
        """
        if supersample <= 1:
            return self.cast(cameras, normals), None
        fine = self.cast(scale_cameras(cameras, supersample), normals)
        return coarsen(fine, supersample), fine


def _interpolate(rows: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """Barycentric interpolation of per-corner values stored as rows[:, start : start + 3 * width]."""
    c0 = rows[:, start:start + width]
    c1 = rows[:, start + width:start + 2 * width]
    c2 = rows[:, start + 2 * width:start + 3 * width]
    return c0 + b1 * (c1 - c0) + b2 * (c2 - c0)


def coarsen(fine: GBuffer, s: int) -> GBuffer:
    """A base-resolution G-buffer from a supersampled one: per pixel, the first covered sub-sample."""
    v, hs, ws = fine.face.shape
    h, w = hs // s, ws // s

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [V, H*s, W*s, ...] -> [V, H, W, s*s, ...]
        rest = x.shape[3:]
        x = x.reshape(v, h, s, w, s, *rest).transpose(2, 3)
        return x.reshape(v, h, w, s * s, *rest)

    hits = blocks(fine.hit)
    coverage = hits.float().mean(-1)
    # Prefer a covered sub-sample: argmax over (hit, then earlier index).
    order = torch.arange(s * s, 0, -1, device=hits.device)
    pick = (hits.long() * (s * s + 1) + order).argmax(-1)  # [V, H, W]

    def take(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        b = blocks(x)
        index = pick.view(v, h, w, 1, *([1] * (b.dim() - 4))).expand(v, h, w, 1, *b.shape[4:])
        return b.gather(3, index).squeeze(3)

    lod = take(fine.lod)
    return GBuffer(face=take(fine.face), bary=take(fine.bary), depth=take(fine.depth), normal=take(fine.normal),
                   slot=take(fine.slot), uv=take(fine.uv), lod=torch.where(coverage > 0, lod + math.log2(s), lod),
                   stretch=take(fine.stretch), coverage=coverage)


def pool(image: torch.Tensor, s: int) -> torch.Tensor:
    """[V, C, H*s, W*s] -> [V, C, H, W] box average (the supersampling resolve)."""
    return image if s == 1 else F.avg_pool2d(image, s)


class _Halve(torch.autograd.Function):
    """2 x 2 box average of [..., H, W] (H, W even): avg_pool2d's values, computed and back-propagated by
    strided adds and one broadcast copy (2-3x faster on the CPU than avg_pool2d and its backward), in the
    input's memory format."""

    @staticmethod
    def forward(ctx, image: torch.Tensor) -> torch.Tensor:
        return (image[..., 0::2, 0::2] + image[..., 1::2, 0::2] + image[..., 0::2, 1::2]
                + image[..., 1::2, 1::2]) * 0.25

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        *lead, h, w = grad.shape
        return (grad * 0.25)[..., :, None, :, None].expand(*lead, h, 2, w, 2).reshape(*lead, 2 * h, 2 * w)


def mip_chain(texture: torch.Tensor, min_size: int = 1, max_levels: int = 64) -> list[torch.Tensor]:
    """[1, C, H, W] -> levels [1, C, H / 2^k, W / 2^k] (box-filtered), down to min_size or max_levels levels;
    level 0 is the input."""
    levels = [texture]
    while max(levels[-1].shape[-2:]) > min_size and min(levels[-1].shape[-2:]) > 1 and len(levels) < max_levels:
        h, w = levels[-1].shape[-2:]
        if h % 2 == 0 and w % 2 == 0:
            levels.append(_Halve.apply(levels[-1]))
        else:
            levels.append(F.interpolate(levels[-1], size=(max(1, h // 2), max(1, w // 2)), mode="area"))
    return levels


def level_weights(lod: torch.Tensor, base_size: tuple[int, int], levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower level [N] int64, blend t [N]) of trilinear filtering for a texture of base_size and `levels`."""
    level = (lod + 0.5 * math.log2(base_size[0] * base_size[1])).clamp(0, levels - 1)
    if levels == 1:
        return torch.zeros_like(level, dtype=torch.long), torch.zeros_like(level)
    low = level.floor().long().clamp(max=levels - 2)
    return low, (level - low).clamp(0, 1)


@dataclass
class SampleIndex:
    """Precomputed trilinear gathers of one texture into fixed pixels: entry e samples mip level levels[e]
    at grids[e] and adds weights[e] x colour to the flat pixels pixels[e] (each pixel appears in the two
    levels around its level of detail; weights include coverage and shading)."""

    levels: list[int]
    pixels: list[torch.Tensor]  # [n_e] int64 flat pixel indices
    grids: list[torch.Tensor]  # [1, 1, n_e, 2] grid_sample coordinates
    weights: list[torch.Tensor]  # [n_e, 1]

    def to(self, device) -> SampleIndex:
        return SampleIndex(self.levels, [p.to(device) for p in self.pixels], [g.to(device) for g in self.grids],
                           [w.to(device) for w in self.weights])


def plan_samples(pixels: torch.Tensor, uv: torch.Tensor, lod: torch.Tensor, size: tuple[int, int], levels: int,
                 factor: torch.Tensor | None = None) -> SampleIndex:
    """Trilinear gathers for samples at flat `pixels` [N] with uv [N, 2] (image convention, [0, 1]) and lod
    [N] from a texture of base `size` with `levels` mip levels; factor: [N] extra weight (or None)."""
    low, t = level_weights(lod, size, levels)
    order = torch.argsort(low)
    counts = torch.bincount(low, minlength=levels).tolist()
    grid = uv * 2 - 1
    out = SampleIndex([], [], [], [])
    start = 0
    for k, count in enumerate(counts):
        if count == 0:
            continue
        idx = order[start:start + count]
        start += count
        blend = t[idx]
        base = torch.ones_like(blend) if factor is None else factor[idx]
        for level, weight in ((k, (1 - blend) * base), (k + 1, blend * base)):
            if level >= levels or not bool((weight != 0).any()):
                continue
            out.levels.append(level)
            out.pixels.append(pixels[idx])
            out.grids.append(grid[idx].view(1, 1, -1, 2))
            out.weights.append(weight[:, None])
    return out


def gather(mips: list[torch.Tensor], index: SampleIndex, out: torch.Tensor) -> torch.Tensor:
    """out [P, C] plus the texture's trilinear samples at the indexed pixels (out-of-place, differentiable)."""
    for pixels, grid, weight, k in zip(index.pixels, index.grids, index.weights, index.levels, strict=True):
        colour = F.grid_sample(mips[k], grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out.index_add(0, pixels, colour[0, :, 0].T * weight)
    return out


def sample_trilinear(mips: list[torch.Tensor], uv: torch.Tensor, lod: torch.Tensor) -> torch.Tensor:
    """Colours [N, C] at uv [N, 2] (image convention, [0, 1]) with per-sample lod [N] (see GBuffer.lod),
    blending the two nearest mip levels. Differentiable w.r.t. the mips."""
    index = plan_samples(torch.arange(len(uv), device=uv.device), uv, lod, tuple(mips[0].shape[-2:]), len(mips))
    return gather(mips, index, torch.zeros(len(uv), mips[0].shape[1], dtype=mips[0].dtype, device=uv.device))


def mip_shapes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """The (h, w) of every level mip_chain makes for a texture of `size`, level 0 first."""
    shapes = [tuple(size)]
    while max(shapes[-1]) > 1 and min(shapes[-1]) > 1:
        h, w = shapes[-1]
        shapes.append((max(1, h // 2), max(1, w // 2)))
    return shapes


def mip_levels(size: tuple[int, int]) -> int:
    """How many levels mip_chain makes for a texture of `size` (h, w)."""
    return len(mip_shapes(size))


@dataclass
class CoveredSamples:
    """The covered (sub-)samples of a G-buffer, each mapped to the base pixel it resolves into.

    pixel [N] int64 flat base-pixel index (view, row, column); uv [N, 2]; lod [N]; slot [N] int64;
    factor [N]: the sample's share of its pixel (coverage / s^2), times shading if any.
    """

    pixel: torch.Tensor
    uv: torch.Tensor
    lod: torch.Tensor
    slot: torch.Tensor
    factor: torch.Tensor


def covered_samples(gbuf: GBuffer, supersample: int, scale: torch.Tensor | None = None) -> CoveredSamples:
    """The hits of a (supersampled by `supersample`) G-buffer, for sampling a texture into the base pixels
    exactly as render_textures does (shade every sub-sample, then box-average). scale: [V, H*s, W*s] or None."""
    s = supersample
    v, hs, ws = gbuf.face.shape
    flat = (gbuf.slot >= 0).reshape(-1).nonzero().squeeze(1)
    x, y, view = flat % ws, (flat // ws) % hs, flat // (ws * hs)
    pixel = (view * (hs // s) + y // s) * (ws // s) + x // s
    factor = gbuf.coverage.reshape(-1)[flat] / (s * s)
    if scale is not None:
        factor = factor * scale.reshape(-1)[flat]
    return CoveredSamples(pixel, gbuf.uv.reshape(-1, 2)[flat], gbuf.lod.reshape(-1)[flat],
                          gbuf.slot.reshape(-1)[flat], factor)


def shade(gbuf: GBuffer, textures: list[list[torch.Tensor]], scale: torch.Tensor | None = None) -> torch.Tensor:
    """Sample each slot's mip chain through the G-buffer: colours [V, H, W, 3] (0 on the background, not
    multiplied by coverage). scale: optional [V, H, W] shading factor."""
    v, h, w = gbuf.face.shape
    out = torch.zeros(v * h * w, 3, device=gbuf.uv.device)
    for slot, mips in enumerate(textures):
        flat = (gbuf.slot == slot).reshape(-1).nonzero().squeeze(1)
        if len(flat) == 0:
            continue
        factor = None if scale is None else scale.reshape(-1)[flat]
        index = plan_samples(flat, gbuf.uv.reshape(-1, 2)[flat], gbuf.lod.reshape(-1)[flat],
                             tuple(mips[0].shape[-2:]), len(mips), factor)
        out = gather(mips, index, out)
    return out.view(v, h, w, 3)
