"""Pictures of a run, for every backend: a contact sheet (rows of views, e.g. original / stylized /
baseline) and turntables (GIF or MP4). Frames are tensors, so any renderer can feed them.

Public API:
- `composite(render, background=(1.0, 1.0, 1.0))` -> [V, 3, H, W]: a Render's rgb over a plain background
  where its mask is 0 (a per-region mask [V, G, H, W] counts as covered where any region is).
- `contact_sheet(rows, path, labels=None, gap=4)`: write a PNG grid; rows: list of [V, 3, H, W] in [0, 1]
  (same H, W; rows may have different V), one label per row drawn at its left.
- `write_turntable(frames, path, fps=20)`: frames [F, 3, H, W] in [0, 1] (or an iterable of [3, H, W]) ->
  .gif (looping) or .mp4 (H.264 via imageio-ffmpeg), written atomically.
- `TURNTABLE_SUFFIXES`, `STILL_SUFFIXES`: the output types they write.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from nst3d.backends.base import Render
from nst3d.errors import UserError
from nst3d.files import atomic_path, save_image

TURNTABLE_SUFFIXES = (".gif", ".mp4")
STILL_SUFFIXES = (".png", ".jpg", ".jpeg")
LABEL_WIDTH = 88


def composite(render: Render, background: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """rgb [V, 3, H, W] over `background` where the mask is empty, clamped to [0, 1].

    The rgb is taken as already composited over something where mask < 1 (as the backends render it), so
    the pixels are blended: mask * rgb + (1 - mask) * background.
    """
    rgb = render.rgb.detach().float().cpu()
    if render.mask is None:
        return rgb.clamp(0, 1)
    mask = render.mask.detach().float().cpu().sum(1, keepdim=True).clamp(0, 1)
    bg = torch.tensor(background, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (mask * rgb + (1 - mask) * bg).clamp(0, 1)


def _label(text: str, height: int) -> torch.Tensor:
    """A white [3, height, LABEL_WIDTH] tile with `text` written on it."""
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (LABEL_WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    words, lines = text.split(), [""]
    for word in words:  # wrap to the tile width
        trial = f"{lines[-1]} {word}".strip()
        if draw.textlength(trial) > LABEL_WIDTH - 8 and lines[-1]:
            lines.append(word)
        else:
            lines[-1] = trial
    y = max(2, height // 2 - 6 * len(lines))
    for line in lines:
        draw.text((4, y), line, fill=(0, 0, 0))
        y += 12
    return torch.from_numpy(np.asarray(tile, dtype=np.float32) / 255.0).permute(2, 0, 1)


def sheet_image(rows: Sequence[torch.Tensor], labels: Sequence[str] | None = None,
                gap: int = 4) -> torch.Tensor:
    """The contact sheet as one image [3, H_total, W_total] in [0, 1] (white gaps)."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    h, w = rows[0].shape[-2:]
    if any(r.shape[-2:] != (h, w) for r in rows):
        raise ValueError("every view on a contact sheet must have the same size")
    columns = max(len(r) for r in rows)
    label_w = LABEL_WIDTH + gap if labels else 0
    out = torch.ones(3, len(rows) * (h + gap) + gap, label_w + columns * (w + gap) + gap)
    for r, row in enumerate(rows):
        top = gap + r * (h + gap)
        if labels:
            out[:, top:top + h, gap:gap + LABEL_WIDTH] = _label(labels[r], h)
        for c, view in enumerate(row.detach().float().cpu().clamp(0, 1)):
            left = label_w + gap + c * (w + gap)
            out[:, top:top + h, left:left + w] = view
    return out


def contact_sheet(rows: Sequence[torch.Tensor], path: str | os.PathLike, labels: Sequence[str] | None = None,
                  gap: int = 4) -> Path:
    """Write rows of views [V, 3, H, W] as one PNG (atomically); returns the path."""
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    path = Path(path)
    save_image(sheet_image(rows, labels, gap), path)
    return path


def _frames_uint8(frames: torch.Tensor | Iterable[torch.Tensor]) -> list[np.ndarray]:
    out = []
    for frame in frames:
        array = frame.detach().float().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        out.append(np.ascontiguousarray(array))
    if not out:
        raise ValueError("a turntable needs at least one frame")
    return out


def write_turntable(frames: torch.Tensor | Iterable[torch.Tensor], path: str | os.PathLike,
                    fps: int = 20) -> Path:
    """Write frames [F, 3, H, W] in [0, 1] as a looping GIF or an H.264 MP4 (by suffix), atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TURNTABLE_SUFFIXES:
        raise UserError(f"unsupported turntable type '{path.suffix}'; use .gif or .mp4")
    images = _frames_uint8(frames)
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            imageio.mimsave(tmp, images, format="GIF", duration=1000.0 / fps, loop=0)
        else:
            h, w = images[0].shape[:2]
            # H.264 with yuv420p needs even sizes: pad by one pixel if needed.
            if h % 2 or w % 2:
                images = [np.pad(im, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for im in images]
            try:
                with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                        pixelformat="yuv420p", macro_block_size=1) as writer:
                    for image in images:
                        writer.append_data(image)
            except (ImportError, RuntimeError) as exc:
                raise UserError(f"cannot write MP4 ({exc.__class__.__name__}: {exc}); install imageio-ffmpeg "
                                "or write a .gif") from None
    return path
