"""The mesh backend: textures are the parameters, geometry is fixed.

A pool of training views is rasterized ONCE at start-up, in scales (nst3d.scales): whole-object views
(Fibonacci directions with jitter, each framed on the object's silhouette with a random zoom) and, for each
octave from half the object down to the stroke scale, views whose height covers the octave's length at
area-sampled visible surface points, looking along directions near the outward normal. The batches mix the
scales, and the residual's texel density follows the finest octave (at least one texel per pixel there).
For each pool view the original textures are rendered once, with
supersampling and trilinear mip filtering, over white (as the report, the contact sheet and most viewers show
it: VGG features near the silhouette see the background, and on Spot training over random colours left the
held-out style distance over white twice the training one; `white_share` < 1 draws random colours for the
other views; the losses count object pixels only). Each step takes a batch of
pool views and adds the residual pyramids' samples to those cached renders: only the residual is sampled
(and back-propagated), which is what keeps the step overhead small. Batches carry a `key`, so the loop
caches their content features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nst3d.backends.base import Render, pool_backgrounds
from nst3d.backends.mesh.asset import MeshAsset
from nst3d.backends.mesh.gbuffer import (
    CoveredSamples,
    GBuffer,
    Rasterizer,
    covered_samples,
    mip_chain,
    mip_levels,
    plan_samples,
)
from nst3d.backends.mesh.render import (
    FOV_DEGREES,
    frame_on_silhouette,
    framing_points,
    lambert,
    render_textures,
    render_textures_with_samples,
)
from nst3d.backends.mesh.resolve import SampleMatrix, resolve, sample_matrix, stacked
from nst3d.backends.mesh.surface import surface_area, visible_surface_views
from nst3d.backends.mesh.texture import TexturePyramid, dilate, matched_size
from nst3d.backends.mesh.uv import resize_texture
from nst3d.cameras import (
    Cameras,
    fibonacci_directions,
    jitter_directions,
)
from nst3d.color import keep_content_chroma
from nst3d.scales import (
    bounding_diagonal,
    octave_heights,
    stroke_scale_or_default,
    surface_cameras,
    world_style_levels,
)

CLOSE_JITTER_DEGREES = 25.0  # close views look along directions this near the outward normal
WHOLE_SHARE = 0.4  # of the training pool: whole-object views (the rest: close octaves)


def largest_residual_side(size: int) -> int:
    """The residual's (and a raised texture's) largest side for training views of `size` px: 4 texels per view
    pixel row, at least 1024 and at most 4096. Both its cost and VGG's grow with size², so it keeps its share of
    the step (at 256 px, 2048 cost 1.56x the bare VGG step before the sparse step; 1024, 1.04x now), while a
    512 px close-up no longer magnifies a 1024 residual into texel-sized blotches (BENCHMARKS.md, first GPU runs)."""
    return min(4096, max(1024, 4 * size))


@dataclass
class ViewBatch:
    """Training views rasterized once. key: batch number (the loop caches content features by it). Every
    tensor lives on the backend's device."""

    key: int
    cameras: Cameras
    content: torch.Tensor  # [V, 3, H, W] original textures rendered (supersampled) over the background
    mask: torch.Tensor  # [V, G, H, W] coverage per style group (G = 1 without --style-map)
    depth: torch.Tensor  # [V, 1, H, W]
    slots: list[int]  # the texture slots these views see
    samples: SampleMatrix  # those slots' residual mip chains (stacked, in `slots` order) -> the V*H*W pixels
    style_levels: torch.Tensor | None = None  # [V] the style's scale each view asks for (world-size strokes)


def close_shares(count: int, heights: list[float], area: float) -> list[int]:
    """Views per close octave (heights, finest first) out of a pool of `count`: WHOLE_SHARE of the pool stays
    whole-object, the rest goes to the octaves in proportion to the views each needs to tile the surface
    (area / height^2), so the finest octave, which must reach every part of the surface, gets the most."""
    if not heights:
        return []
    close = count - max(1, round(count * WHOLE_SHARE)) if count > 1 else 0
    tiles = torch.tensor([area / h ** 2 for h in heights])
    share = torch.floor(close * tiles / tiles.sum()).long().clamp(min=1 if close >= len(heights) else 0)
    share[0] += close - int(share.sum())  # the rounding's leftovers go to (or come from) the finest octave
    return share.tolist()


class MeshBackend:
    """Stylize a MeshAsset's textures (see the module docstring). Implements nst3d.backends.base.Backend."""

    deferred = False

    def __init__(self, asset: MeshAsset, size: int = 256, views_per_step: int = 4, pool_size: int = 48,
                 supersample: int = 2, levels: int = 5, level_lr_scale: float = 0.5, lr: float | None = None,
                 shading: str = "none", groups: list[int] | None = None, device: torch.device | str = "cpu",
                 seed: int = 0, jitter_degrees: float = 12.0, zoom_range: tuple[float, float] = (0.85, 1.1),
                 residual_side: int | None = None, residual_scale: float = 1.0, upsample: str = "smooth",
                 init: str = "content", white_share: float = 1.0, stroke_scale: float | None = None,
                 multi_scale: bool = True, raise_textures: bool = True, largest_side: int | None = None,
                 stroke_sizing: str = "view"):
        """groups: style group of each slot (for --style-map; default all 0); residual_side: force the
        residual's resolution (default: at least one texel per pixel of the finest training views, median
        over them); residual_scale: the finest parameters' resolution relative to it (smoothly enlarged);
        white_share: share of pool views rendered over white (the others over a random colour each);
        stroke_scale: the closest views' height in world units (default: nst3d.scales.STROKE_FRACTION of the
        bounding diagonal); multi_scale: False keeps whole-object views only (the pool before stroke scales);
        raise_textures: resample a texture smaller than the finest views need up to that need (False: never;
        `notes` then says so); largest_side: the residual's and a raised texture's largest side (default
        largest_residual_side(size)); stroke_sizing: "view" (each view lays the style at its own screen scale) or
        "world" (at the stroke scale's size on the surface: `style_levels`, world_style_levels)."""
        if shading not in ("none", "lambert"):
            raise ValueError(f"unknown shading {shading!r}; use none or lambert")
        self.asset = asset
        self.size = size
        self.supersample = supersample
        self.shading = shading
        self.device = torch.device(device)
        self.lr = lr
        self.groups = groups or [0] * len(asset.slots)
        self.group_count = max(self.groups) + 1
        world = asset.world()
        self.rasterizer = Rasterizer(world, self.device)
        self.points = framing_points(world.vertices)
        self.diagonal = bounding_diagonal(self.points)
        self.stroke_scale = stroke_scale_or_default(stroke_scale, self.diagonal)
        self.originals = [s.texture.to(self.device) for s in asset.slots]
        self.original_mips = [mip_chain(t[None]) for t in self.originals]
        generator = torch.Generator().manual_seed(seed)
        heights = octave_heights(self.stroke_scale, self.diagonal) if multi_scale else []
        cameras, self.view_heights = self._pool_cameras(pool_size, heights, jitter_degrees, zoom_range, generator)
        pool_size = len(cameras)
        backgrounds = pool_backgrounds(pool_size, white_share, generator)
        built = [self._content_batch(cameras[list(range(s, min(s + views_per_step, pool_size)))],
                                     backgrounds[s:s + views_per_step])
                 for s in range(0, pool_size, views_per_step)]
        finest = self.view_heights == min(heights) if heights else torch.ones(pool_size, dtype=torch.bool)
        if not finest.any():  # no close view could be placed: the whole-object views set the density
            finest = ~finest
        if stroke_sizing not in ("view", "world"):
            raise ValueError(f"unknown stroke sizing {stroke_sizing!r}; use view or world")
        self.view_levels = (world_style_levels(self.view_heights, self.stroke_scale) if stroke_sizing == "world"
                            else None)
        #: the style's scales the views ask for (the objective's Objective.style_levels)
        self.style_levels = (1.0,) if self.view_levels is None else tuple(sorted(set(self.view_levels.tolist())))
        self.largest_side = largest_side or largest_residual_side(size)
        needs = self._texel_needs([b[1] for b in built], finest.split(views_per_step))
        self.residual_sides = [residual_side or min(need, self.largest_side) for need in needs]
        bases, self.notes = self._raised_textures(needs, raise_textures)
        noise = torch.Generator().manual_seed(seed) if init == "noise" else None
        self.pyramids = []
        for texture, side in zip(bases, self.residual_sides, strict=True):
            output = matched_size(tuple(texture.shape[-2:]), side)
            finest = matched_size(tuple(texture.shape[-2:]), max(8, round(side * residual_scale)))
            render_size = matched_size(tuple(texture.shape[-2:]), side * supersample)
            self.pyramids.append(TexturePyramid(texture, finest, levels, level_lr_scale, noise, upsample, output,
                                                render_size))
        levels = (None,) * len(built) if self.view_levels is None else self.view_levels.split(views_per_step)
        self.batches = [self._finish_batch(key, *b, level)
                        for key, (b, level) in enumerate(zip(built, levels, strict=True))]
        self._order: list[int] = []

    # ---------------------------------------------------------------------------------- set-up (once)

    def frame(self, directions: torch.Tensor, width: int | None = None, height: int | None = None) -> Cameras:
        """Cameras framed on the silhouette for view directions [V, 3] (for held-out views, previews)."""
        return frame_on_silhouette(self.points, directions, width or self.size, height or self.size)

    def _pool_cameras(self, count: int, heights: list[float], jitter_degrees: float,
                      zoom_range: tuple[float, float], generator: torch.Generator) -> tuple[Cameras, torch.Tensor]:
        """`count` training cameras: whole-object views and the close octaves `heights` (close_shares; views an
        octave cannot place, e.g. all occluded, go to whole-object views), interleaved so that each batch mixes
        the scales. Returns (cameras, view heights [count], 0 for whole-object views)."""
        share = close_shares(count, heights, surface_area(self.rasterizer.mesh))
        close = []
        for height, wanted in zip(heights, share, strict=True):
            if wanted == 0:
                continue
            points, directions = visible_surface_views(self.rasterizer, wanted, height, self.size, generator,
                                                       CLOSE_JITTER_DEGREES)
            close.append((surface_cameras(points, directions, height, self.size, self.size, FOV_DEGREES),
                          torch.full((len(points),), height)))
        whole_count = count - sum(len(c) for c, _ in close)
        directions = jitter_directions(fibonacci_directions(whole_count), jitter_degrees, generator)
        directions = directions[torch.randperm(whole_count, generator=generator)]
        zoom = zoom_range[0] + (zoom_range[1] - zoom_range[0]) * torch.rand(whole_count, generator=generator)
        scales = [(frame_on_silhouette(self.points, directions, self.size, self.size, zoom=zoom),
                   torch.zeros(whole_count)), *close]
        order = sorted(((k / max(len(c), 1), s, k) for s, (c, _) in enumerate(scales) for k in range(len(c))))
        pick = [(s, k) for _, s, k in order]  # round-robin by rank within each scale
        w2c = torch.stack([scales[s][0].world_to_cam[k] for s, k in pick])
        K = torch.stack([scales[s][0].K[k] for s, k in pick])
        return Cameras(w2c, K, self.size, self.size), torch.stack([scales[s][1][k] for s, k in pick])

    def _raised_textures(self, needs: list[int], allowed: bool) -> tuple[list[torch.Tensor], list[str]]:
        """(the pyramids' bases: each original texture [3, H, W], resampled up to its residual's side where it
        is smaller, if allowed; the warnings that say so, and whether the side is capped below the need)."""
        notes, bases = [], list(self.originals)
        for slot, (side, need) in enumerate(zip(self.residual_sides, needs, strict=True)):
            texture, name = self.originals[slot], self.asset.slots[slot].name
            own = max(texture.shape[-2:])
            if side <= own:
                continue
            if not allowed:
                notes.append(f"texture '{name}' ({own} px) holds coarser strokes than the stroke scale asks for "
                             f"({side} px would); raise --texture-size or --stroke-scale for finer ones")
                continue
            bases[slot] = resize_texture(texture, side)
            notes.append(f"texture '{name}' raised from {own} to {side} px so it can hold strokes at the stroke "
                         f"scale{'' if side >= need else f' (capped; {need} px would be needed)'}")
        return bases, notes

    def _shade_scale(self, gbuf: GBuffer) -> torch.Tensor | None:
        return lambert(gbuf.normal) if self.shading == "lambert" else None

    def _content_batch(self, cameras: Cameras, backgrounds: torch.Tensor) -> tuple:
        rgb, base, shaded = render_textures_with_samples(self.rasterizer, self.original_mips, cameras,
                                                         self.supersample, backgrounds, self.shading, self.device)
        return cameras, base, rgb, covered_samples(shaded, self.supersample, self._shade_scale(shaded))

    def _texel_needs(self, gbufs: list[GBuffer], finest: tuple[torch.Tensor, ...]) -> list[int]:
        """Per slot, the residual's side: the median texel need of the finest views' pixels, rounded up to a power
        of two (at least 16), so a texel covers at most one pixel for half of them or more (rounding to the
        nearest power left up to 1.4 pixels a texel). The need is taken on each footprint's mean side (the square
        root of its area), so the blur a slanted pixel gets along its slope does not lower it. finest: per batch,
        [V] bool, which views are finest."""
        needs = []
        for slot, texture in enumerate(self.originals):
            lods = torch.cat([(g.lod - g.stretch)[pick.to(g.lod.device)][g.slot[pick.to(g.lod.device)] == slot]
                              for g, pick in zip(gbufs, finest, strict=True)])
            if len(lods) == 0:
                needs.append(16)
                continue
            # A footprint of 2^lod UV units per pixel side: one texel per pixel at 2^-lod texels per unit.
            side = 2.0 ** float(-lods.median())
            aspect = max(texture.shape[-2:]) / math.sqrt(texture.shape[-2] * texture.shape[-1])
            needs.append(int(max(16, 2 ** math.ceil(math.log2(side * aspect) - 1e-6))))
        return needs

    def _finish_batch(self, key: int, cameras: Cameras, gbuf: GBuffer, rgb: torch.Tensor,
                      samples: CoveredSamples, style_levels: torch.Tensor | None) -> ViewBatch:
        slots, index = [], []
        for slot, pyramid in enumerate(self.pyramids):
            mine = samples.slot == slot
            if not bool(mine.any()):
                continue
            size = pyramid.render_size
            slots.append(slot)
            index.append(plan_samples(samples.pixel[mine], samples.uv[mine], samples.lod[mine], size,
                                      mip_levels(size), samples.factor[mine]))
        matrix = sample_matrix(index, [self.pyramids[s].render_size for s in slots], rgb[:, 0].numel())
        return ViewBatch(key, cameras, rgb, self._group_mask(gbuf), gbuf.depth[:, None], slots, matrix,
                         None if style_levels is None else style_levels.to(self.device))

    def _group_mask(self, gbuf: GBuffer) -> torch.Tensor:
        """[V, G, H, W] coverage split by style group (edge pixels count in their representative's group)."""
        if self.group_count == 1:
            return gbuf.coverage[:, None]
        groups = torch.tensor(self.groups, device=gbuf.slot.device)
        slot_group = torch.where(gbuf.slot >= 0, groups[gbuf.slot.clamp(min=0)], -1)
        return torch.stack([(slot_group == g).float() * gbuf.coverage for g in range(self.group_count)], dim=1)

    # ----------------------------------------------------------------------------------- the protocol

    def parameters(self) -> list[dict[str, Any]]:
        groups = []
        for pyramid in self.pyramids:
            groups += pyramid.param_groups(self.lr) if self.lr else [{"params": pyramid.levels}]
        return groups

    def train_views(self, step: int, generator: torch.Generator) -> ViewBatch:
        """The next pool batch, in a fresh random order each pass over the pool."""
        if not self._order:
            self._order = torch.randperm(len(self.batches), generator=generator).tolist()
        return self.batches[self._order.pop()]

    def render(self, views: ViewBatch) -> Render:
        """The cached original render plus the residual textures rendered exactly as the final textures are:
        enlarged, mip-mapped and sampled (trilinear) at every covered sub-sample of the supersampled G-buffer,
        weighted by coverage and shading and resolved into the pixels: one sparse product with the batch's
        SampleMatrix (nst3d.backends.mesh.resolve)."""
        if not views.slots:
            return Render(views.content, views.mask, views.depth, views.style_levels)
        v, _, h, w = views.content.shape
        parts = [stacked(mip_chain(self.pyramids[s].render_residual().contiguous(memory_format=torch.channels_last)))
                 for s in views.slots]
        texels = parts[0] if len(parts) == 1 else torch.cat(parts)
        residual = resolve(texels, views.samples).view(v, h, w, 3).permute(0, 3, 1, 2)
        return Render(views.content + residual, views.mask, views.depth, views.style_levels)

    def render_content(self, views: ViewBatch) -> Render:
        return Render(views.content, views.mask, views.depth)

    def backward_image(self, views: Any, grad_rgb: torch.Tensor) -> None:
        raise NotImplementedError("the mesh backend back-propagates directly")

    # -------------------------------------------------------------------------------------- results

    @torch.no_grad()
    def stylized_textures(self, dilate_texels: int = 16, keep_chroma: bool = False) -> list[torch.Tensor]:
        """Final textures [3, H, W] in [0, 1]: base + residual, clamped, dilated past the UV charts.
        keep_chroma: keep the original textures' colours, take only the stylized luminance."""
        out = []
        for slot, pyramid in zip(self.asset.slots, self.pyramids, strict=True):
            texture = pyramid.texture()
            if keep_chroma:
                texture = keep_content_chroma(texture, pyramid.base)
            texture = texture.clamp(0, 1)
            if slot.coverage is not None:
                covered = slot.coverage.to(texture.device)
                if covered.shape != texture.shape[-2:]:  # a raised texture
                    covered = F.interpolate(covered[None, None].float(), size=texture.shape[-2:])[0, 0] > 0.5
                texture = dilate(texture, covered, dilate_texels)
            out.append(texture)
        return out

    @torch.no_grad()
    def render_cameras(self, cameras: Cameras, textures: list[torch.Tensor] | None = None,
                       background: tuple[float, float, float] = (1.0, 1.0, 1.0), batch: int = 4,
                       shading: str | None = None) -> Render:
        """Render any cameras with full quality (supersampled, mip-mapped): the given textures [3, H, W] per
        slot, or the originals, with the backend's shading unless `shading` is given. Returns rgb over
        `background`, the per-group mask and the depth (on the CPU)."""
        textures = self.originals if textures is None else textures
        mips = [mip_chain(t.to(self.device)[None]) for t in textures]
        bg = torch.tensor(background, dtype=torch.float32)
        rgbs, masks, depths = [], [], []
        for start in range(0, len(cameras), batch):
            cams = cameras[list(range(start, min(start + batch, len(cameras))))]
            rgb, gbuf = render_textures(self.rasterizer, mips, cams, self.supersample, bg, shading or self.shading,
                                        self.device)
            rgbs.append(rgb.cpu())
            masks.append(self._group_mask(gbuf).cpu())
            depths.append(gbuf.depth[:, None].cpu())
        return Render(torch.cat(rgbs), torch.cat(masks), torch.cat(depths))

    def texture_report(self) -> list[dict[str, Any]]:
        return [{"slot": s.name, "texture_size": list(s.texture.shape[-2:]), "generated": s.generated,
                 "residual_size": list(p.output or p.sizes[0]), "residual_levels": [list(size) for size in p.sizes],
                 "group": g}
                for s, p, g in zip(self.asset.slots, self.pyramids, self.groups, strict=True)]
