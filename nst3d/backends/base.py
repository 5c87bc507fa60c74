"""The protocol between the stylization loop and a backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class Render:
    """Rendered views.

    rgb:   [V, 3, H, W] linear-ish display RGB, nominally in [0, 1] (not clamped while optimising).
    mask:  [V, 1, H, W] in [0, 1], 1 where the asset covers the pixel; None means every pixel counts.
    depth: [V, 1, H, W] camera-space z (OpenCV), 0 where nothing was hit; None if the backend has none.
    style_levels: [V] the style image's scale each view asks for (nst3d.losses.Objective's style_levels; world-size
    strokes), None: every view at the style's own scale.

    Device rule: rgb, mask, depth and style_levels always live on one device (checked here, on construction). A
    backend's `render`/`render_content` return Renders on its working device (the loop's VGG's); renders it makes for
    keeping (e.g. held-out views, previews) may be on the CPU. Whoever computes with a Render and another
    device's tensors moves the whole Render once, with `to(device)`: nst3d.eval moves every Render to the
    objective's VGG device at the entry of evaluate_renders, per_view_baseline and evaluate_with_renders.
    """

    rgb: torch.Tensor
    mask: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    style_levels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("mask", "depth", "style_levels"):
            other = getattr(self, name)
            if other is not None and other.device != self.rgb.device:
                raise ValueError(f"a Render's {name} is on {other.device} and its rgb on {self.rgb.device}: "
                                 "rgb, mask, depth and style_levels must share one device")

    @property
    def device(self) -> torch.device:
        return self.rgb.device

    def to(self, device: torch.device | str) -> Render:
        """This Render with all its tensors on `device` (tensors already there are not copied)."""
        move = (lambda t: None if t is None else t.to(device))
        return Render(self.rgb.to(device), move(self.mask), move(self.depth), move(self.style_levels))


class Backend(Protocol):
    """What the loop needs from a representation.

    Views are opaque to the loop (an nst3d.cameras.Cameras, or anything the backend likes). If a views
    object has an attribute `key` that is not None, the loop caches the content features of those views
    under that key (the backend promises the same key means the same content render).
    """

    #: True if `render` runs without autograd and gradients go back through `backward_image`
    #: (deferred back-propagation, for NeRFs that cannot hold a full view's graph in memory).
    deferred: bool

    def parameters(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups ({"params": [...], "lr": ...}) of the appearance only."""
        ...

    def train_views(self, step: int, generator: torch.Generator) -> Any:
        """The views to render at this optimisation step (may be jittered)."""
        ...

    def render(self, views: Any) -> Render:
        """Render the current (stylized) appearance; differentiable unless `deferred`."""
        ...

    def render_content(self, views: Any) -> Render:
        """Render the original appearance (the content target), without gradients."""
        ...

    def backward_image(self, views: Any, grad_rgb: torch.Tensor) -> None:
        """Deferred backends only: accumulate d loss / d params from grad_rgb [V, 3, H, W]."""
        ...


def pool_backgrounds(count: int, white_share: float, generator: torch.Generator) -> torch.Tensor:
    """[count, 3] background colours for a training-view pool: white for a `white_share` of the views (as the
    report and viewers show assets), a random mid-range colour for the others."""
    backgrounds = 0.1 + 0.8 * torch.rand(count, 3, generator=generator)
    backgrounds[torch.rand(count, generator=generator) < white_share] = 1.0
    return backgrounds
