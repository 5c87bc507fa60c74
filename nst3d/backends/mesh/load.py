"""Load a mesh asset into texture slots: glTF/GLB through nst3d's own glTF reader (so the export can patch
the original file and keep skins, animations and hierarchy), OBJ(+MTL)/PLY/STL/OFF through trimesh.

Each material's base-colour texture becomes a slot (its UV layout and resolution are kept, or resampled to
`texture_size`). Triangles without a texture get a slot of their own, per primitive/object: their UVs are
kept when they form a valid layout, else a UV atlas is made (xatlas), and the texture
starts from the vertex colours or the base colour. Geometry is never changed (an atlas only splits vertices
along its seams; every vertex keeps its position and attributes).

Colours are display (sRGB-encoded) values in [0, 1]; a glTF baseColorFactor (linear) is baked in.
UVs are stored in image convention: (0, 0) is the top-left corner of the texture, v grows downwards.

The asset's types live in asset.py, texture and UV-layout helpers (atlases, palettes, texel coverage) in uv.py.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

import nst3d.backends.mesh.gltf as G
from nst3d.backends.mesh.asset import Instance, MeshAsset, Primitive, Slot
from nst3d.backends.mesh.uv import (
    bake_texture,
    decode_image,
    is_palette,
    layout_texels,
    linear_to_srgb,
    make_atlas,
    paint_vertex_colours,
    resize_texture,
    srgb_to_linear,
    texel_coverage,
    tint,
    uv_layout_ok,
    vertex_normals,
)
from nst3d.errors import UserError

SUPPORTED = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
DEFAULT_TEXTURE_SIZE = 1024
NO_COLOUR = 0.5  # linear mid grey for surfaces without any colour (glTF's default white hides shapes)


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

        extra = load_image(texture, "texture", upright=False)  # UVs address the stored pixels
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

        resolver = self.obj_material_resolver()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scene = trimesh.load(self.path, force="scene", process=False, resolver=resolver)
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

    def obj_material_resolver(self):
        """For an OBJ: a trimesh resolver serving its .mtl and map_Kd files wherever they were found (see mtl.py),
        with a note for each one that is missing or was found under another name; None for other formats."""
        if self.path.suffix.lower() != ".obj":
            return None
        from nst3d.backends.mesh.mtl import MaterialFileResolver, locate_material_files

        text = self.path.read_text(errors="replace")
        if self.extra is None and not re.search(r"^\s*mtllib\s", text, flags=re.M) and re.search(r"^\s*vt\s", text,
                                                                                                   flags=re.M):
            self.note(f"{self.path.name} has UVs but names no material library (mtllib), so no texture: starting "
                      "from a plain colour; pass --texture IMAGE to start from its texture")
        found = locate_material_files(self.path, text)
        for note in found.notes:
            self.note(note)
        return MaterialFileResolver(self.path, found.files)

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
