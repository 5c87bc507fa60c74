"""The trivial backend: a 2D image whose parameters are its pixels."""

from __future__ import annotations

from typing import Any

import torch

from nst3d.backends.base import Render


class _WholeImage:
    """The image backend's only view; its key lets the loop cache the content features."""

    key = "image"


class ImageBackend:
    """Optimise the pixels [1, 3, H, W] of an image, starting from the content or from noise."""

    deferred = False

    def __init__(self, content: torch.Tensor, init: str = "content", seed: int = 0, lr: float | None = None):
        """content: [3, H, W] in [0, 1] on the working device."""
        self.content = content[None]
        if init == "content":
            start = self.content.clone()
        elif init == "noise":
            generator = torch.Generator().manual_seed(seed)
            start = torch.rand(self.content.shape, generator=generator).to(content)
        else:
            raise ValueError(f"unknown init {init!r}; use content or noise")
        self.pixels = torch.nn.Parameter(start)
        self.lr = lr

    def parameters(self) -> list[dict[str, Any]]:
        return [{"params": [self.pixels]} | ({"lr": self.lr} if self.lr else {})]

    def train_views(self, step: int, generator: torch.Generator) -> _WholeImage:
        return _WholeImage()

    def render(self, views: Any) -> Render:
        return Render(self.pixels)

    def render_content(self, views: Any) -> Render:
        return Render(self.content)

    def backward_image(self, views: Any, grad_rgb: torch.Tensor) -> None:
        raise NotImplementedError("the image backend back-propagates directly")

    def result(self) -> torch.Tensor:
        """The stylized image [3, H, W], clamped to [0, 1]."""
        return self.pixels.detach()[0].clamp(0, 1)
