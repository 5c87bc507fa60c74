"""Rasterize 3D Gaussians: `gsplat.rasterization` on CUDA; on a CPU (or on CUDA when gsplat's kernels cannot
load: engine.py), gsplat's pure-PyTorch projection and spherical harmonics plus our own tiled, culled,
front-to-back alpha compositor. Every tensor a function makes lives on the device of its inputs.

The CPU compositor follows gsplat's CUDA rasterizer rule for rule, so the two give the same images: a
Gaussian may touch only the 16x16-pixel tiles its 3-sigma square (gsplat's integer radius) overlaps; lists
are sorted by camera depth; a pixel (centre at +0.5) takes alpha = min(0.999, opacity * exp(-sigma)),
skips alpha < 1/255, and stops before the Gaussian that would drop its transmittance to 1e-4 or below. The
returned alpha is 1 - transmittance and the depth is the expected depth (sum of weight * z over alpha), as
gsplat's "RGB+ED" mode. For speed the lists are kept per 8x8 block (only blocks the Gaussian's alpha >= 1/255
ellipse reaches, inside its tiles: exact culling) and composited for all blocks at once, a few Gaussians deep
per round, closing blocks whose pixels have all terminated.

On a CPU the geometry is treated as fixed (nst3d freezes it): `plan` computes the compositing weights
without autograd, once per view, and `shade` makes the image as a weighted sum of per-Gaussian colours,
so gradients flow to the colours (SH coefficients) only, through one sparse gather/scatter. Asking for
gradients of means, scales, rotations or opacities on the CPU path is an error rather than a silent zero.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from nst3d.backends.splat.engine import choose_engine

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


@dataclass
class Raster:
    """What `rasterize` returns, in gsplat's channel-last layout.

    rgb: [C, H, W, 3] (premultiplied by alpha, plus background * (1 - alpha) if one was given);
    alpha: [C, H, W, 1]; depth: [C, H, W, 1] expected camera z (0 where alpha is 0).
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor


def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
              sh_degree: int | None = None, backgrounds: torch.Tensor | None = None, near_plane: float = 0.01,
              far_plane: float = 1e10, eps2d: float = 0.3, engine: str = "auto", clamp: bool = True) -> Raster:
    """Render C views of N Gaussians.

    means [N, 3]; quats [N, 4] (w, x, y, z); scales [N, 3] (activated, not log); opacities [N] (in [0, 1]);
    colors: [N, K, 3] SH coefficients when sh_degree is set (rgb = max(SH + 0.5, 0), as gsplat and the
    INRIA code), else [N, 3] or [C, N, 3] colours; viewmats [C, 4, 4] OpenCV world-to-camera; Ks [C, 3, 3];
    backgrounds [C, 3] or None (black). engine: "gsplat" (CUDA), "torch" (any device), "auto" (gsplat on
    CUDA tensors when its kernels load, else torch: see engine.choose_engine). clamp=False: SH colours are not
    clamped at 0 (for optimising).
    """
    if engine == "auto":
        engine = choose_engine(means.device)
    if engine == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                                 backgrounds, near_plane, far_plane, eps2d, clamp)
    if engine != "torch":
        raise ValueError(f"unknown engine {engine!r}; use auto, gsplat or torch")
    return rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                           backgrounds, near_plane, far_plane, eps2d, clamp=clamp)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                      backgrounds, near_plane, far_plane, eps2d, clamp: bool = True) -> Raster:
    from gsplat import rasterization

    if sh_degree is not None and not clamp:  # evaluate SH here, without gsplat's max(., 0)
        num_cameras = len(viewmats)
        cams = torch.arange(num_cameras, device=means.device).repeat_interleave(len(means))
        ids = torch.arange(len(means), device=means.device).repeat(num_cameras)
        colors = pair_colors(ids, cams, means, colors, viewmats, sh_degree, clamp=False)
        colors, sh_degree = colors.reshape(num_cameras, len(means), -1), None

    # backgrounds stay [C, 3]: for "RGB+ED" gsplat appends the depth channel's zero background itself.
    out, alpha, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                  near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree,
                                  packed=False, tile_size=TILE, backgrounds=backgrounds, render_mode="RGB+ED")
    return Raster(out[..., :3], alpha, out[..., 3:4] * (alpha > 0))


@dataclass
class Projected:
    """The Gaussians visible in each view, packed ([P] = one entry per (view, Gaussian) pair), depth sorted.

    camera_ids, gaussian_ids: [P]; means2d [P, 2]; conics [P, 3] (a, b, c of the inverse 2D covariance);
    depths [P]; opacities [P]; radii [P] (integer pixels, gsplat's 3-sigma radius).
    """

    camera_ids: torch.Tensor
    gaussian_ids: torch.Tensor
    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    opacities: torch.Tensor
    radii: torch.Tensor


@torch.no_grad()
def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
            viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, near_plane: float = 0.01,
            far_plane: float = 1e10, eps2d: float = 0.3, chunk: int = 1 << 20,
            covars: torch.Tensor | None = None) -> Projected:
    """gsplat's pure-PyTorch projection, one view and `chunk` Gaussians at a time, keeping only Gaussians that
    can show (radius > 0 and opacity >= 1/255, which gsplat's rasterizer would skip anyway).
    covars: [N, 3, 3] world covariances if already known (see `covariances`)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection

    parts: list[tuple[torch.Tensor, ...]] = []
    candidates = torch.nonzero(opacities >= ALPHA_MIN).squeeze(1)
    for start in range(0, len(candidates), chunk):
        ids = candidates[start:start + chunk]
        cov = covariances(quats[ids], scales[ids]) if covars is None else covars[ids]
        for cam in range(len(viewmats)):
            radii, m2d, depths, conics, _ = _fully_fused_projection(
                means[ids], cov, viewmats[cam:cam + 1], Ks[cam:cam + 1], width, height, eps2d=eps2d,
                near_plane=near_plane, far_plane=far_plane)
            keep = radii[0] > 0
            parts.append((torch.full((int(keep.sum()),), cam, dtype=torch.long, device=means.device), ids[keep],
                          m2d[0, keep], conics[0, keep], depths[0, keep], opacities[ids[keep]], radii[0, keep]))
    fields = [torch.cat(column) for column in zip(*parts, strict=True)] if parts else _empty(means.device)
    projected = Projected(*fields)
    order = torch.argsort(projected.depths, stable=True)
    return Projected(*(getattr(projected, name)[order] for name in Projected.__dataclass_fields__))


@torch.no_grad()
def covariances(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World-space covariances [N, 3, 3] (gsplat's pure-PyTorch R S S^T R^T)."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    return _quat_scale_to_covar_preci(quats, scales, True, False)[0]


def _empty(device) -> list[torch.Tensor]:
    long, f = dict(dtype=torch.long, device=device), dict(device=device)
    return [torch.zeros(0, **long), torch.zeros(0, **long), torch.zeros(0, 2, **f), torch.zeros(0, 3, **f),
            torch.zeros(0, **f), torch.zeros(0, **f), torch.zeros(0, dtype=torch.int32, device=device)]


@dataclass
class TileLists:
    """Per-block lists of projected Gaussians, front to back.

    entries: [M] indices into the Projected arrays, grouped by block then sorted by depth;
    starts, counts: [C * blocks_y * blocks_x] where each block's list begins in `entries` and how long it is.
    """

    entries: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    blocks_x: int
    blocks_y: int
    block: int


@torch.no_grad()
def tile_lists(p: Projected, num_cameras: int, width: int, height: int, block: int = 8) -> TileLists:
    """Bin each projected Gaussian into the blocks of `block` x `block` pixels where it can show.

    gsplat lets a Gaussian touch only the 16-pixel tiles its 3-sigma square overlaps, and only pixels where
    opacity * exp(-sigma) >= 1/255. A block is listed when it meets both: the tile square, and the bounding
    box of the ellipse sigma <= log(255 opacity) (plus a pixel of margin). That is exact culling (the skipped
    pixels would get alpha < 1/255 anyway), with far less work than whole tiles for small Gaussians.
    """
    if TILE % block:
        raise ValueError(f"block must divide {TILE}, got {block}")
    blocks_x, blocks_y = math.ceil(width / block), math.ceil(height / block)
    centre = p.means2d
    r = p.radii.to(centre.dtype)[:, None]
    tile_lo = torch.floor((centre - r) / TILE).long() * (TILE // block)
    tile_hi = torch.ceil((centre + r) / TILE).long() * (TILE // block)
    a, b, c = p.conics.unbind(-1)
    det = (a * c - b * b).clamp(min=1e-12)
    level = torch.log(p.opacities.clamp(min=ALPHA_MIN) * 255.0).clamp(min=0)  # sigma where alpha hits 1/255
    half = torch.stack([torch.sqrt(2 * level * c / det), torch.sqrt(2 * level * a / det)], dim=-1) + 1.0
    lo = torch.maximum(torch.floor((centre - half) / block).long(), tile_lo)
    hi = torch.minimum(torch.floor((centre + half) / block).long() + 1, tile_hi)
    limit = torch.tensor([blocks_x, blocks_y], device=lo.device)
    lo = torch.minimum(lo.clamp(min=0), limit)
    hi = torch.minimum(hi.clamp(min=0), limit)
    span = (hi - lo).clamp(min=0)  # [P, 2]
    per = span[:, 0] * span[:, 1]  # blocks per Gaussian
    source = torch.repeat_interleave(torch.arange(len(per), device=per.device), per)  # [M]
    first = torch.cumsum(per, 0) - per
    local = torch.arange(len(source), device=per.device) - first[source]
    bx = lo[source, 0] + local % span[source, 0]
    by = lo[source, 1] + local // span[source, 0]
    block_id = (p.camera_ids[source] * blocks_y + by) * blocks_x + bx
    # Projected entries are already depth sorted, so sorting by (block, entry) sorts each block by depth.
    order = torch.argsort(block_id * max(1, len(per)) + source)
    counts = torch.bincount(block_id, minlength=num_cameras * blocks_y * blocks_x)
    return TileLists(source[order], torch.cumsum(counts, 0) - counts, counts, blocks_x, blocks_y, block)


@dataclass
class Weights:
    """The compositing weights of one render: pixel `pixels[m]` gets weights[m] * colour of `entries[m]`.

    pixels: [M] flat pixel ids (camera * H * W + y * W + x); entries: [M] indices into Projected;
    weights: [M]; alpha, depth: [C, H, W, 1] (accumulated opacity and expected depth).
    """

    pixels: torch.Tensor
    entries: torch.Tensor
    weights: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor


@torch.no_grad()
def composite_weights(p: Projected, lists: TileLists, num_cameras: int, width: int, height: int,
                      batch: int = 32, max_batch: int = 256) -> Weights:
    """Front-to-back alpha compositing of every block at once, `batch` Gaussians deep per round.

    Each round takes the next Gaussians of every block still open (the depth per round doubles up to
    `max_batch`); a block closes when its list ends or when all its pixels have terminated (transmittance
    would fall to 1e-4), so opaque surfaces cost only their front layers. The exponent
    log(opacity) - sigma of every (pixel, Gaussian) pair of a round is one batched matrix product of
    per-pixel monomials (block-local, so well conditioned) with per-Gaussian coefficients.
    """
    device = p.means2d.device
    size = lists.block
    n_blocks = len(lists.counts)
    local = torch.arange(size * size, device=device)
    lx, ly = (local % size).float() + 0.5, (local // size).float() + 0.5  # block-local pixel centres
    monomials = torch.stack([lx * lx, ly * ly, lx * ly, lx, ly, torch.ones_like(lx)], dim=-1)  # [q, 6]
    block_ids = torch.arange(n_blocks, device=device)
    ox = (block_ids % lists.blocks_x) * size  # block origins in pixels
    oy = ((block_ids // lists.blocks_x) % lists.blocks_y) * size
    cam = block_ids // (lists.blocks_x * lists.blocks_y)
    px, py = ox[:, None] + local % size, oy[:, None] + local // size  # [blocks, q] integer pixel coords
    inside = (px < width) & (py < height)
    pixel_id = (cam[:, None] * (height * width) + py * width + px).where(inside, 0)
    trans = torch.ones(n_blocks, size * size, device=device)  # transmittance T
    done = ~inside  # pixels that stopped (or do not exist)
    depth_sum = torch.zeros(n_blocks, size * size, device=device)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    # Per-entry coefficients, in block order: entry e of block k gets its mean relative to k's origin below.
    block_of_entry = torch.repeat_interleave(block_ids, lists.counts)
    ent = lists.entries
    mx = p.means2d[ent, 0] - ox[block_of_entry]
    my = p.means2d[ent, 1] - oy[block_of_entry]
    ca, cb, cc = p.conics[ent, 0], p.conics[ent, 1], p.conics[ent, 2]
    # log(opacity) - sigma = -(a/2 x^2 + c/2 y^2 + b x y + d x + e y + f), x, y block-local
    coeffs = -torch.stack([0.5 * ca, 0.5 * cc, cb, -(ca * mx + cb * my), -(cc * my + cb * mx),
                           0.5 * ca * mx * mx + 0.5 * cc * my * my + cb * mx * my - torch.log(p.opacities[ent])],
                          dim=-1)  # [M, 6]
    coeffs = torch.cat([coeffs, torch.full_like(coeffs[:1], -math.inf)])  # a padding row: alpha = 0
    entry_depth = torch.cat([p.depths[ent], torch.zeros(1, device=device)])
    pad = len(ent)
    open_blocks = torch.nonzero(lists.counts > 0).squeeze(1)
    rank = 0
    while len(open_blocks):
        k = open_blocks
        slot = lists.starts[k, None] + rank + torch.arange(batch, device=device)  # [B, n]
        slot = slot.where(slot < (lists.starts + lists.counts)[k, None], pad)
        exponent = torch.matmul(monomials, coeffs[slot].transpose(1, 2))  # [B, q, n]
        alpha = torch.exp(exponent).clamp_(max=ALPHA_MAX)
        alpha = alpha.masked_fill_(alpha < ALPHA_MIN, 0.0)
        active = ~done[k]
        t_before = trans[k] * active  # [B, q]; stopped pixels take nothing more
        keep = 1 - alpha
        t_after = torch.cumprod(keep, dim=-1).mul_(t_before[..., None])  # T after each Gaussian
        include = t_after > T_MIN  # a prefix: T only falls
        weight = alpha.div_(keep).mul_(t_after).mul_(include)  # alpha * T before = alpha * T after / (1 - alpha)
        trans[k] = torch.where(active, t_before - weight.sum(-1), trans[k])
        done[k] |= active & ~include[..., -1]
        depth_sum[k] += torch.matmul(weight, entry_depth[slot][..., None])[..., 0]
        flat = weight.reshape(-1)
        hit = torch.nonzero(flat).squeeze(1)
        n, q = weight.shape[-1], weight.shape[-2]
        row = hit // n  # b * q + pixel
        found.append((pixel_id[k].reshape(-1)[row], lists.entries[slot.reshape(-1)[(row // q) * n + hit % n]],
                      flat[hit]))
        rank += batch
        open_blocks = k[(lists.counts[k] > rank) & ~done[k].all(-1)]
        batch = min(batch * 2, max_batch)  # long lists: fewer, deeper rounds
    alpha_img = torch.zeros(num_cameras * height * width, device=device)
    depth_img = torch.zeros(num_cameras * height * width, device=device)
    keep = inside.reshape(-1)
    alpha_img[pixel_id.reshape(-1)[keep]] = (1 - trans).reshape(-1)[keep]
    depth_img[pixel_id.reshape(-1)[keep]] = depth_sum.reshape(-1)[keep]
    depth_img = depth_img / alpha_img.clamp(min=1e-10)
    shape = (num_cameras, height, width, 1)
    if found:
        pixels, entries, weights = (torch.cat(column) for column in zip(*found, strict=True))
    else:
        pixels = entries = torch.zeros(0, dtype=torch.long, device=device)
        weights = torch.zeros(0, device=device)
    return Weights(pixels, entries, weights, alpha_img.reshape(shape), depth_img.reshape(shape))


@dataclass
class Plan:
    """Everything about a CPU render that does not depend on colour (geometry and opacity are fixed), so a
    view can be planned once and shaded many times.

    gaussian_ids, camera_ids: [U] the (Gaussian, camera) pairs that reach a pixel;
    pixels: [M] flat pixel ids (camera * H * W + y * W + x); entries: [M] indices into the [U] pairs;
    weights: [M] compositing weight of that pair at that pixel; alpha, depth: [C, H, W, 1].
    """

    gaussian_ids: torch.Tensor
    camera_ids: torch.Tensor
    pixels: torch.Tensor
    entries: torch.Tensor
    weights: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor

    @property
    def num_cameras(self) -> int:
        return self.alpha.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gaussian_ids, self.camera_ids, self.pixels,
                                                           self.entries, self.weights, self.alpha, self.depth))


@contextlib.contextmanager
def ieee_matmul() -> Iterator[None]:
    """Float32 matrix products in IEEE precision inside, whatever the process chose; restored after. With TF32
    (a 10-bit mantissa on CUDA) the compositor's exponent, a product whose terms reach ~1e2, errs by ~0.1, and
    the images by 3e-4 to 1e-3 on average: the gsplat comparison failed that way on an H200."""
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    saved = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, saved)


@torch.no_grad()
@ieee_matmul()
def plan(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
         viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, near_plane: float = 0.01,
         far_plane: float = 1e10, eps2d: float = 0.3, block: int = 8, covars: torch.Tensor | None = None) -> Plan:
    """Project, bin and composite (see `rasterize`'s arguments); the colour-independent half of a render, in
    IEEE float32 whatever the process set for matrix products (ieee_matmul).
    covars: [N, 3, 3] precomputed world covariances (saves recomputing them for every view)."""
    num_cameras = len(viewmats)
    p = project(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
                covars=covars)
    lists = tile_lists(p, num_cameras, width, height, block)
    w = composite_weights(p, lists, num_cameras, width, height)
    used, entries = torch.unique(w.entries, return_inverse=True)
    return Plan(p.gaussian_ids[used], p.camera_ids[used], w.pixels.int(), entries.int(), w.weights,
                w.alpha, w.depth)


def shade(pl: Plan, colors: torch.Tensor, means: torch.Tensor, viewmats: torch.Tensor,
          sh_degree: int | None = None, backgrounds: torch.Tensor | None = None, clamp: bool = True) -> Raster:
    """The colour half of a CPU render, differentiable in `colors` (see `rasterize` for the layouts).
    clamp=False leaves SH colours below 0 unclamped (for optimising: a clamped colour gets no gradient)."""
    height, width = pl.alpha.shape[1:3]
    col = pair_colors(pl.gaussian_ids, pl.camera_ids, means, colors, viewmats, sh_degree, clamp)  # [U, D]
    # index_select, not col[entries]: its backward is an index_add, much faster on a CPU than index_put.
    contribution = torch.index_select(col, 0, pl.entries) * pl.weights[:, None]  # [M, D]
    flat = torch.zeros(pl.num_cameras * height * width, col.shape[-1], device=col.device, dtype=col.dtype)
    rgb = flat.index_add(0, pl.pixels, contribution).reshape(pl.num_cameras, height, width, -1)
    if backgrounds is not None:
        rgb = rgb + backgrounds[:, None, None, :] * (1 - pl.alpha)
    return Raster(rgb, pl.alpha, pl.depth)


def pair_colors(gaussian_ids: torch.Tensor, camera_ids: torch.Tensor, means: torch.Tensor, colors: torch.Tensor,
                viewmats: torch.Tensor, sh_degree: int | None, clamp: bool = True) -> torch.Tensor:
    """Colour [P, D] of each (Gaussian, camera) pair, differentiable: SH evaluated towards that camera as
    gsplat does (max(SH + 0.5, 0); without the max if not clamp), or the given colours."""
    if sh_degree is None:
        if colors.dim() == 2:
            return torch.index_select(colors, 0, gaussian_ids)
        return torch.index_select(colors.reshape(-1, colors.shape[-1]), 0, camera_ids * colors.shape[1] + gaussian_ids)
    coeffs = torch.index_select(colors[:, : (sh_degree + 1) ** 2], 0, gaussian_ids)  # [P, K, 3]
    if sh_degree == 0:
        rgb = coeffs[:, 0] * SH_C0 + 0.5
    else:
        from gsplat.cuda._torch_impl import _spherical_harmonics

        centres = torch.linalg.inv_ex(viewmats).inverse[:, :3, 3]  # [C, 3]; inv_ex: no host sync on CUDA
        dirs = means[gaussian_ids].detach() - centres[camera_ids]
        rgb = _spherical_harmonics(sh_degree, dirs, coeffs) + 0.5
    return torch.clamp_min(rgb, 0.0) if clamp else rgb


SH_C0 = 0.28209479177387814


def rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                    sh_degree: int | None = None, backgrounds: torch.Tensor | None = None,
                    near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
                    block: int = 8, clamp: bool = True) -> Raster:
    """The CPU path of `rasterize` (same arguments); differentiable with respect to `colors` only."""
    for name, value in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities)):
        if value.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"the PyTorch rasterizer treats geometry as fixed; {name} must not require grad")
    pl = plan(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, eps2d, block)
    return shade(pl, colors, means, viewmats, sh_degree, backgrounds, clamp)


def rasterize_dense(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                    sh_degree: int | None = None) -> Raster:
    """A slow, obvious reference: every pixel against every Gaussian (depth sorted), no tiling or batching.

    Uses the same per-Gaussian support (gsplat's 3-sigma square, widened to whole 16-pixel tiles) and the
    same thresholds; for tests on a few hundred Gaussians. Differentiable in colors.
    """
    p = project(means, quats, scales, opacities, viewmats, Ks, width, height)
    col = pair_colors(p.gaussian_ids, p.camera_ids, means, colors, viewmats, sh_degree)  # [P, D]
    ys, xs = torch.meshgrid(torch.arange(height, device=means.device) + 0.5,
                            torch.arange(width, device=means.device) + 0.5, indexing="ij")
    rgb, alphas, depths = [], [], []
    for c in range(len(viewmats)):
        sel = p.camera_ids == c  # already depth sorted
        m2d, con, op, r = p.means2d[sel], p.conics[sel], p.opacities[sel], p.radii[sel].float()
        dx = xs.reshape(-1, 1) - m2d[:, 0]  # [HW, P]
        dy = ys.reshape(-1, 1) - m2d[:, 1]
        sigma = 0.5 * (con[:, 0] * dx**2 + con[:, 2] * dy**2) + con[:, 1] * dx * dy
        alpha = (op * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
        tile_x, tile_y = (xs.reshape(-1, 1) // TILE), (ys.reshape(-1, 1) // TILE)
        lo_x, hi_x = torch.floor((m2d[:, 0] - r) / TILE), torch.ceil((m2d[:, 0] + r) / TILE)
        lo_y, hi_y = torch.floor((m2d[:, 1] - r) / TILE), torch.ceil((m2d[:, 1] + r) / TILE)
        support = (tile_x >= lo_x) & (tile_x < hi_x) & (tile_y >= lo_y) & (tile_y < hi_y)
        alpha = alpha.where((sigma >= 0) & (alpha >= ALPHA_MIN) & support, 0.0)
        t_after = torch.cumprod(1 - alpha, dim=-1)
        include = t_after > T_MIN
        t_prev = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=-1)
        weight = alpha * t_prev * include  # [HW, P]
        rgb.append((weight @ col[sel]).reshape(height, width, -1))
        a = weight.sum(-1)
        alphas.append(a.reshape(height, width, 1))
        depths.append(((weight @ p.depths[sel]) / a.clamp(min=1e-10)).reshape(height, width, 1))
    return Raster(torch.stack(rgb), torch.stack(alphas), torch.stack(depths))
