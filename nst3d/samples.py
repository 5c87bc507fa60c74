"""Built-in samples the project makes itself (no downloads): a content picture and a procedural
painting-like style. `python -m nst3d.samples DIR` writes them as PNGs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return x, y


def content_picture(size: int = 256) -> torch.Tensor:
    """A small landscape (sky, sun, hills, a house with a red roof, a tree), [3, size, size] in [0, 1]."""
    x, y = _grid(size)
    img = np.zeros((size, size, 3), np.float32)
    sky = np.stack([0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.1 * y], -1)
    img[:] = sky
    sun = (x - 0.78) ** 2 + (y - 0.2) ** 2 < 0.07**2
    img[sun] = (1.0, 0.9, 0.45)
    far = y > 0.55 + 0.06 * np.sin(x * 7.0 + 1.0)
    img[far] = (0.35, 0.55, 0.35)
    near = y > 0.7 + 0.05 * np.sin(x * 11.0 + 2.0)
    img[near] = np.stack([0.25 + 0.1 * y, 0.45 + 0.1 * x, 0.2 + 0 * x], -1)[near]
    wall = (x > 0.2) & (x < 0.45) & (y > 0.5) & (y < 0.72)
    img[wall] = (0.92, 0.86, 0.72)
    roof = (y > 0.38) & (y <= 0.5) & (np.abs(x - 0.325) < (y - 0.38) * 1.3)
    img[roof] = (0.7, 0.15, 0.12)
    window = ((np.abs(x - 0.27) < 0.03) | (np.abs(x - 0.38) < 0.03)) & (np.abs(y - 0.57) < 0.03)
    img[window] = (0.2, 0.3, 0.5)
    door = (np.abs(x - 0.325) < 0.03) & (y > 0.63) & (y < 0.72)
    img[door] = (0.35, 0.2, 0.1)
    trunk = (np.abs(x - 0.68) < 0.015) & (y > 0.55) & (y < 0.75)
    img[trunk] = (0.35, 0.22, 0.12)
    crown = (x - 0.68) ** 2 + (y - 0.5) ** 2 < 0.09**2
    img[crown] = (0.15, 0.4, 0.18)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def swirl_style(size: int = 256, seed: int = 0) -> torch.Tensor:
    """A procedural 'painting': thousands of short thick brush strokes that follow a smooth swirling flow
    field, in a blue and yellow palette, [3, size, size] in [0, 1]."""
    rng = np.random.default_rng(seed)
    palette = np.array([[0.06, 0.12, 0.38], [0.12, 0.3, 0.68], [0.35, 0.6, 0.9], [0.95, 0.82, 0.25],
                        [0.96, 0.95, 0.82]], np.float32)

    def flow(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        return (2.2 * np.sin(2 * np.pi * (0.9 * px + 0.2)) * np.cos(2 * np.pi * (0.7 * py))
                + 1.3 * np.sin(2 * np.pi * (1.7 * py + 0.6 * px)))

    img = np.tile(palette[1], (size, size, 1))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    strokes = int(size * size / 28)
    for _ in range(strokes):
        cx, cy = rng.uniform(0, size, 2)
        theta = flow(cx / size, cy / size)
        length, width = rng.uniform(0.04, 0.08) * size, rng.uniform(0.012, 0.02) * size
        r = int(length) + 2
        x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r)
        y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r)
        dx, dy = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = (u / length) ** 2 + (v / width) ** 2 < 1
        # Palette by a slow band pattern, so regions differ in colour like a painting.
        band = 0.5 + 0.5 * np.sin(3 * cx / size * np.pi + 2 * np.sin(4 * cy / size))
        index = int(np.clip(band * 4 + rng.normal(0, 0.7), 0, 4.999))
        colour = palette[index] * rng.uniform(0.85, 1.1)
        shade = 0.8 + 0.2 * np.cos(v / width * np.pi / 2)  # darker stroke edges, like paint ridges
        img[y0:y1, x0:x1][inside] = (colour[None] * shade[inside][:, None]).clip(0, 1)
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1).contiguous()


def write_samples(folder: Path, size: int = 256) -> tuple[Path, Path]:
    """Write content.png and style.png into folder; returns their paths."""
    from nst3d.files import save_image

    folder.mkdir(parents=True, exist_ok=True)
    content, style = folder / "content.png", folder / "style_swirl.png"
    save_image(content_picture(size), content)
    save_image(swirl_style(size), style)
    return content, style


if __name__ == "__main__":
    print(*write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "scenes")))
