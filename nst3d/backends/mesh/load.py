"""Load a mesh asset into texture slots: glTF/GLB through nst3d's own glTF reader (so the export can patch
the original file and keep skins, animations and hierarchy), OBJ(+MTL)/PLY/STL/OFF through trimesh.

Each material's base-colour texture becomes a slot (its UV layout and resolution are kept, or resampled to
`texture_size`). Triangles without a texture get a slot of their own, per primitive/object: their UVs are
kept when they form a valid layout, else a UV atlas is made (xatlas), and the texture
starts from the vertex colours or the base colour. Geometry is never changed (an atlas only splits vertices
along its seams; every vertex keeps its position and attributes).

Colours are display (sRGB-encoded) values in [0, 1]; a glTF baseColorFactor (linear) is baked in.
UVs are stored in image convention: (0, 0) is the top-left corner of the texture, v grows downwards.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nst3d.backends.mesh import gltf as G
from nst3d.errors import UserError

SUPPORTED = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
DEFAULT_TEXTURE_SIZE = 1024
NO_COLOUR = 0.5  # linear mid grey for surfaces without any colour (glTF's default white hides shapes)
OVERLAP_LIMIT = 0.02  # kept UVs may overlap on at most this share of their texels
MIN_LAYOUT_TEXELS = 32 * 32  # a layout giving the surface fewer texels than this, on under
PALETTE_SHARE = 0.01  # this share of its texture, is a colour palette (see is_palette)


@dataclass
class Primitive:
    """Triangles of one slot as the file stores them (mesh space)."""

    name: str  # object name (glTF mesh, trimesh geometry)
    positions: np.ndarray  # [n, 3] float64
    faces: np.ndarray  # [f, 3] int64
    uv: np.ndarray  # [n, 2] float64, image convention
    normals: np.ndarray  # [n, 3] float64 unit vertex normals
    slot: int
    source: tuple  # ("gltf", mesh index, primitive index) or ("trimesh", geometry name)
    vertex_map: np.ndarray | None = None  # a new atlas: [n] index of each vertex in the file's vertex list


@dataclass
class Instance:
    """A placement of a primitive in the world (glTF nodes can reuse a mesh)."""

    primitive: int
    transform: np.ndarray  # [4, 4] mesh -> world
    node: str


@dataclass
class Slot:
    """One optimised texture."""

    name: str
    aliases: set[str]  # names a --style-map entry may use for it: material, object and node names
    texture: torch.Tensor  # [3, H, W] initial base colour in [0, 1]
    alpha: torch.Tensor | None  # [1, H, W] the original texture's alpha (kept on export), or None
    generated: bool  # True: a new texture (the material had none); False: the material's own texture
    material: int | None  # glTF material index (or trimesh material number) it came from
    material_name: str
    alpha_factor: float = 1.0
    coverage: torch.Tensor | None = None  # [H, W] bool texels that some triangle maps to (set by load_mesh)


@dataclass
class MeshAsset:
    path: Path
    primitives: list[Primitive]
    instances: list[Instance]
    slots: list[Slot]
    gltf: G.Gltf | None = None  # the parsed document, for a lossless GLB export
    warnings: list[str] = field(default_factory=list)

    @property
    def face_count(self) -> int:
        return sum(len(self.primitives[i.primitive].faces) for i in self.instances)

    def world(self) -> WorldMesh:
        """Every instance in world space, concatenated."""
        verts, faces, uvs, normals, slots, offset = [], [], [], [], [], 0
        for inst in self.instances:
            prim = self.primitives[inst.primitive]
            m = inst.transform
            verts.append(prim.positions @ m[:3, :3].T + m[:3, 3])
            normal_matrix = np.linalg.inv(m[:3, :3]).T
            n = prim.normals @ normal_matrix.T
            normals.append(n / np.linalg.norm(n, axis=1, keepdims=True).clip(min=1e-12))
            faces.append(prim.faces + offset)
            uvs.append(prim.uv)
            slots.append(np.full(len(prim.faces), prim.slot, dtype=np.int64))
            offset += len(prim.positions)
        return WorldMesh(np.concatenate(verts), np.concatenate(faces), np.concatenate(uvs), np.concatenate(normals),
                         np.concatenate(slots))


@dataclass
class WorldMesh:
    """All triangles in world space: what the ray caster sees."""

    vertices: np.ndarray  # [N, 3] float64
    faces: np.ndarray  # [F, 3] int64
    uv: np.ndarray  # [N, 2] image convention
    normals: np.ndarray  # [N, 3] unit
    face_slot: np.ndarray  # [F] int64


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


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, height: int, width: int, count: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre, by casting rays at the UV layout (open3d).

    uv: [n, 2] image convention; faces: [f, 3]. Layouts that stray outside [0, 1] are wrapped (the texture
    repeats). Returns (face [H, W] int64, -1 = none; bary [H, W, 2]) or, with count, (hits [H, W], None).
    """
    import open3d as o3d

    shifts = [(0.0, 0.0)]
    if uv.size and (uv.min() < -1e-6 or uv.max() > 1 + 1e-6):
        shifts = [(dx, dy) for dx in (-1.0, 0.0, 1.0) for dy in (-1.0, 0.0, 1.0)]
    verts, tris = [], []
    for k, (dx, dy) in enumerate(shifts):
        v = np.zeros((len(uv), 3), dtype=np.float32)
        v[:, 0] = (uv[:, 0] + dx) * width
        v[:, 1] = (uv[:, 1] + dy) * height
        verts.append(v)
        tris.append(faces + k * len(uv))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.concatenate(verts)), o3d.core.Tensor(np.concatenate(tris).astype(np.uint32)))
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                         indexing="ij")
    rays = np.stack([xs, ys, np.ones_like(xs), np.zeros_like(xs), np.zeros_like(xs), -np.ones_like(xs)], axis=-1)
    rays = o3d.core.Tensor(rays.reshape(-1, 6))
    if count:
        return scene.count_intersections(rays).numpy().reshape(height, width), None
    result = scene.cast_rays(rays)
    ids = result["primitive_ids"].numpy().astype(np.int64)
    ids[ids == scene.INVALID_ID] = -1
    face = np.where(ids >= 0, ids % max(len(faces), 1), -1).reshape(height, width)
    return face, result["primitive_uvs"].numpy().reshape(height, width, 2)


def uv_layout_ok(uv: np.ndarray | None, faces: np.ndarray, size: int = 256) -> bool:
    """True if the UVs can carry a texture: inside [0, 1] (no tiling), not collapsed, barely overlapping."""
    if uv is None or len(uv) == 0 or not np.isfinite(uv).all():
        return False
    if uv.min() < -0.01 or uv.max() > 1.01:
        return False
    e1, e2 = uv[faces[:, 1]] - uv[faces[:, 0]], uv[faces[:, 2]] - uv[faces[:, 0]]  # no np.cross: 2-vectors fail on numpy 2
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


# ---------------------------------------------------------------------------------------------- loading


def check_input(path: Path) -> None:
    if not path.exists():
        raise UserError(f"mesh not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a mesh file ({', '.join(SUPPORTED)})")
    if path.suffix.lower() not in SUPPORTED:
        raise UserError(f"unsupported mesh format '{path.suffix or path.name}'; use one of {', '.join(SUPPORTED)}"
                        " (convert other formats to GLB first)")


def load_mesh(path: str | Path, texture_size: int | None = None, texture: str | Path | None = None,
              keep_uv_layouts: bool = False) -> MeshAsset:
    """Read a mesh file into texture slots.

    texture_size: resample every texture to this longer side (default: keep the file's; new textures get
    DEFAULT_TEXTURE_SIZE). texture: an image to use for triangles that have UVs but no texture (an OBJ
    without its .mtl, like Keenan Crane's Spot). keep_uv_layouts: never give triangles that have UVs a new
    atlas (for callers that apply the textures to their own copy of the UVs: the Blender add-on); palettes
    then only change colour, overlapping UVs share texels. Raises UserError for files that cannot be stylized.
    """
    path = Path(path)
    check_input(path)
    extra = None
    if texture is not None:
        from nst3d.files import load_image

        extra = load_image(texture, "texture")
    builder = _Builder(path, texture_size, extra, keep_uv_layouts)
    if path.suffix.lower() in (".glb", ".gltf"):
        asset = builder.from_gltf(G.read_gltf(path))
    else:
        asset = builder.from_trimesh()
    _validate(asset)
    for index, slot in enumerate(asset.slots):
        slot.coverage = texel_coverage(asset, index)
    return asset


def _validate(asset: MeshAsset) -> None:
    name = asset.path.name
    if not asset.instances or asset.face_count == 0:
        raise UserError(f"{name} has no triangles (zero faces): nothing to texture. A point cloud or Gaussian "
                        "splat? Use `nst3d splat` for 3DGS PLY files")


def check_finite(path: Path, name: str, positions: np.ndarray) -> None:
    if not np.isfinite(positions).all():
        raise UserError(f"{path.name}: object '{name}' has non-finite (NaN/inf) vertex positions; "
                        "repair the mesh first (e.g. remove those vertices in Blender)")


class _Builder:
    """Collects primitives, instances and slots while reading one file."""

    def __init__(self, path: Path, texture_size: int | None, extra: tuple | None, keep_uv_layouts: bool = False):
        self.path = path
        self.keep_uv_layouts = keep_uv_layouts
        self.texture_size = texture_size
        self.extra = extra  # (rgb, alpha) for UV'd triangles without a texture
        self.primitives: list[Primitive] = []
        self.instances: list[Instance] = []
        self.slots: list[Slot] = []
        self.notes: list[str] = []
        self.textured: dict[tuple, int] = {}

    def note(self, text: str) -> None:
        self.notes.append(text)

    def new_size(self) -> int:
        return self.texture_size or DEFAULT_TEXTURE_SIZE

    def textured_slot(self, key: tuple, name: str, aliases: set[str], rgb: torch.Tensor, alpha, factor,
                      material: int | None) -> int:
        """The slot of a material's own texture (shared by all its triangles)."""
        if key in self.textured:
            self.slots[self.textured[key]].aliases |= aliases
            return self.textured[key]
        rgb = tint(rgb, factor)
        if self.texture_size:
            rgb = resize_texture(rgb, self.texture_size)
            alpha = None if alpha is None else resize_texture(alpha, self.texture_size)
        self.slots.append(Slot(name, aliases | {name}, rgb.float().contiguous(), alpha, False, material, name,
                               float(factor[3]) if len(factor) > 3 else 1.0))
        self.textured[key] = len(self.slots) - 1
        return len(self.slots) - 1

    def add_untextured(self, name: str, aliases: set[str], positions, faces, uv, normals, colours, factor,
                       material: int | None, material_name: str, source: tuple) -> int:
        """A primitive without a texture: its own new slot (kept UVs if valid, else an atlas)."""
        size = self.new_size()
        vertex_map = None
        if self.extra is not None and uv is not None:
            rgb, alpha = self.extra
            slot = self.textured_slot(("extra",), material_name or name, aliases, rgb, alpha, factor, material)
            self.slots[slot].generated = True
            self.primitives.append(Primitive(name, positions, faces, uv, normals, slot, source))
            return len(self.primitives) - 1
        if not uv_layout_ok(uv, faces) and not (self.keep_uv_layouts and uv is not None and np.isfinite(uv).all()):
            vertex_map, faces, uv = make_atlas(positions, faces, size, self.notes, name)
            positions, normals = positions[vertex_map], normals[vertex_map]
            colours = None if colours is None else colours[vertex_map]
        if colours is not None:
            texture = paint_vertex_colours(uv, faces, colours, size)
        else:
            base = linear_to_srgb(np.asarray(factor[:3], dtype=np.float64))
            texture = torch.tensor(base, dtype=torch.float32).view(3, 1, 1).expand(3, size, size).contiguous()
        return self._new_slot(name, aliases, positions, faces, uv, normals, texture, factor, material, material_name,
                              source, vertex_map)

    def keep_palette(self, name: str, material_name: str) -> bool:
        """With keep_uv_layouts, a palette stays (and says what that costs); else False."""
        if self.keep_uv_layouts:
            self.note(f"{name}: '{material_name or name}' is a colour-palette texture (whole triangles on single "
                      "swatches): only its colours can change; unwrap the object into a new UV map for strokes")
        return self.keep_uv_layouts

    def add_palette(self, name: str, aliases: set[str], positions, faces, uv, normals, palette: torch.Tensor, factor,
                    material: int | None, material_name: str, source: tuple) -> int:
        """A primitive whose texture is a colour palette (see is_palette): a new atlas with its colours."""
        texels = layout_texels(uv, faces, *palette.shape[-2:])
        self.note(f"{name}: its UVs map the surface onto {texels:.0f} texels of the texture of "
                  f"'{material_name or name}' (a colour palette), too few for brush strokes; stylizing a new UV "
                  "atlas with the palette's colours baked in (the original UVs stay in the file)")
        size = self.new_size()
        vertex_map, faces, atlas_uv = make_atlas(positions, faces, size, self.notes, name)
        texture = bake_texture(atlas_uv, faces, uv[vertex_map], tint(palette.float(), factor), size)
        return self._new_slot(name, aliases, positions[vertex_map], faces, atlas_uv, normals[vertex_map], texture,
                              factor, material, material_name, source, vertex_map)

    def _new_slot(self, name: str, aliases: set[str], positions, faces, uv, normals, texture: torch.Tensor, factor,
                  material: int | None, material_name: str, source: tuple, vertex_map) -> int:
        """A generated slot for one primitive (its own new texture)."""
        # trimesh names a lone mesh after its file: bunny.ply's slot (and texture file) is "bunny"
        stem = Path(name).stem if Path(name).suffix.lower() in SUPPORTED else name
        slot_name = stem if stem not in {s.name for s in self.slots} else f"{stem}.{len(self.slots)}"
        self.slots.append(Slot(slot_name, aliases | {name, slot_name} | ({material_name} if material_name else set()),
                               texture, None, True, material, material_name,
                               float(factor[3]) if len(factor) > 3 else 1.0))
        self.primitives.append(Primitive(name, positions, faces, uv, normals, len(self.slots) - 1, source,
                                         vertex_map))
        return len(self.primitives) - 1

    # -------------------------------------------------------------------------------------------- glTF

    def from_gltf(self, gltf: G.Gltf) -> MeshAsset:
        doc = gltf.json
        materials = doc.get("materials", [])
        nodes = doc.get("nodes", [])
        by_prim: dict[tuple, int] = {}
        instances = G.mesh_instances(gltf)
        for node_index, mesh_index, world in instances:
            mesh = doc["meshes"][mesh_index]
            node_name = nodes[node_index].get("name", f"node{node_index}")
            mesh_name = mesh.get("name") or node_name
            for prim_index, prim in enumerate(mesh.get("primitives", [])):
                key = ("gltf", mesh_index, prim_index)
                if key not in by_prim:
                    loaded = self.gltf_primitive(gltf, prim, key, mesh_name, node_name, materials)
                    if loaded is None:
                        continue
                    by_prim[key] = loaded
                self.instances.append(Instance(by_prim[key], world, node_name))
                self.slots[self.primitives[by_prim[key]].slot].aliases.add(node_name)
        for ext in doc.get("extensionsUsed", []):
            if ext == "KHR_texture_transform":
                self.note("KHR_texture_transform is ignored: textures are stylized in their stored layout")
        return MeshAsset(self.path, self.primitives, self.instances, self.slots, gltf, self.notes)

    def gltf_primitive(self, gltf: G.Gltf, prim: dict, key: tuple, mesh_name: str, node_name: str,
                       materials: list) -> int | None:
        attrs = prim.get("attributes", {})
        if "POSITION" not in attrs:
            return None
        positions = G.read_accessor(gltf, attrs["POSITION"]).astype(np.float64)
        check_finite(self.path, mesh_name, positions)
        faces = G.triangles(gltf, prim, len(positions))
        if faces is None or len(faces) == 0:
            if faces is None:
                self.note(f"{mesh_name}: points/lines primitive skipped (only triangles are textured)")
            return None
        if faces.max() >= len(positions) or faces.min() < 0:
            raise UserError(f"{self.path.name}: mesh '{mesh_name}' has triangle indices outside its vertex list; "
                            "the file is corrupt, re-export it")
        normals = (G.read_accessor(gltf, attrs["NORMAL"]).astype(np.float64) if "NORMAL" in attrs
                   else vertex_normals(positions, faces))
        normals = normals / np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
        m_index = prim.get("material")
        material = materials[m_index] if m_index is not None and m_index < len(materials) else None
        m_name = (material or {}).get("name") or (f"material{m_index}" if m_index is not None else "")
        pbr = (material or {}).get("pbrMetallicRoughness", {})
        factor = list(pbr.get("baseColorFactor", [1.0, 1.0, 1.0, 1.0] if material else [NO_COLOUR] * 3 + [1.0]))
        aliases = {mesh_name, node_name} | ({m_name} if m_name else set())
        info = pbr.get("baseColorTexture")
        if info is not None:
            coord = f"TEXCOORD_{info.get('texCoord', 0)}"
            image = self.gltf_texture(gltf, info, m_name)
            if image is not None and coord in attrs:
                uv = G.read_accessor(gltf, attrs[coord]).astype(np.float64)
                if is_palette(uv, faces, image[0]) and not self.keep_palette(mesh_name, m_name):
                    return self.add_palette(mesh_name, aliases, positions, faces, uv, normals, image[0], factor,
                                            m_index, m_name, key)
                slot = self.textured_slot(("gltf", m_index), m_name, aliases, image[0], image[1], factor, m_index)
                self.primitives.append(Primitive(mesh_name, positions, faces, uv, normals, slot, key))
                return len(self.primitives) - 1
            if image is not None:
                self.note(f"{mesh_name}: material '{m_name}' has a texture but the mesh has no {coord}; "
                          "using its base colour")
        uv = G.read_accessor(gltf, attrs["TEXCOORD_0"]).astype(np.float64) if "TEXCOORD_0" in attrs else None
        colours = None
        if "COLOR_0" in attrs:
            colours = linear_to_srgb(G.read_accessor(gltf, attrs["COLOR_0"])[:, :3].astype(np.float64))
            colours = colours * linear_to_srgb(np.asarray(factor[:3]))
        return self.add_untextured(mesh_name, aliases, positions, faces, uv, normals, colours, factor, m_index,
                                   m_name, key)

    def gltf_texture(self, gltf: G.Gltf, info: dict, material: str) -> tuple | None:
        """(rgb, alpha) of a textureInfo, or None with a warning when it cannot be read."""
        textures = gltf.json.get("textures", [])
        index = info.get("index")
        if index is None or index >= len(textures) or textures[index].get("source") is None:
            self.note(f"material '{material}': its base-colour texture is in a format nst3d cannot read "
                      "(KTX2/WebP extension?); using the base colour")
            return None
        source = textures[index]["source"]
        try:
            data, _ = G.image_bytes(gltf, source)
            return decode_image(data, f"texture of material '{material}'")
        except FileNotFoundError as exc:
            self.note(f"{exc}: using the base colour of material '{material}' instead")
            return None

    # ----------------------------------------------------------------------------------------- trimesh

    def from_trimesh(self) -> MeshAsset:
        import trimesh

        self.check_obj_textures()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scene = trimesh.load(self.path, force="scene", process=False)
        except (ValueError, KeyError, IndexError, OSError, TypeError) as exc:
            raise UserError(f"cannot read {self.path.name} ({exc.__class__.__name__}: {str(exc)[:120]}); "
                            "is it a valid mesh file?") from None
        by_geometry: dict[str, int] = {}
        for node in scene.graph.nodes_geometry:
            transform, geometry_name = scene.graph[node]
            geometry = scene.geometry[geometry_name]
            if not isinstance(geometry, trimesh.Trimesh):
                continue
            if geometry_name not in by_geometry:
                loaded = self.trimesh_primitive(geometry, geometry_name)
                if loaded is None:
                    continue
                by_geometry[geometry_name] = loaded
            self.instances.append(Instance(by_geometry[geometry_name], np.asarray(transform, dtype=np.float64),
                                           str(node)))
        return MeshAsset(self.path, self.primitives, self.instances, self.slots, None, self.notes)

    def check_obj_textures(self) -> None:
        """Warn about map_Kd files an OBJ's .mtl names but that are missing (trimesh drops them quietly)."""
        if self.path.suffix.lower() != ".obj":
            return
        text = self.path.read_text(errors="replace")
        libraries = re.findall(r"^\s*mtllib\s+(.+?)\s*$", text, flags=re.M)
        if not libraries and self.extra is None and re.search(r"^\s*vt\s", text, flags=re.M):
            self.note(f"{self.path.name} has UVs but names no material library (mtllib), so no texture: starting "
                      "from a plain colour; pass --texture IMAGE to start from its texture")
        for lib in libraries:
            mtl = self.path.parent / lib
            if not mtl.is_file():
                self.note(f"material library {lib} not found: using plain colours")
                continue
            for image in re.findall(r"^\s*map_Kd\s+(?:-\S+\s+\S+\s+)*(.+?)\s*$", mtl.read_text(errors="replace"),
                                    flags=re.M):
                if not (mtl.parent / image).is_file():
                    self.note(f"texture {image} (named in {lib}) not found: using the base colour")

    def trimesh_primitive(self, geometry, name: str) -> int | None:
        positions = np.asarray(geometry.vertices, dtype=np.float64)
        faces = np.asarray(geometry.faces, dtype=np.int64)
        if len(faces) == 0:
            return None
        check_finite(self.path, name, positions)
        normals = vertex_normals(positions, faces)
        visual = geometry.visual
        uv = getattr(visual, "uv", None)
        uv = None if uv is None or len(uv) != len(positions) else np.asarray(uv, dtype=np.float64)
        if uv is not None:
            uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # trimesh: v up -> image convention
        material = getattr(visual, "material", None)
        m_name = getattr(material, "name", None) or ""
        image = None
        factor = [NO_COLOUR] * 3 + [1.0]
        if material is not None:
            image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
            colour = getattr(material, "baseColorFactor", None)
            if image is not None and max(image.size) <= 2:
                # trimesh's stand-in for "no material" (a 2x2 single-colour image): no texture, no colour.
                image = None
            elif colour is None and image is None:
                colour = getattr(material, "diffuse", None)
            if image is not None and colour is None:
                factor = [1.0, 1.0, 1.0, 1.0]
            if colour is not None:
                factor = list(srgb_to_linear(np.asarray(colour[:3], dtype=np.float64) / 255.0)) + [
                    float(colour[3]) / 255.0 if len(colour) > 3 else 1.0]
                if getattr(material, "baseColorFactor", None) is not None:  # PBR factors are linear already
                    factor = [float(c) / 255.0 for c in colour[:3]] + factor[3:]
        aliases = {name} | ({m_name} if m_name else set())
        if image is not None and uv is not None:
            from nst3d.files import _to_float_array

            array = _to_float_array(image)
            tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
            rgb, alpha = (tensor[:3], tensor[3:]) if tensor.shape[0] == 4 else (tensor, None)
            if is_palette(uv, faces, rgb) and not self.keep_palette(name, m_name):
                return self.add_palette(name, aliases, positions, faces, uv, normals, rgb, factor, None, m_name,
                                        ("trimesh", name))
            slot = self.textured_slot(("trimesh", id(material)), m_name or name, aliases, rgb, alpha, factor,
                                      len(self.textured))
            self.primitives.append(Primitive(name, positions, faces, uv, normals, slot, ("trimesh", name)))
            return len(self.primitives) - 1
        colours = None
        if getattr(visual, "kind", None) == "vertex":
            colours = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        return self.add_untextured(name, aliases, positions, faces, uv, normals, colours, factor, None, m_name,
                                   ("trimesh", name))
