"""Write the stylized asset: GLB (default) or OBJ + MTL + PNG, beside (never over) the input.

- glTF/GLB input -> GLB: the original document is patched: each stylized material's base-colour image is
  replaced (or a new image/texture is added when it was shared with something else), untextured primitives
  get a new material with the new texture (and, where an atlas was made, new vertex attributes remapped from
  the old ones plus a new TEXCOORD set). Nodes, skins, animations and other maps are kept.
- other inputs -> GLB: a fresh glTF with the same vertices, triangles, normals, UVs and node transforms.
- OBJ: world-space geometry per object with `usemtl` per slot and one PNG per slot.
Textures are expected dilated past their UV charts already (MeshBackend.stylized_textures does it).
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nst3d.backends.mesh.gltf as G
from nst3d.backends.mesh.asset import MeshAsset, Slot
from nst3d.files import atomic_path

FORMATS = ("glb", "obj")
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


def texture_image(texture: torch.Tensor, slot: Slot) -> np.ndarray:
    """[3, H, W] in [0, 1] (+ the slot's original alpha, resized if needed) -> uint8 [H, W, 3 or 4]."""
    channels = texture.detach().float().cpu().clamp(0, 1)
    if slot.alpha is not None:
        alpha = slot.alpha.float()
        if alpha.shape[-2:] != channels.shape[-2:]:
            alpha = torch.nn.functional.interpolate(alpha[None], size=channels.shape[-2:], mode="bilinear",
                                                    align_corners=False)[0]
        channels = torch.cat([channels, alpha.clamp(0, 1)])
    return channels.mul(255).round().byte().permute(1, 2, 0).contiguous().numpy()


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, "RGBA" if array.shape[2] == 4 else "RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "texture"


def texture_file_names(asset: MeshAsset, stem: str) -> list[str]:
    """One PNG file name per slot: <stem>_<slot>.png (made unique)."""
    names, seen = [], set()
    for slot in asset.slots:
        base = f"{stem}_{safe_name(slot.name)}"
        name, k = f"{base}.png", 1
        while name in seen:
            k += 1
            name = f"{base}_{k}.png"
        seen.add(name)
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------- GLB


def _texture_references(doc: dict[str, Any]) -> dict[int, int]:
    """How many textureInfo objects (any material, any extension) use each texture."""
    counts: dict[int, int] = {}

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            if key.endswith("Texture") and isinstance(node.get("index"), int):
                counts[node["index"]] = counts.get(node["index"], 0) + 1
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(doc.get("materials", []))
    return counts


def _image_users(doc: dict[str, Any]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for texture in doc.get("textures", []):
        if texture.get("source") is not None:
            counts[texture["source"]] = counts.get(texture["source"], 0) + 1
    return counts


def _view_users(doc: dict[str, Any]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for item in doc.get("accessors", []) + doc.get("images", []):
        if "bufferView" in item:
            counts[item["bufferView"]] = counts.get(item["bufferView"], 0) + 1
    return counts


def _set_image(gltf: G.Gltf, image_index: int, png: bytes) -> None:
    """Replace an image's data with a PNG (in place when its buffer view is its own)."""
    image = gltf.json["images"][image_index]
    view = image.get("bufferView")
    if view is not None and _view_users(gltf.json).get(view, 0) == 1:
        gltf.views[view] = png
    else:
        image.pop("uri", None)
        image["bufferView"] = G.add_view(gltf, png)
    image["mimeType"] = "image/png"


def _new_texture(gltf: G.Gltf, png: bytes, name: str, sampler: int | None) -> int:
    doc = gltf.json
    texture: dict[str, Any] = {"source": G.add_image(gltf, png, name)}
    if sampler is None:
        doc.setdefault("samplers", []).append({"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497})
        sampler = len(doc["samplers"]) - 1
    texture["sampler"] = sampler
    doc.setdefault("textures", []).append(texture)
    return len(doc["textures"]) - 1


def _rewrite_primitive(gltf: G.Gltf, prim_json: dict[str, Any], vertex_map: np.ndarray, faces: np.ndarray,
                       uv: np.ndarray) -> int:
    """Give a primitive its atlas: every attribute (and morph target) remapped through vertex_map, new
    triangle indices, and the new UVs as a new TEXCOORD set; returns that set's number."""
    accessors = gltf.json["accessors"]

    def remap(index: int) -> int:
        values = G.read_accessor(gltf, index, normalize=False)
        return G.add_accessor(gltf, values[vertex_map], bool(accessors[index].get("normalized")), ARRAY_BUFFER)

    attrs = prim_json["attributes"]
    prim_json["attributes"] = {name: remap(index) for name, index in attrs.items()}
    for target in prim_json.get("targets", []):
        for name, index in list(target.items()):
            target[name] = remap(index)
    coord = sum(1 for name in attrs if name.startswith("TEXCOORD_"))
    prim_json["attributes"][f"TEXCOORD_{coord}"] = G.add_accessor(gltf, uv.astype(np.float32), target=ARRAY_BUFFER)
    index_type = np.uint16 if len(vertex_map) < 65535 else np.uint32
    prim_json["indices"] = G.add_accessor(gltf, faces.reshape(-1).astype(index_type), target=ELEMENT_ARRAY_BUFFER)
    prim_json["mode"] = 4
    return coord


def patch_gltf(asset: MeshAsset, pngs: list[bytes]) -> G.Gltf:
    """The input glTF with the stylized textures (see the module docstring)."""
    assert asset.gltf is not None
    gltf = asset.gltf.copy()
    doc = gltf.json
    texture_refs = _texture_references(doc)
    image_users = _image_users(doc)
    materials = doc.setdefault("materials", [])
    original_count = len(materials)
    for index, (slot, png) in enumerate(zip(asset.slots, pngs, strict=True)):
        prims = [p for p in asset.primitives if p.slot == index]
        if not slot.generated and slot.material is not None and slot.material < original_count:
            pbr = materials[slot.material].setdefault("pbrMetallicRoughness", {})
            info = pbr["baseColorTexture"]
            texture = doc["textures"][info["index"]]
            source = texture.get("source")
            if texture_refs.get(info["index"], 0) == 1 and image_users.get(source, 0) == 1:
                _set_image(gltf, source, png)
            else:
                info["index"] = _new_texture(gltf, png, slot.name, texture.get("sampler"))
            pbr["baseColorFactor"] = [1.0, 1.0, 1.0, slot.alpha_factor]
            continue
        base = copy.deepcopy(materials[slot.material]) if slot.material is not None else {}
        base["name"] = f"{slot.name}_nst3d"
        pbr = base.setdefault("pbrMetallicRoughness", {})
        if slot.material is None:
            pbr.update({"metallicFactor": 0.0, "roughnessFactor": 1.0})
        pbr["baseColorFactor"] = [1.0, 1.0, 1.0, slot.alpha_factor]
        coord = 0
        for prim in prims:
            _, mesh_index, prim_index = prim.source
            prim_json = doc["meshes"][mesh_index]["primitives"][prim_index]
            if prim.vertex_map is not None:
                coord = _rewrite_primitive(gltf, prim_json, prim.vertex_map, prim.faces, prim.uv)
            prim_json["material"] = len(materials)
        pbr["baseColorTexture"] = {"index": _new_texture(gltf, png, slot.name, None), "texCoord": coord}
        materials.append(base)
    doc.setdefault("asset", {})["generator"] = "nst3d (stylized textures)"
    return gltf


def fresh_gltf(asset: MeshAsset, pngs: list[bytes]) -> G.Gltf:
    """A new glTF of the asset's primitives and instances with the stylized textures."""
    gltf = G.Gltf({"asset": {"version": "2.0", "generator": "nst3d"}, "scene": 0, "scenes": [{"nodes": []}],
                   "nodes": [], "meshes": [], "materials": [], "accessors": [], "bufferViews": []}, [], Path("."))
    doc = gltf.json
    for slot, png in zip(asset.slots, pngs, strict=True):
        doc["materials"].append({
            "name": slot.name,
            "pbrMetallicRoughness": {"baseColorTexture": {"index": _new_texture(gltf, png, slot.name, None)},
                                     "baseColorFactor": [1.0, 1.0, 1.0, slot.alpha_factor],
                                     "metallicFactor": 0.0, "roughnessFactor": 1.0},
            "doubleSided": True})
    for prim in asset.primitives:
        index_type = np.uint16 if len(prim.positions) < 65535 else np.uint32
        doc["meshes"].append({"name": prim.name, "primitives": [{
            "attributes": {"POSITION": G.add_accessor(gltf, prim.positions.astype(np.float32), target=ARRAY_BUFFER),
                           "NORMAL": G.add_accessor(gltf, prim.normals.astype(np.float32), target=ARRAY_BUFFER),
                           "TEXCOORD_0": G.add_accessor(gltf, prim.uv.astype(np.float32), target=ARRAY_BUFFER)},
            "indices": G.add_accessor(gltf, prim.faces.reshape(-1).astype(index_type), target=ELEMENT_ARRAY_BUFFER),
            "material": prim.slot, "mode": 4}]})
    for inst in asset.instances:
        node: dict[str, Any] = {"name": inst.node, "mesh": inst.primitive}
        if not np.allclose(inst.transform, np.eye(4)):
            node["matrix"] = inst.transform.T.reshape(-1).tolist()  # column-major
        doc["nodes"].append(node)
        doc["scenes"][0]["nodes"].append(len(doc["nodes"]) - 1)
    return gltf


def export_glb(asset: MeshAsset, textures: list[torch.Tensor], path: Path) -> Path:
    pngs = [encode_png(texture_image(t, s)) for t, s in zip(textures, asset.slots, strict=True)]
    gltf = patch_gltf(asset, pngs) if asset.gltf is not None else fresh_gltf(asset, pngs)
    with atomic_path(path) as tmp:
        G.write_glb(gltf, tmp)
    return path


# ----------------------------------------------------------------------------------------------- OBJ


def _rows(prefix: str, values: np.ndarray, fmt: str) -> str:
    if len(values) == 0:
        return ""
    buffer = io.StringIO()
    np.savetxt(buffer, values, fmt=f"{prefix} {fmt}")
    return buffer.getvalue()


def export_obj(asset: MeshAsset, textures: list[torch.Tensor], path: Path) -> list[Path]:
    """OBJ (world space) + MTL + one PNG per slot; returns the files written (the .obj last)."""
    from PIL import Image

    names = texture_file_names(asset, path.stem)
    mtl_path = path.with_suffix(".mtl")
    written = []
    for name, texture, slot in zip(names, textures, asset.slots, strict=True):
        array = texture_image(texture, slot)
        target = path.parent / name
        with atomic_path(target) as tmp:
            Image.fromarray(array, "RGBA" if array.shape[2] == 4 else "RGB").save(tmp, format="PNG")
        written.append(target)
    materials = [f"newmtl {safe_name(s.name)}_{k}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd {s.alpha_factor:g}\nillum 1\n"
                 f"map_Kd {name}\n" for k, (s, name) in enumerate(zip(asset.slots, names, strict=True))]
    with atomic_path(mtl_path) as tmp:
        tmp.write_text("# nst3d stylized materials\n" + "\n".join(materials))
    written.append(mtl_path)
    parts = [f"# nst3d stylized mesh\nmtllib {mtl_path.name}\n"]
    offset = 1
    for inst in asset.instances:
        prim = asset.primitives[inst.primitive]
        m = inst.transform
        positions = prim.positions @ m[:3, :3].T + m[:3, 3]
        normals = prim.normals @ np.linalg.inv(m[:3, :3])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
        uv = np.stack([prim.uv[:, 0], 1.0 - prim.uv[:, 1]], axis=1)  # OBJ: v up
        f = prim.faces + offset
        faces = np.repeat(f, 3, axis=1)  # a/a/a
        parts.append(f"o {safe_name(inst.node)}\n" + _rows("v", positions, "%.7g %.7g %.7g")
                     + _rows("vt", uv, "%.7g %.7g") + _rows("vn", normals, "%.5f %.5f %.5f")
                     + f"usemtl {safe_name(asset.slots[prim.slot].name)}_{prim.slot}\n"
                     + _rows("f", faces, "%d/%d/%d %d/%d/%d %d/%d/%d"))
        offset += len(positions)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(parts))
    written.append(path)
    return written


def export_asset(asset: MeshAsset, textures: list[torch.Tensor], out_dir: Path, stem: str, fmt: str = "glb"
                 ) -> dict[str, Any]:
    """Write <out_dir>/<stem>.glb (plus one PNG per texture for convenience) or <stem>.obj/.mtl/PNGs.

    Returns {"asset": path, "textures": [paths]}.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "obj":
        files = export_obj(asset, textures, out_dir / f"{stem}.obj")
        return {"asset": files[-1], "textures": files[:-2], "material_library": files[-2]}
    from PIL import Image

    pngs = []
    for name, texture, slot in zip(texture_file_names(asset, stem), textures, asset.slots, strict=True):
        array = texture_image(texture, slot)
        with atomic_path(out_dir / name) as tmp:
            Image.fromarray(array, "RGBA" if array.shape[2] == 4 else "RGB").save(tmp, format="PNG")
        pngs.append(out_dir / name)
    return {"asset": export_glb(asset, textures, out_dir / f"{stem}.glb"), "textures": pngs}
