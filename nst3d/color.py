"""Colour preservation (Gatys et al., "Preserving color in neural artistic style transfer", 2016).

- luminance: stylize luminance only; the result keeps the content's chroma (YIQ recombination).
- histogram: recolour the style image so its colour mean and covariance match the content's palette.

Colours are [3, ...] tensors in RGB [0, 1] (any trailing shape: an image [3, H, W], texels, points [3, N]).
"""

from __future__ import annotations

import torch

PRESERVE_MODES = ("none", "luminance", "histogram")

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]])


def rgb_to_yiq(rgb: torch.Tensor) -> torch.Tensor:
    """[3, ...] RGB -> [3, ...] YIQ."""
    return torch.einsum("ij,j...->i...", _RGB_TO_YIQ.to(rgb), rgb)


def yiq_to_rgb(yiq: torch.Tensor) -> torch.Tensor:
    """[3, ...] YIQ -> [3, ...] RGB."""
    return torch.einsum("ij,j...->i...", torch.linalg.inv(_RGB_TO_YIQ).to(yiq), yiq)


def keep_content_chroma(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Luminance from `stylized`, chroma (I, Q) from `content`; both [3, ...] of the same shape."""
    mixed = rgb_to_yiq(content).clone()
    mixed[0] = rgb_to_yiq(stylized)[0]
    return yiq_to_rgb(mixed)


def gray(rgb: torch.Tensor) -> torch.Tensor:
    """Images [..., 3, H, W] -> their luminance repeated in 3 channels (what luminance mode's style loss sees)."""
    y = (rgb * _RGB_TO_YIQ[0].to(rgb).view(3, 1, 1)).sum(-3, keepdim=True)
    return y.expand_as(rgb)


def luminance_style(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style's luminance as a gray RGB image [3, H, W], its mean/std matched to the content's
    luminance (so the strokes, not the style's brightness, transfer)."""
    ys, yc = rgb_to_yiq(style)[0], rgb_to_yiq(content.reshape(3, -1))[0]
    y = (ys - ys.mean()) / ys.std().clamp(min=1e-5) * yc.std() + yc.mean()
    return y.clamp(0, 1).expand(3, *y.shape).clone()


def match_color(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Affinely recolour `style` [3, ...] so its colour mean and covariance equal `content`'s [3, ...]."""
    s = style.reshape(3, -1).double()
    c = content.reshape(3, -1).double()
    mu_s, mu_c = s.mean(1, keepdim=True), c.mean(1, keepdim=True)
    cov_s = torch.cov(s) + 1e-5 * torch.eye(3, dtype=s.dtype)
    cov_c = torch.cov(c) + 1e-5 * torch.eye(3, dtype=s.dtype)
    transform = _sqrtm(cov_c) @ torch.linalg.inv(_sqrtm(cov_s))
    out = transform @ (s - mu_s) + mu_c
    return out.reshape(style.shape).clamp(0, 1).to(style.dtype)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive definite matrix."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def prepare_styles(styles: list[torch.Tensor], content: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Style images as the loss should see them under a preservation mode; content: [3, ...] palette."""
    if mode == "none":
        return styles
    if mode == "luminance":
        return [luminance_style(s, content) for s in styles]
    if mode == "histogram":
        return [match_color(s, content) for s in styles]
    raise ValueError(f"unknown colour preservation {mode!r}; use one of {PRESERVE_MODES}")
