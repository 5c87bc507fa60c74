"""File helpers shared by every backend: atomic writes, output checks, image I/O."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nst3d.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 100_000_000  # 100 MP: a 10k x 10k image decodes to 300 MB of RGB bytes


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash, Ctrl-C or error inside the block leaves no half-written file behind. The file gets the
    permissions a plain open() would give it (0666 less the umask), not mkstemp's owner-only 0600, so
    outputs are readable wherever the user's other files are (shared folders, render farms, web servers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # check_output only proved it can be made
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Names that are surely meant as files: given where an output FOLDER is expected, they are refused rather than
# made into a folder called e.g. out.glb.
FILE_SUFFIXES = frozenset((*IMAGE_SUFFIXES, ".gif", ".mp4", ".glb", ".gltf", ".obj", ".ply", ".stl", ".json",
                           ".blend", ".csv"))


def check_output(path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                 suffixes: Sequence[str] | None = None, is_dir: bool = False) -> Path:
    """Fail early (before any compute) if `path` cannot be written or would overwrite an input.

    The folder is really written to (a probe file, deleted at once) and a missing one is created to prove it
    can be, then removed again: a run that fails later leaves no empty folder behind (atomic_path creates it
    when the first output is written)."""
    path = Path(path)
    resolved = path.resolve()
    for item in inputs:
        if Path(item).resolve() == resolved:
            raise UserError(f"output {path} is also an input; choose another output path "
                            "(inputs are never overwritten)")
    if is_dir and path.exists() and not path.is_dir():
        raise UserError(f"output folder {path} is a file; give a folder (the outputs are written inside it)")
    if is_dir and not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
        raise UserError(f"-o takes an output folder (the outputs are written inside it), and {path} looks like a "
                        f"file name; give a folder, e.g. {path.with_suffix('')}")
    if not is_dir and path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise UserError(f"unsupported output type '{path.suffix or path.name}'; use one of {', '.join(suffixes)}")
    parent = path if is_dir else path.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write to {parent}: {probe} is a file, not a folder; choose another output path")
    if not os.access(probe, os.W_OK):
        raise UserError(f"cannot write to {parent}: the folder is not writable; choose another output path")
    _probe_write(parent)
    return path


def _probe_write(folder: Path) -> None:
    """Create `folder` and its missing parents and a file in it, then remove all this made (deepest first)."""
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the folder {folder} ({exc.strerror or exc.__class__.__name__}); "
                            "choose another output path") from None
        try:
            fd, name = tempfile.mkstemp(prefix=".nst3d-probe.", dir=folder)
        except OSError as exc:
            raise UserError(f"cannot write to {folder} ({exc.strerror or exc.__class__.__name__}); "
                            "choose another output path") from None
        os.close(fd)
        os.unlink(name)
    finally:
        for created in missing:
            with contextlib.suppress(OSError):
                created.rmdir()


def load_image(path: str | os.PathLike, what: str = "image", upright: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read an image file as float RGB in [0, 1].

    Returns (rgb [3, H, W], alpha [1, H, W] or None). Grayscale, palette, 16-bit and RGBA files are accepted.
    upright: turn the pixels as the EXIF Orientation tag says (phone photos are stored sideways with a tag),
    so the image is the one every viewer shows. Textures pass False: UV layouts address the stored pixels
    (Blender and glTF viewers ignore the tag on textures too).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give an image file")
    Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a clearer message
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise UserError(f"{what} {path} is {w}x{h} ({w * h / 1e6:.0f} MP), above the "
                                f"{MAX_IMAGE_PIXELS // 1_000_000} MP limit; downscale it first")
            img.load()
            array = _to_float_array(upright_image(img) if upright else img)
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read {what} {path}: not a readable image ({exc.__class__.__name__}); "
                        "re-save it as PNG or JPEG") from None
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if tensor.shape[0] == 4:
        return tensor[:3], tensor[3:]
    return tensor, None


def exif_orientation(img) -> int:
    """The EXIF Orientation tag (1-8) of a PIL image; 1 (as stored) when absent or unreadable."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):  # a damaged EXIF block: show it as stored
        return 1
    return value if 1 <= value <= 8 else 1


def upright_image(img):
    """A PIL image turned (rotated/mirrored) as its EXIF Orientation tag says; the image itself if untagged."""
    from PIL import ImageOps

    return img if exif_orientation(img) == 1 else ImageOps.exif_transpose(img)


def _to_float_array(img) -> np.ndarray:
    """PIL image -> float32 array [H, W, 3 or 4] in [0, 1], whatever the mode and bit depth."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if mode.startswith("I;16") or data.max() > 255 else 255.0
        gray = np.clip(data / peak, 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def save_image(rgb: torch.Tensor, path: str | os.PathLike, alpha: torch.Tensor | None = None) -> None:
    """Write rgb [3, H, W] (and optional alpha [1, H, W]) in [0, 1] atomically; format from the suffix."""
    from PIL import Image

    path = Path(path)
    channels = rgb if alpha is None else torch.cat([rgb, alpha.to(rgb)], dim=0)
    array = (channels.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    mode = "RGBA" if alpha is not None else "RGB"
    if mode == "RGBA" and path.suffix.lower() in (".jpg", ".jpeg", ".bmp"):
        array, mode = array[..., :3], "RGB"
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array), mode).save(tmp, format=_pil_format(path))


def _pil_format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
            ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(), "PNG")


def resize_to(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """Resize [C, H, W] so that its longer side is `size` (area filter down, bilinear up)."""
    h, w = rgb.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):
        return rgb
    mode = "area" if scale < 1 else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(rgb[None], size=(new_h, new_w), mode=mode, **kwargs)[0]


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write a JSON document atomically; NaN and infinities (e.g. a consistency with no co-visible pixels)
    become null, as JSON has no such numbers and strict readers reject Python's NaN."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False,
                                  default=lambda v: _finite(v.item()) if hasattr(v, "item") else str(v)) + "\n")


def map_json(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """JSON-like data (dicts, lists, tuples) with `leaf` applied to every other value."""
    if isinstance(value, dict):
        return {key: map_json(item, leaf) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [map_json(item, leaf) for item in value]
    return leaf(value)


def _finite(value: Any) -> Any:
    """`value` with every non-finite float (nested in dicts, lists, tuples) replaced by None."""
    return map_json(value, lambda v: None if isinstance(v, float) and not math.isfinite(v) else v)
