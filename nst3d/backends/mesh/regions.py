"""Several styles on one asset (`--style-map NAME=IMAGE`): which style group each texture slot belongs to.
The renders' mask is then [V, G, H, W], channel g covering group g, and nst3d.losses.Objective (with one
StyleTarget per channel) styles each group over its own pixels.
"""

from __future__ import annotations

from nst3d.errors import UserError


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
