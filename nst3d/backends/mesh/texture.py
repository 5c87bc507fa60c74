"""A texture parameterised as a fixed base plus a multi-resolution residual pyramid.

texture = base (the original texels, full resolution, fixed) + upsample(residual), where
residual = levels[0] + up(levels[1] + up(levels[2] + ...)) is composed coarse to fine; `up` is a [1, 2, 1]
blur followed by a bilinear 2x enlargement (smooth, like the EXPAND of a Burt-Adelson pyramid), which removes
each coarse level's own highest frequency: without it, coarse texels that Adam moves independently show as
4-16 texel blocks in the final texture. levels[0] has the "matched" resolution, about one texel per screen pixel
of the finest training views (finer levels would only add texel noise the renders cannot show); each coarser
level has half the resolution and a learning rate scaled by `level_lr_scale` per level, so large-scale strokes
form without the coarse levels overshooting (on Spot, giving the levels down to the whole-object views' density
the full rate raised the held-out style distance from 0.14x to 0.23x of its start: BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

MIN_LEVEL_SIZE = 8


def level_sizes(finest: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels, finest first, halving until `count` levels or MIN_LEVEL_SIZE."""
    sizes = [finest]
    while len(sizes) < count and min(sizes[-1]) // 2 >= MIN_LEVEL_SIZE:
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))
    return sizes


def matched_size(texture_size: tuple[int, int], finest_side: int) -> tuple[int, int]:
    """The residual's finest size: longer side `finest_side` (capped at the texture's), aspect kept."""
    h, w = texture_size
    side = min(finest_side, max(h, w))
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _blur_zero_padded(image: torch.Tensor) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 blur over the last two dims, zero outside (so the operator is symmetric)."""
    x = image * 0.5
    x[..., 1:].add_(image[..., :-1], alpha=0.25)
    x[..., :-1].add_(image[..., 1:], alpha=0.25)
    y = x * 0.5
    y[..., 1:, :].add_(x[..., :-1, :], alpha=0.25)
    y[..., :-1, :].add_(x[..., 1:, :], alpha=0.25)
    return y


class _Blur(torch.autograd.Function):
    """The blur is its own adjoint: backward blurs the gradient (no autograd graph of slices)."""

    @staticmethod
    def forward(ctx, image: torch.Tensor) -> torch.Tensor:
        return _blur_zero_padded(image)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _blur_zero_padded(grad)


def blur(image: torch.Tensor) -> torch.Tensor:
    """[..., H, W] separable [1, 2, 1] / 4 blur, zero-padded (edges of a residual fade towards "no change")."""
    return _Blur.apply(image)


class _Double(torch.autograd.Function):
    """Bilinear 2x enlargement of [..., h, w]; backward by strided adds (3x faster on the CPU than
    upsample_bilinear2d's backward, the largest cost of composing a 1024^2 residual)."""

    @staticmethod
    def forward(ctx, image: torch.Tensor) -> torch.Tensor:
        return F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        for dim in (-1, -2):
            even, odd = grad.unflatten(dim, (-1, 2)).unbind(dim)
            out = (even + odd) * 0.75
            n = out.shape[dim]
            out.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1), alpha=0.25)
            out.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1), alpha=0.25)
            out.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1), alpha=0.25)
            out.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1), alpha=0.25)
            grad = out
        return grad


def bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, C, h, w] -> [1, C, *size], bilinear (align_corners=False), as F.interpolate."""
    if tuple(size) == (2 * image.shape[-2], 2 * image.shape[-1]):
        return _Double.apply(image)
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def enlarge(image: torch.Tensor, size: tuple[int, int], mode: str = "smooth") -> torch.Tensor:
    """[1, C, h, w] -> [1, C, *size]: "smooth" blurs with [1, 2, 1] / 4 at the small size (removing its
    highest frequency, which would otherwise show as texel cells) then interpolates bilinearly;
    "bilinear" / "bicubic" are plain interpolation."""
    if mode == "smooth":
        return bilinear(blur(image), size)
    if mode == "bilinear":
        return bilinear(image, size)
    return F.interpolate(image, size=size, mode=mode, align_corners=False)


class TexturePyramid:
    """One slot's texture: base [3, H, W] (fixed) + the residual pyramid (the parameters)."""

    def __init__(self, base: torch.Tensor, finest: tuple[int, int], count: int = 5, level_lr_scale: float = 0.5,
                 noise: torch.Generator | None = None, upsample: str = "smooth",
                 output: tuple[int, int] | None = None, render_size: tuple[int, int] | None = None):
        """base: [3, H, W] on the working device; finest: (h, w) of levels[0]; noise: start from noise;
        upsample: how coarse levels are enlarged: smooth (bilinear + blur) or bilinear / bicubic;
        output: the residual's resolution when larger than levels[0] (it is then enlarged smoothly too, so
        not even the finest parameters show as texel-sized cells); render_size: the resolution at which the
        training renders sample the residual (bilinearly enlarged, as texture() does; default the output's),
        finer than the residual where renders are supersampled, so they filter it as the final texture is."""
        self.base = base
        self.upsample = upsample
        self.output = output if output is not None and tuple(output) != tuple(finest) else None
        self.sizes = level_sizes(finest, count)
        self.render_size = tuple(render_size or self.output or finest)
        self.level_lr_scale = level_lr_scale
        self.levels = [torch.nn.Parameter(torch.zeros(1, 3, h, w, device=base.device)) for h, w in self.sizes]
        if noise is not None:
            self.base = torch.full_like(base, 0.5)
            self.levels[0].data.copy_((torch.rand(self.levels[0].shape, generator=noise) - 0.5) * 0.5)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [level], "lr": lr * self.level_lr_scale ** k} for k, level in enumerate(self.levels)]

    def residual(self) -> torch.Tensor:
        """[1, 3, h, w] the composed residual at the output resolution (levels[0]'s unless `output`)."""
        out = self.levels[-1]
        for level in reversed(self.levels[:-1]):
            out = level + enlarge(out, tuple(level.shape[-2:]), self.upsample)
        return out if self.output is None else enlarge(out, self.output, self.upsample)

    def render_residual(self) -> torch.Tensor:
        """[1, 3, *render_size] the residual as the training renders sample it (bilinear, as in texture())."""
        residual = self.residual()
        if tuple(residual.shape[-2:]) == self.render_size:
            return residual
        return bilinear(residual, self.render_size)

    def texture(self) -> torch.Tensor:
        """[3, H, W] base + upsampled residual (not clamped)."""
        # Bilinear, as the training renders sample the residual (grid_sample), so the export shows what was optimised.
        up = F.interpolate(self.residual(), size=self.base.shape[-2:], mode="bilinear", align_corners=False)
        return self.base + up[0]


def dilate(texture: torch.Tensor, covered: torch.Tensor, steps: int = 16) -> torch.Tensor:
    """Push texels of covered UV charts outwards into the gutter, `steps` texels (then the rest gets the
    nearest filled ring, repeated until full), so filtering across chart borders shows no seams.

    texture: [C, H, W]; covered: [H, W] bool. Returns a new [C, H, W]; covered texels are unchanged.
    """
    if covered.all() or not covered.any():
        return texture
    image = texture * covered
    weight = covered.float()[None]
    filled = covered.clone()
    kernel = torch.ones(texture.shape[0] + 1, 1, 3, 3, dtype=texture.dtype, device=texture.device)
    stack = torch.cat([image, weight.to(texture)], dim=0)[None]
    out = texture.clone()
    for _ in range(steps):
        summed = F.conv2d(stack, kernel, padding=1, groups=stack.shape[1])[0]
        grow = (summed[-1] > 0) & ~filled
        if not grow.any():
            break
        values = summed[:-1] / summed[-1:].clamp(min=1e-8)
        out = torch.where(grow[None], values, out)
        filled = filled | grow
        stack = torch.cat([out * filled, filled.to(texture)[None]], dim=0)[None]
    return out
