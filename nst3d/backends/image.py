"""The trivial backend: a 2D image whose parameters are its pixels."""

from __future__ import annotations

from typing import Any

import torch

from nst3d.backends.base import Render

MIN_LEVEL_PX = 16  # stylize_image's coarsest level: smaller images carry too few VGG features


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


def stylize_image(content: torch.Tensor, objective, config, init: str = "content", levels: int = 1,
                  on_event=None, should_stop=None) -> torch.Tensor:
    """Stylize content [3, H, W] with `objective`; coarse-to-fine over `levels` scales (each half the next).

    config: a LoopConfig whose steps are shared between the levels. Returns [3, H, W] in [0, 1].
    """
    from dataclasses import replace

    from nst3d.events import ignore
    from nst3d.files import resize_to
    from nst3d.stylize import stylize

    size = max(content.shape[-2:])
    previous = None
    for level in range(levels):
        level_size = max(MIN_LEVEL_PX, size // 2 ** (levels - 1 - level))
        level_content = resize_to(content, level_size) if level < levels - 1 else content
        backend = ImageBackend(level_content, init=init, seed=config.seed)
        if previous is not None:
            upsampled = torch.nn.functional.interpolate(previous[None], size=level_content.shape[-2:],
                                                        mode="bilinear", align_corners=False)
            backend.pixels.data.copy_(upsampled)
        steps = config.steps // levels + (config.steps % levels if level == levels - 1 else 0)
        stage = config.stage if levels == 1 else f"{config.stage} {level_size}px"
        stylize(backend, objective, replace(config, steps=steps, stage=stage), on_event or ignore, should_stop)
        previous = backend.pixels.detach()[0]
    return previous.clamp(0, 1)
