"""Textures and UV layouts for mesh loading: sRGB conversions and texture decoding, whether a file's UVs form a
usable layout or a colour palette, new atlases (xatlas, or a grid of triangles), textures painted from vertex
colours or baked from another layout, and which texels some triangle covers (`texel_coverage`)."""

from __future__ import annotations

import io

import numpy as np
import torch

from nst3d.backends.mesh.asset import MeshAsset
from nst3d.backends.mesh.raster import rasterize_uv

OVERLAP_LIMIT = 0.02  # kept UVs may overlap on at most this share of their texels
MIN_LAYOUT_TEXELS = 32 * 32  # a layout giving the surface fewer texels than this, on under
PALETTE_SHARE = 0.01  # this share of its texture, is a colour palette (see is_palette)


# ------------------------------------------------------------------------------------------------ colour


def srgb_to_linear(c: np.ndarray | torch.Tensor):
    lib = torch if isinstance(c, torch.Tensor) else np
    return lib.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray | torch.Tensor):
    lib = torch if isinstance(c, torch.Tensor) else np
    c = c.clip(0, 1) if lib is np else c.clamp(0, 1)
    return lib.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def decode_image(data: bytes, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encoded image bytes -> (rgb [3, H, W], alpha [1, H, W] or None) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    from nst3d.files import _to_float_array

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            array = _to_float_array(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FileNotFoundError(f"{what} is not a readable image ({exc.__class__.__name__})") from None
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return (tensor[:3], tensor[3:]) if tensor.shape[0] == 4 else (tensor, None)


def tint(rgb: torch.Tensor, factor) -> torch.Tensor:
    """An sRGB texture [3, H, W] times a linear base-colour factor (glTF's rule), in sRGB."""
    return linear_to_srgb(srgb_to_linear(rgb) * torch.tensor(factor[:3], dtype=rgb.dtype).view(3, 1, 1))


def resize_texture(texture: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] resampled so its longer side is `size` (area down, bilinear up)."""
    from nst3d.files import resize_to

    return resize_to(texture, size)


# ------------------------------------------------------------------------------------------- UV helpers


def uv_layout_ok(uv: np.ndarray | None, faces: np.ndarray, size: int = 256) -> bool:
    """True if the UVs can carry a texture: inside [0, 1] (no tiling), not collapsed, barely overlapping."""
    if uv is None or len(uv) == 0 or not np.isfinite(uv).all():
        return False
    if uv.min() < -0.01 or uv.max() > 1.01:
        return False
    # np.cross of 2-vectors fails on numpy 2: the 2-D cross written out
    e1, e2 = uv[faces[:, 1]] - uv[faces[:, 0]], uv[faces[:, 2]] - uv[faces[:, 0]]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    if area < 1e-4:
        return False
    hits, _ = rasterize_uv(uv, faces, size, size, count=True)
    covered = (hits > 0).sum()
    return covered > 0 and (hits > 1).sum() / covered <= OVERLAP_LIMIT


def layout_texels(uv: np.ndarray, faces: np.ndarray, height: int, width: int) -> float:
    """Texels the UV layout spreads the triangles over: the summed UV area of the faces, in texels."""
    corners = uv[faces]  # [f, 3, 2]
    a, b = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    return float(0.5 * np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum() * height * width)


def is_palette(uv: np.ndarray, faces: np.ndarray, texture: torch.Tensor) -> bool:
    """True when a texture cannot carry strokes because its UVs squeeze the surface onto a sliver of it
    (under PALETTE_SHARE of its area and MIN_LAYOUT_TEXELS texels): a colour palette or swatch atlas, with
    triangles mapped to points or lines. A small texture the layout fills is not one (--texture-size helps
    there)."""
    h, w = texture.shape[-2:]
    texels = layout_texels(uv, faces, h, w)
    return texels < MIN_LAYOUT_TEXELS and texels < PALETTE_SHARE * h * w


def weld(positions: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices at the same position: (welded positions [m, 3], faces [f, 3] into them)."""
    scale = max(float(np.abs(positions).max()), 1e-12) if len(positions) else 1.0
    keys = np.round(positions / scale * 1e6).astype(np.int64)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    welded = np.zeros((len(unique), 3))
    welded[inverse.reshape(-1)] = positions
    return welded, inverse.reshape(-1)[faces]


def grid_atlas(face_count: int) -> np.ndarray:
    """A fallback atlas: two triangles per cell of a grid filling the unit square, [f, 3, 2] corner UVs
    (image convention)."""
    cells = max(1, (face_count + 1) // 2)
    cols = max(1, int(np.ceil(np.sqrt(cells))))
    rows = int(np.ceil(cells / cols))
    sx, sy = 1.0 / cols, 1.0 / rows
    px, py = 0.08 * sx, 0.08 * sy
    k = np.arange(face_count)
    cell = k // 2
    x0, y0 = (cell % cols) * sx, (cell // cols) * sy
    lower = np.stack([[x0 + px, y0 + py], [x0 + sx - 2 * px, y0 + py], [x0 + px, y0 + sy - 2 * py]])
    upper = np.stack([[x0 + sx - px, y0 + sy - py], [x0 + 2 * px, y0 + sy - py], [x0 + sx - px, y0 + 2 * py]])
    corners = np.where((k % 2 == 0)[None, None], lower, upper)  # [3, 2, f]
    return corners.transpose(2, 0, 1)


def chart_with_xatlas(positions: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray | None:
    """xatlas charts packed for about a size x size texture (2 texels apart at that size): corner UVs
    [f, 3, 2] in [0, 1], or None if it fails. Deterministic (the same mesh gets the same atlas on every run,
    so --seed reproduces a stylization), and non-manifold meshes are charted too."""
    import xatlas

    atlas = xatlas.Atlas()
    pack = xatlas.PackOptions()
    pack.padding = 2
    pack.resolution = int(min(max(size, 256), 4096))
    pack.bilinear = True
    try:
        atlas.add_mesh(positions.astype(np.float32), faces.astype(np.uint32))
        atlas.generate(xatlas.ChartOptions(), pack)
        _, indices, uvs = atlas[0]
    except (RuntimeError, ValueError, IndexError):
        return None
    if atlas.atlas_count != 1:  # charts spread over several pages would overlap in one texture
        return None
    corners = uvs[indices].astype(np.float64)
    if indices.shape != faces.shape or not np.isfinite(corners).all():
        return None
    return corners


def make_atlas(positions: np.ndarray, faces: np.ndarray, size: int, notes: list[str], name: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UV atlas made with xatlas on the welded mesh (so charts run across vertices that were only split
    for normals or UVs); if xatlas fails, every triangle pair gets its own grid cell.

    Returns (vertex_map [n'] into the original vertices, faces [f, 3] into the new vertices, uv [n', 2]).
    """
    welded, welded_faces = weld(positions, faces)
    corners = chart_with_xatlas(welded, welded_faces, size)
    if corners is None:
        notes.append(f"{name}: the UV atlas failed; using one UV cell per triangle pair (strokes will not cross "
                     "triangle edges)")
        corners = grid_atlas(len(faces))
    keys = np.concatenate([faces.reshape(-1, 1).astype(np.float64), np.round(corners.reshape(-1, 2) * 2**20)], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    vertex_map = unique[:, 0].astype(np.int64)
    uv = np.zeros((len(unique), 2))
    uv[inverse.reshape(-1)] = corners.reshape(-1, 2)
    return vertex_map, inverse.reshape(-1, 3).astype(np.int64), uv


def vertex_normals(positions: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals [n, 3] (zero-area corners get +y)."""
    face_n = np.cross(positions[faces[:, 1]] - positions[faces[:, 0]], positions[faces[:, 2]] - positions[faces[:, 0]])
    normals = np.zeros_like(positions)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(length > 1e-20, normals / length.clip(min=1e-20), np.array([0.0, 1.0, 0.0]))
    return normals


def interpolate_over_layout(uv: np.ndarray, faces: np.ndarray, values: np.ndarray, size: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex values [n, C] interpolated at the texel centres of a size x size texture laid out by
    (uv [n, 2], faces [f, 3]): (values [size, size, C], covered [size, size] bool; uncovered texels are 0)."""
    face, bary = rasterize_uv(uv, faces, size, size)
    hit = face >= 0
    f = faces[np.where(hit, face, 0)]
    u, v = bary[..., 0:1], bary[..., 1:2]
    out = (1 - u - v) * values[f[..., 0]] + u * values[f[..., 1]] + v * values[f[..., 2]]
    return np.where(hit[..., None], out, 0.0), hit


def paint_vertex_colours(uv: np.ndarray, faces: np.ndarray, colours: np.ndarray, size: int) -> torch.Tensor:
    """A texture [3, size, size] with per-vertex colours [n, 3] interpolated over the UV layout."""
    colour, hit = interpolate_over_layout(uv, faces, colours, size)
    colour = np.where(hit[..., None], colour, colours.mean(0))
    return torch.from_numpy(colour.transpose(2, 0, 1).astype(np.float32)).clamp(0, 1)


def bake_texture(uv: np.ndarray, faces: np.ndarray, source_uv: np.ndarray, source: torch.Tensor, size: int
                 ) -> torch.Tensor:
    """A texture [C, size, size] for the layout (uv [n, 2], faces [f, 3]) showing `source` [C, h, w] as
    the per-vertex source_uv [n, 2] mapped it (nearest texel: palettes are not blended across swatches).
    Texels no triangle covers get the mean of the covered ones."""
    where, hit = interpolate_over_layout(uv, faces, source_uv, size)
    h, w = source.shape[-2:]
    where = np.where((where < 0) | (where > 1), where - np.floor(where), where)  # the source repeats
    rows = np.clip((where[..., 1] * h).astype(np.int64), 0, h - 1)
    cols = np.clip((where[..., 0] * w).astype(np.int64), 0, w - 1)
    out = source[:, torch.from_numpy(rows), torch.from_numpy(cols)]
    covered = torch.from_numpy(hit)
    if covered.any():
        out[:, ~covered] = out[:, covered].mean(1, keepdim=True)
    return out.float().contiguous()


def texel_coverage(asset: MeshAsset, slot: int) -> torch.Tensor:
    """[H, W] bool: texels of a slot that some triangle maps to (the rest is gutter, filled on export)."""
    h, w = asset.slots[slot].texture.shape[-2:]
    covered = np.zeros((h, w), dtype=bool)
    for prim in asset.primitives:
        if prim.slot == slot:
            face, _ = rasterize_uv(prim.uv, prim.faces, h, w)
            covered |= face >= 0
    return torch.from_numpy(covered)
