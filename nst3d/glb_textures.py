"""Base-colour textures out of a GLB, with the standard library only: the worker hands the Blender add-on plain
image files, one per material, named after the material the INPUT had (see extract_base_color_textures)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from nst3d.errors import UserError

MIME_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}



def read_glb(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """(glTF JSON, binary chunk) of a .glb file."""
    data = Path(path).read_bytes()
    if len(data) < 20 or data[:4] != b"glTF":
        raise UserError(f"{path} is not a binary glTF (.glb) file")
    (json_len,) = struct.unpack_from("<I", data, 12)
    document = json.loads(data[20:20 + json_len].decode("utf-8"))
    binary = b""
    offset = 20 + json_len
    if offset + 8 <= len(data):
        bin_len, kind = struct.unpack_from("<II", data, offset)
        if kind == 0x004E4942:  # "BIN\0"
            binary = data[offset + 8:offset + 8 + bin_len]
    return document, binary


def extract_base_color_textures(glb: Path, folder: Path, source: Path | None = None) -> list[dict[str, Any]]:
    """Write the base-colour image of each material of `glb` into `folder`.

    With `source` (the job's input GLB, whose meshes and primitives the output keeps in the same order),
    each texture is listed under the name of the material the primitive had in the INPUT, so a backend
    that gives a stylized material a new name (e.g. one made for an untextured part) still maps back.
    Returns [{"material": name, "path": image file, "factor": [r, g, b, a], "glb": glb}].
    """
    document, binary = read_glb(glb)
    names = _input_material_names(document, source) if source is not None else {}
    found, seen = [], set()
    for index, material in enumerate(document.get("materials", [])):
        image = _base_color_image(document, binary, glb, material)
        if image is None:
            continue
        payload, suffix = image
        for name in names.get(index, [material.get("name") or f"material{index}"]):
            if name in seen:
                continue
            seen.add(name)
            folder.mkdir(parents=True, exist_ok=True)
            out = folder / f"{len(found):03d}_{_safe_name(name)}{suffix}"
            out.write_bytes(payload)
            factor = material.get("pbrMetallicRoughness", {}).get("baseColorFactor", [1.0, 1.0, 1.0, 1.0])
            found.append({"material": name, "path": str(out), "glb": str(glb), "factor": factor})
    return found


def _input_material_names(document: dict[str, Any], source: Path) -> dict[int, list[str]]:
    """{output material index: [input material names]} by matching meshes/primitives in order."""
    before, _ = read_glb(source)
    materials = before.get("materials", [])
    names: dict[int, list[str]] = {}
    for mesh_in, mesh_out in zip(before.get("meshes", []), document.get("meshes", []), strict=False):
        for prim_in, prim_out in zip(mesh_in.get("primitives", []), mesh_out.get("primitives", []), strict=False):
            if "material" not in prim_in or "material" not in prim_out:
                continue
            name = materials[prim_in["material"]].get("name") or f"material{prim_in['material']}"
            if name not in names.setdefault(prim_out["material"], []):
                names[prim_out["material"]].append(name)
    return names


def _base_color_image(document: dict[str, Any], binary: bytes, glb: Path,
                      material: dict[str, Any]) -> tuple[bytes, str] | None:
    """(encoded image bytes, file suffix) of a material's base-colour texture, or None."""
    ref = material.get("pbrMetallicRoughness", {}).get("baseColorTexture")
    if ref is None:
        return None
    source = document.get("textures", [])[ref["index"]].get("source")
    if source is None:
        return None
    image = document["images"][source]
    suffix = MIME_SUFFIXES.get(image.get("mimeType"), "")
    if "bufferView" in image:
        view = document["bufferViews"][image["bufferView"]]
        start = view.get("byteOffset", 0)
        return binary[start:start + view["byteLength"]], suffix or ".png"
    uri = image.get("uri", "")
    if uri and not uri.startswith("data:"):
        file = glb.parent / uri
        return file.read_bytes(), suffix or file.suffix
    return None


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "material"
