"""Split Gaussians larger than the stroke scale's pixel footprint into smaller ones that render (nearly) the same.

A Gaussian carries one colour, so a stroke smaller than a Gaussian cannot exist (G-Style splits elongated
Gaussians for this reason). Before stylization, every Gaussian whose largest 3-sigma half-extent exceeds
`max_extent` (SPLIT_PIXELS pixels of the finest training views, see `split_extent`) is replaced, one axis at a
time (largest first), by children along that axis:

- the 1D profile along the axis, a Gaussian of sigma s, is written as a sum of narrower Gaussians of sigma s'
  (at most max_extent / 3, and at least s / MAX_FACTOR per round) on a grid along the axis, weighted by a
  Gaussian of sigma sqrt(s^2 - s'^2) (the convolution identity N(s^2) = N(s'^2) * N(s^2 - s'^2), sampled finely
  enough that the sum ripples by <= 1%, cut at TRUNCATE of its sigma; children too faint to render are dropped):
  the children's summed alpha equals the parent's wherever the alphas are small;
- 3DGS composites alpha = 1 - prod(1 - alpha_i), not a sum, so where children overlap an opaque parent the
  linear weights come out too transparent: each parent's children get one opacity gain, chosen from
  GAINS to fit the parent's composited alpha profile across and along the axis (`_fit_gain`).
Children keep the parent's rotation, other scales and SH colours. Rounds repeat until every Gaussian is under
`max_extent` or the count would pass the cap; the biggest (3-sigma extent x opacity) are split first.

Device rule: everything runs on the scene's device (new tensors are made with `device=scene.means.device`);
it runs once at set-up, so its few host syncs (counts) are not in the per-step loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from nst3d.backends.splat.ply import SplatPly, _with_vertex_count
from nst3d.backends.splat.render import ALPHA_MIN
from nst3d.backends.splat.scene import SplatScene

#: A Gaussian is split when its largest 3-sigma half-extent exceeds this many pixels of the finest training views
#: (those cover the stroke scale with `--size` pixels): a child's colour then spans about one relu3_1 cell (4 px)
#: of VGG at that scale (FWHM 2.35 sigma = 3.9 px), so a stroke a few pixels wide can be painted.
SPLIT_PIXELS = 5.0
#: At most this many times the input count (and MAX_GAUSSIANS): every step renders every Gaussian of every view,
#: so time and memory grow with the count; 4x keeps the donut's CPU step within a few times the unsplit one.
MAX_GROWTH = 4.0
MAX_GAUSSIANS = 4_000_000
MAX_ROUNDS = 6
MAX_FACTOR = 4.0  # one round narrows an axis at most this much (bounds the children per round)
MIN_FACTOR = 1.5  # and at least this much (a Gaussian just over the extent is not split into near-copies of itself)
#: Children every SPACING * s' sqrt(s^2 - s'^2) / s along the axis: summing Gaussians of sigma s' placed on a grid of
#: a sampled Gaussian kernel ripples by 2 exp(-2 pi^2 (width / spacing)^2), width = that product: <= 1% at 1.9.
SPACING = 1.9
TRUNCATE = 2.5  # the weighting Gaussian is cut at this many of its sigmas
GAINS = (1.0, 1.1, 1.2, 1.35, 1.5, 1.7, 1.9, 2.2, 2.5, 3.0, 3.6, 4.5)
OPACITY_MAX = 0.999
FIT_CHUNK = 16_384  # parents per opacity fit (bounds its memory to ~0.1 GB)


@dataclass
class Split:
    """A split scene: `scene` [M Gaussians] and `parent` [M] (long, on the scene's device): each Gaussian's index in
    the unsplit scene. `capped`: the cap stopped the rounds before every Gaussian was under the extent."""

    scene: SplatScene
    parent: torch.Tensor
    rounds: int
    capped: bool
    max_extent: float
    cap: int


def split_extent(stroke_scale: float, size: int, pixels: float = SPLIT_PIXELS) -> float:
    """The largest 3-sigma half-extent (world units) a Gaussian may have: `pixels` of a view of `size` px whose
    height covers `stroke_scale` (the finest training views)."""
    return pixels * stroke_scale / size


def rotation_matrices(quats: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] rotations of quats [N, 4] (w, x, y, z; normalised here): column k is the Gaussian's axis k."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], dim=-1).reshape(-1, 3, 3)


def split_scene(scene: SplatScene, max_extent: float, cap: int | None = None) -> Split:
    """Split `scene` until no Gaussian's 3-sigma half-extent exceeds max_extent, or the count would pass
    `cap` (default: MAX_GROWTH x the count, at most MAX_GAUSSIANS). Returns the Split (the scene itself, with an
    identity `parent`, when nothing needs splitting)."""
    cap = cap if cap is not None else int(min(MAX_GROWTH * len(scene), MAX_GAUSSIANS))
    parent = torch.arange(len(scene), device=scene.means.device)
    rounds, capped = 0, False
    while rounds < MAX_ROUNDS:
        extent = 3 * scene.scales.max(dim=-1).values
        over = torch.nonzero(extent > max_extent).squeeze(1)
        if len(over) == 0:
            break
        plan = _children_plan(scene.scales[over], scene.opacities[over], max_extent)
        added = plan[2].sum(-1) - 1  # [P] Gaussians each split adds
        order = torch.argsort(extent[over] * scene.opacities[over], descending=True)
        fits = int((torch.cumsum(added[order], 0) <= cap - len(scene)).sum())
        if fits < len(over):
            capped = True
            if fits == 0:
                break
            chosen = order[:fits]
            over, plan = over[chosen], tuple(p[chosen] for p in plan)
        scene, parent = _apply(scene, parent, over, plan)
        rounds += 1
        if capped:
            break
    return Split(scene, parent, rounds, capped, max_extent, cap)


def _children_plan(scales: torch.Tensor, opacities: torch.Tensor, max_extent: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For Gaussians of scales [P, 3], opacities [P]: (axis [P], child sigma s' [P], keep [P, J] bool (children
    that can show: the renderer skips opacities under ALPHA_MIN), offsets [P, J] (world units along the axis), linear
    opacity factors [P, J] = w_j * s / s') over J child slots."""
    s, axis = scales.max(dim=-1)
    child = torch.maximum(torch.full_like(s, max_extent / 3 * (1 - 1e-4)), s / MAX_FACTOR).minimum(s / MIN_FACTOR)
    kernel = (s * s - child * child).clamp(min=0).sqrt()
    spacing = SPACING * kernel * child / s  # SPACING x the width of kernel-sample x child: the sum's ripple <= 1%
    half = torch.ceil(TRUNCATE * kernel / spacing).long().clamp(min=1)  # children each side of the middle
    most = int(half.max())
    j = torch.arange(-most, most + 1, device=scales.device, dtype=scales.dtype)  # [J]
    slots = j.abs()[None] <= half[:, None]
    offsets = j[None] * spacing[:, None]  # [P, J]
    weights = torch.exp(-0.5 * (offsets / kernel[:, None].clamp(min=1e-12)) ** 2) * slots
    factors = weights / weights.sum(-1, keepdim=True) * (s / child)[:, None]
    keep = slots & (factors * opacities[:, None] * GAINS[-1] >= ALPHA_MIN)  # fainter ones never render: dropped
    return axis, child, keep, offsets, factors


def _fit_gain(opacity: torch.Tensor, child: torch.Tensor, offsets: torch.Tensor, factors: torch.Tensor,
              sigma: torch.Tensor) -> torch.Tensor:
    """[P] the gain g in GAINS for which the children's composited alpha 1 - prod_j(1 - min(g o f_j, max) e
    G_j(x)) best fits the parent's o e G(x) along the axis (x in 0..3 sigma) and across it (e: the
    perpendicular falloff, 1 down to 0.2); opacity [P], child sigma [P], offsets/factors [P, J], sigma [P]."""
    x = torch.linspace(0, 3, 13, device=opacity.device, dtype=opacity.dtype)[None] * sigma[:, None]  # [P, X]
    falloff = torch.tensor([1.0, 0.6, 0.2], device=opacity.device, dtype=opacity.dtype)  # [E]
    target = opacity[:, None, None] * falloff[None, :, None] * torch.exp(-0.5 * (x / sigma[:, None]) ** 2)[:, None]
    shapes = torch.exp(-0.5 * ((x[:, :, None] - offsets[:, None]) / child[:, None, None]) ** 2)  # [P, X, J]
    errors = []
    for gain in GAINS:
        peak = (gain * opacity[:, None] * factors).clamp(max=OPACITY_MAX)  # [P, J]
        alpha = peak[:, None, None] * falloff[None, :, None, None] * shapes[:, None]  # [P, E, X, J]
        composite = 1 - torch.prod(1 - alpha, dim=-1)  # [P, E, X]
        errors.append(((composite - target) ** 2).sum((1, 2)))
    best = torch.stack(errors, dim=-1).argmin(-1)
    return torch.tensor(GAINS, device=opacity.device, dtype=opacity.dtype)[best]


def _apply(scene: SplatScene, parent: torch.Tensor, over: torch.Tensor,
           plan: tuple[torch.Tensor, ...]) -> tuple[SplatScene, torch.Tensor]:
    """Replace the Gaussians `over` [P] by their children (see `_children_plan`); children go at the end."""
    axis, child, keep, offsets, factors = plan
    s = scene.scales[over].gather(1, axis[:, None])[:, 0]
    opacity = scene.opacities[over]
    gain = torch.cat([_fit_gain(opacity[k:k + FIT_CHUNK], child[k:k + FIT_CHUNK], offsets[k:k + FIT_CHUNK],
                                factors[k:k + FIT_CHUNK], s[k:k + FIT_CHUNK]) for k in range(0, len(over), FIT_CHUNK)])
    direction = rotation_matrices(scene.quats[over]).gather(2, axis[:, None, None].expand(-1, 3, 1))[..., 0]  # [P, 3]
    index, slot = torch.nonzero(keep, as_tuple=True)  # per child: its parent's row in `over`, its slot
    source = over[index]
    scales = scene.scales[source].clone()
    scales.scatter_(1, axis[index, None], child[index, None])
    means = scene.means[source] + direction[index] * offsets[index, slot, None]
    opacities = (gain[index] * opacity[index] * factors[index, slot]).clamp(max=OPACITY_MAX)
    stay = torch.ones(len(scene), dtype=torch.bool, device=scene.means.device)
    stay[over] = False
    kept = scene.subset(stay)
    children = SplatScene(means, scene.quats[source], scales, opacities, scene.sh_dc[source], scene.sh_rest[source],
                          scene.degree)
    joined = SplatScene(*(torch.cat([getattr(kept, name), getattr(children, name)]) for name in
                          ("means", "quats", "scales", "opacities", "sh_dc", "sh_rest")), scene.degree)
    return joined, torch.cat([parent[stay], parent[source]])


def split_ply(source: SplatPly, rows: np.ndarray, scene: SplatScene) -> SplatPly:
    """The file to write for a split scene: source's records at rows [M] (each Gaussian's source row), with x, y,
    z, scale_* (log), opacity (logit) from `scene` [M] and every other property (rotation, colours, normals, extra
    properties) the source row's; in memory, with the vertex count updated (write_splat and the compressed
    writer take it as they take the source)."""
    vertices = np.array(source.vertices[rows])
    columns = {"x": scene.means[:, 0], "y": scene.means[:, 1], "z": scene.means[:, 2],
               "opacity": torch.logit(scene.opacities.double(), eps=1e-7)}
    columns |= {f"scale_{i}": scene.scales[:, i].log() for i in range(3)}
    for name, value in columns.items():
        vertices[name] = value.detach().cpu().numpy()
    return replace(source, header=_with_vertex_count(source.header, len(rows)), vertices=vertices, packed=None)
