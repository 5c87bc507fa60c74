"""Several styles on one asset (`--style-map NAME=IMAGE`): one Objective per style group, each group's style
loss counted over its own pixels. The renders' mask is then [V, G, H, W], channel g covering group g.

RegionObjective has the call signature of nst3d.losses.Objective, so the one loop and nst3d.eval use it as
they are; VGG runs once per step, whatever the number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nst3d.errors import UserError
from nst3d.losses import EPS, Objective, content_loss, downsample, gram_loss, style_term, tv_loss


def match_style_map(names: list[str], slot_aliases: list[set[str]]) -> list[int]:
    """Group of each slot: 0 for the default style, k for the k-th style-map name (1-based).

    A name matches every slot whose material, object or node is called that. Unknown names are errors.
    """
    groups = [0] * len(slot_aliases)
    for k, name in enumerate(names, start=1):
        hits = [i for i, aliases in enumerate(slot_aliases) if name in aliases]
        if not hits:
            known = sorted({a for aliases in slot_aliases for a in aliases if a})
            raise UserError(f"--style-map names '{name}', which is no material or object of this asset; "
                            f"known names: {', '.join(known) or '(none)'}")
        for i in hits:
            groups[i] = k
    return groups


def _showing(group_mask: torch.Tensor) -> torch.Tensor | slice:
    """The views [V] of a group's mask [V, H, W] that show any of it (every view: a plain slice, no copy).
    A view without the group says nothing about its style: counted, it would add a distance of 1 (an empty
    Gram matrix against the target) to the report and dilute the group's gradient in the loss."""
    shown = group_mask.flatten(1).sum(1) > 0
    return slice(None) if bool(shown.all()) else shown


@dataclass
class RegionObjective:
    """objectives[g] styles the pixels of mask channel g, in the views that show it; content and TV terms use
    the union of the masks. Groups absent from a batch are skipped; present ones weigh by their share of the
    object's pixels."""

    objectives: list[Objective]

    @property
    def vgg(self):
        return self.objectives[0].vgg

    @property
    def target(self):
        return self.objectives[0].target

    @property
    def content_layer(self) -> str:
        return self.objectives[0].content_layer

    @property
    def content_weight(self) -> float:
        return self.objectives[0].content_weight

    @torch.no_grad()
    def content_features(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.objectives[0].content_features(rgb)

    def _weights(self, mask: torch.Tensor) -> list[float]:
        area = mask.sum((0, 2, 3))
        return (area / area.sum().clamp(min=EPS)).tolist()

    def __call__(self, rgb: torch.Tensor, mask: torch.Tensor | None,
                 content: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if mask is None or mask.shape[1] != len(self.objectives):
            raise ValueError("RegionObjective needs a [V, G, H, W] mask with one channel per style group")
        first = self.objectives[0]
        layers = first.target.layers
        taps = list(dict.fromkeys([*layers, first.content_layer]))
        feats = first.vgg(rgb, taps)
        scales = [s for s in first.style_scales if s != 1.0]
        small = {s: first.vgg(downsample(rgb, s), layers) for s in scales}
        style = rgb.new_zeros(())
        for g, (objective, weight) in enumerate(zip(self.objectives, self._weights(mask), strict=True)):
            if weight <= 0:
                continue
            views = _showing(mask[:, g])
            m = mask[views, g:g + 1]
            term = sum(style_term(objective.loss, feats[t][views], objective.target, t, m) for t in layers)
            for s in scales:
                sm = downsample(m, s)
                term = term + sum(style_term(objective.loss, small[s][t][views], objective.target, f"{t}@{s:g}",
                                             sm) for t in layers)
            style = style + weight * objective.style_weight * term / (len(layers) * len(first.style_scales))
        union = mask.sum(1, keepdim=True).clamp(max=1)
        terms = {"style": style}
        total = style
        if content is not None and first.content_weight > 0:
            terms["content"] = content_loss(feats[first.content_layer], content, union)
            total = total + first.content_weight * terms["content"]
        if first.tv_weight > 0:
            terms["tv"] = tv_loss(rgb, union)
            total = total + first.tv_weight * terms["tv"]
        terms["total"] = total
        return terms

    @torch.no_grad()
    def style_distance(self, rgb: torch.Tensor, mask: torch.Tensor | None) -> float:
        """Each group's Gram distance to its own style over its own pixels, weighted by pixel share."""
        if mask is None:
            raise ValueError("RegionObjective.style_distance needs the per-group mask")
        feats = self.vgg(rgb, self.target.layers)
        total = 0.0
        for g, (objective, weight) in enumerate(zip(self.objectives, self._weights(mask), strict=True)):
            if weight <= 0:
                continue
            layers = objective.target.layers
            views = _showing(mask[:, g])
            total += weight * float(sum(gram_loss(feats[t][views], objective.target.grams[t], mask[views, g:g + 1])
                                        for t in layers) / len(layers))
        return total
