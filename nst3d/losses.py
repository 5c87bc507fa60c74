"""Style, content and smoothness losses: pure functions over VGG features, plus the StyleTarget that holds
the style images' statistics (computed once per run) and the Objective that combines the named terms (one
objective for one style and for several styles by region, `--style-map`).

Feature maps are [B, C, H, W]; masks are [B, 1, H, W] in [0, 1] (1 = asset pixel) or None (all pixels).
Every style term is normalised by the size of its target, so each layer weighs about the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from nst3d.features import VGGFeatures
from nst3d.sampling import evenly_spaced_indices

LOSS_KINDS = ("gram", "adain", "nnfm")
EPS = 1e-8
NNFM_MAX_STYLE_TOKENS = 8192
NNFM_CHUNK = 4096


def resize_mask(mask: torch.Tensor | None, features: torch.Tensor) -> torch.Tensor | None:
    """Mask [B, 1, H, W] resampled (area) to the feature map's size, [B, 1, h, w]."""
    if mask is None or mask.shape[-2:] == features.shape[-2:]:
        return mask
    return F.interpolate(mask, size=features.shape[-2:], mode="area")


class _Gram(torch.autograd.Function):
    """Per-view F diag(w) F^T for F [B, C, P] and constant w [B, P] (or None: all ones), unnormalised.

    Hand-written backward, (dG + dG^T) F diag(w): one matrix product per view where autograd would do two
    (it sees F twice) plus a copy of F to un-stack the views. One mm per view is also 2-3x faster on a CPU
    than a batched matmul with a transposed operand.
    """

    @staticmethod
    def forward(ctx, flat: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        weighted = flat if weights is None else flat * weights[:, None]
        ctx.save_for_backward(weighted)
        out = flat.new_empty(flat.shape[0], flat.shape[1], flat.shape[1])
        for view in range(flat.shape[0]):
            torch.mm(weighted[view], flat[view].T, out=out[view])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weighted,) = ctx.saved_tensors
        grad_flat = torch.empty_like(weighted)
        for view in range(weighted.shape[0]):
            torch.mm(grad[view] + grad[view].T, weighted[view], out=grad_flat[view])
        return grad_flat, None


def gram(features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrices [B, C, C], averaged over (masked) positions (Gatys et al., per-position normalised)."""
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    mask = resize_mask(mask, features)
    if mask is None:
        return _Gram.apply(flat, None) / flat.shape[-1]
    weights = mask.reshape(b, -1)
    count = weights.sum(1).clamp(min=EPS)[:, None, None]
    if weights.requires_grad:  # a differentiable mask: let autograd handle every factor
        return (flat * weights[:, None]) @ flat.transpose(1, 2) / count
    return _Gram.apply(flat, weights) / count


def mean_std(features: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over (masked) positions, each [B, C] (as in AdaIN)."""
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1)
    mask = resize_mask(mask, features)
    weights = torch.ones_like(flat[:, :1]) if mask is None else mask.reshape(b, 1, -1)
    total = weights.sum(-1).clamp(min=EPS)
    mean = (flat * weights).sum(-1) / total
    var = ((flat - mean[..., None]) ** 2 * weights).sum(-1) / total
    return mean, (var + 1e-5).sqrt()


def gram_distances(features: torch.Tensor, target_gram: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per view [B]: squared Frobenius distance between Gram matrices relative to the target's."""
    diff = gram(features, mask) - target_gram
    return diff.pow(2).sum((-2, -1)) / target_gram.pow(2).sum().clamp(min=EPS)


def gram_loss(features: torch.Tensor, target_gram: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """gram_distances averaged over B."""
    return gram_distances(features, target_gram, mask).mean()


def mean_std_distances(features: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per view [B]: AdaIN statistic matching, squared distance of means and stds relative to the target's."""
    mean, std = mean_std(features, mask)
    scale = (target_mean.pow(2).sum() + target_std.pow(2).sum()).clamp(min=EPS)
    return ((mean - target_mean).pow(2).sum(-1) + (std - target_std).pow(2).sum(-1)) / scale


def mean_std_loss(features: torch.Tensor, target_mean: torch.Tensor, target_std: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean_std_distances averaged over B."""
    return mean_std_distances(features, target_mean, target_std, mask).mean()


def nnfm_distances(features: torch.Tensor, style_tokens: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per view [B]: nearest-neighbour feature matching (ARF), the mean over (masked) positions of the cosine
    distance from each feature to its nearest style feature. style_tokens: [N, C], unit length."""
    b, c = features.shape[:2]
    tokens = F.normalize(features.reshape(b, c, -1).transpose(1, 2), dim=-1)  # [B, P, C]
    mask = resize_mask(mask, features)
    weights = torch.ones(tokens.shape[:2], device=features.device) if mask is None else mask.reshape(b, -1)
    nearest = []
    for start in range(0, tokens.shape[1], NNFM_CHUNK):
        chunk = tokens[:, start:start + NNFM_CHUNK]
        with torch.no_grad():
            index = (chunk @ style_tokens.T).argmax(-1)  # [B, p]
        nearest.append((chunk * style_tokens[index]).sum(-1))  # cosine similarity to the nearest, [B, p]
    cosine = torch.cat(nearest, dim=1)
    return ((1 - cosine) * weights).sum(-1) / weights.sum(-1).clamp(min=EPS)


def nnfm_loss(features: torch.Tensor, style_tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """nnfm_distances averaged over B."""
    return nnfm_distances(features, style_tokens, mask).mean()


def content_loss(features: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared feature difference relative to the target's mean square, over (masked) positions."""
    mask = resize_mask(mask, features)
    sq = (features - target).pow(2)
    scale = target.pow(2).mean().clamp(min=EPS)
    if mask is None:
        return sq.mean() / scale
    return (sq * mask).sum() / (mask.sum() * features.shape[1]).clamp(min=EPS) / scale


def tv_loss(rgb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Total variation: mean squared difference between neighbouring pixels [B, 3, H, W] (inside the mask)."""
    dx = (rgb[..., :, 1:] - rgb[..., :, :-1]).pow(2)
    dy = (rgb[..., 1:, :] - rgb[..., :-1, :]).pow(2)
    if mask is None:
        return dx.mean() + dy.mean()
    mx = mask[..., :, 1:] * mask[..., :, :-1]
    my = mask[..., 1:, :] * mask[..., :-1, :]
    return (dx * mx).sum() / (3 * mx.sum()).clamp(min=EPS) + (dy * my).sum() / (3 * my.sum()).clamp(min=EPS)


def downsample(rgb: torch.Tensor, scale: float) -> torch.Tensor:
    """[B, C, H, W] resized by `scale` with an area filter (scale 1 returns the input)."""
    if scale == 1.0:
        return rgb
    size = (max(8, round(rgb.shape[-2] * scale)), max(8, round(rgb.shape[-1] * scale)))
    return F.interpolate(rgb, size=size, mode="area")


@dataclass
class StyleTarget:
    """Statistics of one or more style images, blended by weight; computed once per run.

    grams: {tap: [C, C]}; means/stds: {tap: [C]}; tokens: {tap: [N, C]} unit features for NNFM.
    """

    layers: list[str]
    weights: list[float]
    grams: dict[str, torch.Tensor] = field(default_factory=dict)
    means: dict[str, torch.Tensor] = field(default_factory=dict)
    stds: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def from_images(cls, vgg: VGGFeatures, images: Sequence[torch.Tensor], layers: Sequence[str],
                    weights: Sequence[float] | None = None, scales: Sequence[float] = (1.0,)) -> StyleTarget:
        """images: style images [3, H, W] in [0, 1]; weights: blend weights (normalised to sum 1).

        With several `scales`, the statistics of each are kept under "tap@scale" for scale != 1.
        """
        weights = [1.0] * len(images) if weights is None else list(weights)
        total = sum(weights)
        weights = [w / total for w in weights]
        target = cls(list(layers), weights)
        device = vgg.mean.device
        for image, weight in zip(images, weights, strict=True):
            mean, std = mean_std(image[None].to(device))  # the palette, for NNFM's colour term
            _accumulate(target.means, "rgb", weight * mean[0])
            _accumulate(target.stds, "rgb", weight * std[0])
            for scale in scales:
                feats = vgg(downsample(image[None].to(device), scale), layers)
                for tap, f in feats.items():
                    key = tap if scale == 1.0 else f"{tap}@{scale:g}"
                    mean, std = mean_std(f)
                    _accumulate(target.grams, key, weight * gram(f)[0])
                    _accumulate(target.means, key, weight * mean[0])
                    _accumulate(target.stds, key, weight * std[0])
                    tokens = F.normalize(f[0].reshape(f.shape[1], -1).T, dim=-1)
                    # Each style contributes tokens in proportion to its weight.
                    keep = max(1, int(NNFM_MAX_STYLE_TOKENS * weight))
                    if tokens.shape[0] > keep:
                        tokens = tokens[evenly_spaced_indices(tokens.shape[0], keep, tokens.device)]
                    target.tokens[key] = tokens if key not in target.tokens else torch.cat([target.tokens[key], tokens])
        return target


def _accumulate(store: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    store[key] = value if key not in store else store[key] + value


def style_distances(kind: str, features: torch.Tensor, target: StyleTarget, key: str,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """One layer's style loss of the given kind (gram | adain | nnfm), per view [B]."""
    if kind == "gram":
        return gram_distances(features, target.grams[key], mask)
    if kind == "adain":
        return mean_std_distances(features, target.means[key], target.stds[key], mask)
    if kind == "nnfm":
        return nnfm_distances(features, target.tokens[key], mask)
    raise ValueError(f"unknown style loss {kind!r}; use one of {LOSS_KINDS}")


@dataclass
class Views:
    """One batch of rendered views as every term sees it. Device rule: everything here lives on rgb's device
    (the mask comes from the same render, the features from the VGG that rgb was sent to, the content features
    from that VGG too).

    rgb [V, 3, H, W]; groups [V, G, H, W]: the pixels of each style group (None: one group, every pixel);
    union [V, 1, H, W]: the asset's pixels (None: all); features {tap, or "tap@scale" for scale != 1:
    [V, C, h, w]}; content: the content target features [V, C, h, w] or None; style_levels: [V] the style
    level each view asks for (Objective.style_levels), or None.
    """

    rgb: torch.Tensor
    groups: torch.Tensor | None
    union: torch.Tensor | None
    features: dict[str, torch.Tensor]
    content: torch.Tensor | None
    style_levels: torch.Tensor | None = None

    @cached_property
    def shown(self) -> torch.Tensor:
        """[V, G]: 1 where view v shows any of group g, else 0 (needs groups)."""
        return (self.groups.sum((2, 3)) > 0).to(self.groups.dtype)

    @cached_property
    def share(self) -> torch.Tensor:
        """[G]: each group's share of the batch's pixels (needs groups)."""
        area = self.groups.sum((0, 2, 3))
        return area / area.sum().clamp(min=EPS)

    def over_groups(self, per_view: Callable[[int, torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
        """Σ_g share_g · (mean of per_view(g, groups[:, g:g+1]) [V] over the views that show group g). A view
        without the group adds nothing, by weight 0 rather than by indexing, so no value goes to the host.
        Without groups: the plain mean over views."""
        if self.groups is None:
            return per_view(0, None).mean()
        total = None
        for g in range(self.groups.shape[1]):
            shown = self.shown[:, g]
            mean = (per_view(g, self.groups[:, g:g + 1]) * shown).sum() / shown.sum().clamp(min=1)
            total = self.share[g] * mean if total is None else total + self.share[g] * mean
        return total


@dataclass(frozen=True)
class Term:
    """A named loss term: value(views) -> scalar tensor, or None where it does not apply to this batch
    (decided from shapes and settings, never from tensor values). The objective's total is Σ weight · value."""

    name: str
    weight: float
    value: Callable[[Views], torch.Tensor | None]


@dataclass
class Objective:
    """The weighted sum of named terms for rendered views: style (per style group, per tap and scale), the NNFM
    colour term (per group), content and TV (on the union of the groups' pixels), plus any `extra_terms`
    (e.g. a multi-view consistency term that needs the backend's warps).

    call(rgb [V, 3, H, W], mask [V, G, H, W] | None, content features | None) -> named terms, including
    "total" (the one to minimise). One style: G = 1 (or no mask). Several (`--style-map`): `channel_targets`
    gives the StyleTarget of each mask channel; channels that share a StyleTarget object are one style group
    (its mask the sum of theirs), so a map that gives every channel the same target is the single-style
    objective. Groups weigh by their share of the batch's pixels; a view that does not show a group adds
    nothing to that group's terms. `target` is the first group's (for reports); all groups use its taps.

    style_levels: the scales of the style image that views may ask for (world-size strokes: a view whose height
    is k stroke scales asks for the style shrunk by 1/k); every target then holds the statistics of the style
    shrunk by level x style scale. A call's style_levels [V] (on rgb's device) picks each view's; None: level 1.
    """

    vgg: VGGFeatures
    target: StyleTarget
    content_layer: str
    loss: str = "gram"
    style_weight: float = 1.0
    content_weight: float = 0.1
    tv_weight: float = 0.0
    style_scales: tuple[float, ...] = (1.0,)
    style_levels: tuple[float, ...] = (1.0,)
    channel_targets: tuple[StyleTarget, ...] = ()
    extra_terms: tuple[Term, ...] = ()

    def __post_init__(self) -> None:
        if any(t.layers != self.target.layers for t in self.channel_targets):
            raise ValueError("every style group's target must use the same style taps")

    @property
    def taps(self) -> list[str]:
        return list(dict.fromkeys([*self.target.layers, self.content_layer]))

    @cached_property
    def style_groups(self) -> list[tuple[StyleTarget, list[int]]]:
        """(target, its mask channels) per style group, in order of first appearance."""
        groups: dict[int, tuple[StyleTarget, list[int]]] = {}
        for channel, target in enumerate(self.channel_targets or (self.target,)):
            groups.setdefault(id(target), (target, []))[1].append(channel)
        return list(groups.values())

    @torch.no_grad()
    def content_features(self, rgb: torch.Tensor) -> torch.Tensor:
        """Content target features [V, C, h, w] of the original appearance."""
        return self.vgg(rgb, [self.content_layer])[self.content_layer]

    def terms(self) -> list[Term]:
        terms = [Term("style", self.style_weight, self._style)]
        if self.loss == "nnfm":
            # NNFM matches textures at relu3 only; like ARF's colour transfer, also match the style's palette.
            terms.append(Term("color", self.style_weight, self._color))
        if self.content_weight > 0:
            terms.append(Term("content", self.content_weight, self._content))
        if self.tv_weight > 0:
            terms.append(Term("tv", self.tv_weight, self._tv))
        return [*terms, *self.extra_terms]

    def views(self, rgb: torch.Tensor, mask: torch.Tensor | None, content: torch.Tensor | None,
              taps: list[str], scales: tuple[float, ...], style_levels: torch.Tensor | None = None) -> Views:
        """The Views record for rgb [V, 3, H, W]: VGG features at `taps` (and the style taps at each scale)."""
        channels = len(self.channel_targets) or 1
        if (mask is None and channels > 1) or (mask is not None and mask.shape[1] != channels):
            raise ValueError(f"this objective needs a [V, {channels}, H, W] mask (one channel per style group)")
        groups = mask
        if mask is not None and channels > 1:
            groups = torch.cat([sum(mask[:, c:c + 1] for c in chans) for _, chans in self.style_groups], dim=1)
        union = mask if mask is None or mask.shape[1] == 1 else mask.sum(1, keepdim=True).clamp(max=1)
        features = self.vgg(rgb, taps)
        for scale in scales:
            if scale != 1.0:
                small = self.vgg(downsample(rgb, scale), self.target.layers)
                features.update({f"{tap}@{scale:g}": f for tap, f in small.items()})
        return Views(rgb, groups, union, features, content, style_levels)

    def __call__(self, rgb: torch.Tensor, mask: torch.Tensor | None, content: torch.Tensor | None,
                 style_levels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        views = self.views(rgb, mask, content, self.taps, self.style_scales, style_levels)
        terms, total = {}, None
        for term in self.terms():
            value = term.value(views)
            if value is not None:
                terms[term.name] = value
                total = term.weight * value if total is None else total + term.weight * value
        terms["total"] = total
        return terms

    def _style(self, views: Views) -> torch.Tensor:
        return views.over_groups(lambda g, mask: self._group_style(views, self.loss, self.style_scales, g, mask))

    def _group_style(self, views: Views, kind: str, scales: tuple[float, ...], group: int,
                     mask: torch.Tensor | None) -> torch.Tensor:
        """Group `group`'s style distance per view [V], averaged over its taps and scales, each view against the
        style at its own level (views.style_levels; a view counts only the level it asks for, by weight, so no
        value goes to the host)."""
        if views.style_levels is None or self.style_levels == (1.0,):
            return self._level_style(views, kind, scales, group, mask, 1.0)
        total = 0
        for level in self.style_levels:
            chosen = (views.style_levels == level).to(views.rgb.dtype)
            total = total + chosen * self._level_style(views, kind, scales, group, mask, level)
        return total

    def _level_style(self, views: Views, kind: str, scales: tuple[float, ...], group: int,
                     mask: torch.Tensor | None, level: float) -> torch.Tensor:
        """Group `group`'s style distance per view [V] against the style shrunk by `level`."""
        target, layers = self.style_groups[group][0], self.target.layers
        total = 0
        for scale in scales:
            suffix, small = ("", mask) if scale == 1.0 else (f"@{scale:g}", None if mask is None else
                                                             downsample(mask, scale))
            key = "" if scale * level == 1.0 else f"@{scale * level:g}"
            for tap in layers:
                total = total + style_distances(kind, views.features[tap + suffix], target, tap + key, small)
        return total / (len(layers) * len(scales))

    def _color(self, views: Views) -> torch.Tensor:
        def per_view(group: int, mask: torch.Tensor | None) -> torch.Tensor:
            target = self.style_groups[group][0]
            return mean_std_distances(views.rgb, target.means["rgb"], target.stds["rgb"], mask)
        return views.over_groups(per_view)

    def _content(self, views: Views) -> torch.Tensor | None:
        if views.content is None:
            return None
        return content_loss(views.features[self.content_layer], views.content, views.union)

    def _tv(self, views: Views) -> torch.Tensor:
        return tv_loss(views.rgb, views.union)

    @torch.no_grad()
    def style_distance(self, rgb: torch.Tensor, mask: torch.Tensor | None) -> float:
        """The report's metric: each group's Gram distance to its own style over its own pixels (relative,
        averaged over the style taps at full scale and the views that show the group), weighted by pixel
        share. One style: nst3d.losses.style_distance."""
        views = self.views(rgb, mask, None, self.target.layers, (1.0,))
        return float(views.over_groups(lambda g, m: self._group_style(views, "gram", (1.0,), g, m)))


@torch.no_grad()
def style_distance(vgg: VGGFeatures, rgb: torch.Tensor, target: StyleTarget,
                   mask: torch.Tensor | None = None) -> float:
    """Gram distance to the style (relative, averaged over style taps and views): the report's metric."""
    feats = vgg(rgb, target.layers)
    return float(sum(gram_loss(feats[t], target.grams[t], mask) for t in target.layers) / len(target.layers))


@torch.no_grad()
def content_distance(vgg: VGGFeatures, rgb: torch.Tensor, content_rgb: torch.Tensor, layer: str,
                     mask: torch.Tensor | None = None) -> float:
    """Relative feature distance to the content at `layer` (0 = identical)."""
    feats = vgg(torch.cat([rgb, content_rgb]), [layer])[layer]
    return float(content_loss(feats[: len(rgb)], feats[len(rgb):], mask))
