"""Index arithmetic shared by every module that thins a long list out evenly."""

from __future__ import annotations

import torch


def evenly_spaced_indices(count: int, keep: int, device: torch.device | str | None = None) -> torch.Tensor:
    """`min(keep, count)` indices [k] int64 spread evenly over range(count), first and last included.

    Integer arithmetic (i * (count - 1) // (keep - 1)), so exact for any count: a float32 torch.linspace
    rounds indices past 2^24 (16.7M) to the nearest representable float, and its last one could land on
    `count` itself, one past the end.
    """
    if keep >= count:
        return torch.arange(count, device=device)
    if keep <= 1:
        return torch.zeros(max(keep, 0), dtype=torch.int64, device=device)
    return torch.arange(keep, dtype=torch.int64, device=device) * (count - 1) // (keep - 1)
