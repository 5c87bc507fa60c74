"""A small glTF 2.0 reader/writer (JSON + binary buffers), enough to load triangle meshes with their
base-colour textures and to write the file back with new textures (and new UVs where an atlas was made)
while keeping everything else: node hierarchy, skins, animations, other materials' maps, extras.

trimesh drops skins and animations on export, which is why glTF goes through here instead.
"""

from __future__ import annotations

import base64
import copy
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from nst3d.errors import UserError

GLB_MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
COMPONENT_OF = {np.dtype(v): k for k, v in COMPONENTS.items()}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
TYPE_OF_WIDTH = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
UNSUPPORTED_EXTENSIONS = {
    "KHR_draco_mesh_compression": "Draco-compressed",
    "EXT_meshopt_compression": "meshopt-compressed",
}


@dataclass
class Gltf:
    """A glTF document: its JSON and the bytes of each buffer view (the writer re-packs them)."""

    json: dict[str, Any]
    views: list[bytes]
    folder: Path
    warnings: list[str] = field(default_factory=list)

    def copy(self) -> Gltf:
        return Gltf(copy.deepcopy(self.json), list(self.views), self.folder, list(self.warnings))


def _data_uri(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


def _read_uri(uri: str, folder: Path, what: str) -> bytes:
    if uri.startswith("data:"):
        return _data_uri(uri)
    path = folder / unquote(uri)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    return path.read_bytes()


def read_gltf(path: Path) -> Gltf:
    """Parse a .glb or .gltf file (external and data-URI buffers)."""
    raw = path.read_bytes()
    binary = None
    if raw[:4] == GLB_MAGIC:
        if len(raw) < 20:
            raise UserError(f"{path} is not a valid GLB file (truncated header); re-export it")
        offset, doc = 12, None
        while offset + 8 <= len(raw):
            length, kind = struct.unpack_from("<II", raw, offset)
            chunk = raw[offset + 8: offset + 8 + length]
            if len(chunk) < length:
                raise UserError(f"{path} is a truncated GLB file ({len(raw)} bytes, a chunk needs "
                                f"{offset + 8 + length}); copy it again or re-export it")
            if kind == CHUNK_JSON:
                try:
                    doc = json.loads(chunk.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise UserError(f"{path} is not a valid GLB file (its JSON chunk does not parse); "
                                    "re-export it") from None
            elif kind == CHUNK_BIN and binary is None:
                binary = chunk
            offset += 8 + length
        if doc is None:
            raise UserError(f"{path} is not a valid GLB file (no JSON chunk); re-export it")
    else:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path} is neither a GLB nor a glTF JSON file; re-export it") from None
    if not isinstance(doc, dict) or "asset" not in doc:
        raise UserError(f"{path} is not a glTF 2.0 file (no 'asset'); re-export it")
    for name in doc.get("extensionsRequired", []):
        if name in UNSUPPORTED_EXTENSIONS:
            raise UserError(f"{path} is {UNSUPPORTED_EXTENSIONS[name]} ({name}), which nst3d cannot read; "
                            "decompress it first (e.g. `gltf-transform copy in.glb out.glb`)")
    buffers = []
    for index, buffer in enumerate(doc.get("buffers", [])):
        if "uri" in buffer:
            try:
                buffers.append(_read_uri(buffer["uri"], path.parent, "buffer"))
            except FileNotFoundError as exc:
                raise UserError(f"{exc}; keep the .bin next to the .gltf") from None
        elif index == 0 and binary is not None:
            buffers.append(binary)
        else:
            raise UserError(f"{path}: buffer {index} has no data; re-export the file")
    views = []
    for view in doc.get("bufferViews", []):
        data = buffers[view["buffer"]]
        start = view.get("byteOffset", 0)
        views.append(bytes(data[start:start + view["byteLength"]]))
    return Gltf(doc, views, path.parent)


def read_accessor(gltf: Gltf, index: int, normalize: bool = True) -> np.ndarray:
    """An accessor as [count, width] (width 1 for SCALAR). Normalised integers become floats in [0, 1]/[-1, 1]
    when `normalize`; sparse accessors are applied."""
    acc = gltf.json["accessors"][index]
    dtype = np.dtype(COMPONENTS[acc["componentType"]])
    width = WIDTH[acc["type"]]
    count = acc["count"]
    if "bufferView" in acc:
        view_json = gltf.json["bufferViews"][acc["bufferView"]]
        data = gltf.views[acc["bufferView"]]
        stride = view_json.get("byteStride", 0) or dtype.itemsize * width
        offset = acc.get("byteOffset", 0)
        rows = np.lib.stride_tricks.as_strided(
            np.frombuffer(data, dtype=np.uint8, count=len(data) - offset, offset=offset),
            shape=(count, dtype.itemsize * width), strides=(stride, 1)) if count else np.zeros((0, 0), np.uint8)
        values = np.ascontiguousarray(rows).view(dtype).reshape(count, width).copy()
    else:
        values = np.zeros((count, width), dtype)
    sparse = acc.get("sparse")
    if sparse:
        idx = sparse["indices"]
        ids = np.frombuffer(gltf.views[idx["bufferView"]], COMPONENTS[idx["componentType"]],
                            count=sparse["count"], offset=idx.get("byteOffset", 0))
        val = sparse["values"]
        replaced = np.frombuffer(gltf.views[val["bufferView"]], dtype, count=sparse["count"] * width,
                                 offset=val.get("byteOffset", 0))
        values[ids.astype(np.int64)] = replaced.reshape(-1, width)
    if normalize and acc.get("normalized") and dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.maximum(values.astype(np.float32) / info.max, -1.0)
    return values


def node_matrix(node: dict[str, Any]) -> np.ndarray:
    """A node's local transform [4, 4] (matrix, or translation-rotation-scale)."""
    if "matrix" in node:
        return np.array(node["matrix"], dtype=np.float64).reshape(4, 4).T  # column-major
    t = np.array(node.get("translation", [0, 0, 0]), dtype=np.float64)
    x, y, z, w = node.get("rotation", [0, 0, 0, 1])
    s = np.array(node.get("scale", [1, 1, 1]), dtype=np.float64)
    r = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    m = np.eye(4)
    m[:3, :3] = r * s[None, :]
    m[:3, 3] = t
    return m


def mesh_instances(gltf: Gltf) -> list[tuple[int, int, np.ndarray]]:
    """(node index, mesh index, world transform [4, 4]) for every node with a mesh in the default scene."""
    doc = gltf.json
    nodes = doc.get("nodes", [])
    scenes = doc.get("scenes", [])
    if scenes:
        roots = scenes[doc.get("scene", 0)].get("nodes", [])
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    out = []
    stack = [(r, np.eye(4)) for r in roots]
    seen = set()
    while stack:
        index, parent = stack.pop()
        if index in seen:  # a malformed cyclic hierarchy
            continue
        seen.add(index)
        node = nodes[index]
        world = parent @ node_matrix(node)
        if "mesh" in node:
            out.append((index, node["mesh"], world))
        stack.extend((c, world) for c in node.get("children", []))
    return sorted(out, key=lambda item: item[0])


def triangles(gltf: Gltf, primitive: dict[str, Any], vertex_count: int) -> np.ndarray | None:
    """The primitive's triangles [F, 3] (strips and fans converted); None for points and lines."""
    mode = primitive.get("mode", 4)
    if "indices" in primitive:
        idx = read_accessor(gltf, primitive["indices"], normalize=False).reshape(-1).astype(np.int64)
    else:
        idx = np.arange(vertex_count, dtype=np.int64)
    if mode == 4:
        return idx[: len(idx) // 3 * 3].reshape(-1, 3)
    if mode == 5:  # strip: alternate the winding
        tri = np.stack([idx[:-2], idx[1:-1], idx[2:]], axis=1)
        tri[1::2] = tri[1::2][:, [1, 0, 2]]
        return tri
    if mode == 6:  # fan
        return np.stack([np.full(len(idx) - 2, idx[0]), idx[1:-1], idx[2:]], axis=1)
    return None


def image_bytes(gltf: Gltf, image_index: int) -> tuple[bytes, str]:
    """(encoded bytes, mime type) of an image; FileNotFoundError if its file is missing."""
    image = gltf.json["images"][image_index]
    if "bufferView" in image:
        return gltf.views[image["bufferView"]], image.get("mimeType", "image/png")
    uri = image.get("uri")
    if uri is None:
        raise FileNotFoundError(f"image {image_index} has no data")
    mime = image.get("mimeType") or ("image/jpeg" if uri.lower().endswith((".jpg", ".jpeg")) else "image/png")
    return _read_uri(uri, gltf.folder, "texture image"), mime


# ---------------------------------------------------------------------------------------------- writing


def add_view(gltf: Gltf, data: bytes, target: int | None = None) -> int:
    """Append a buffer view holding `data`; returns its index."""
    view: dict[str, Any] = {"buffer": 0, "byteLength": len(data)}
    if target is not None:
        view["target"] = target
    gltf.json.setdefault("bufferViews", []).append(view)
    gltf.views.append(bytes(data))
    return len(gltf.views) - 1


def add_accessor(gltf: Gltf, values: np.ndarray, normalized: bool = False, target: int | None = None) -> int:
    """Append an accessor for values [count, width] (or [count]); min/max are written (POSITION needs them)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.float64:
        values = values.astype(np.float32)
    width = 1 if values.ndim == 1 else values.shape[1]
    view = add_view(gltf, values.tobytes(), target)
    acc: dict[str, Any] = {"bufferView": view, "componentType": COMPONENT_OF[values.dtype], "count": len(values),
                           "type": TYPE_OF_WIDTH[width]}
    if normalized:
        acc["normalized"] = True
    if len(values):
        flat = values.reshape(len(values), width)
        acc["min"] = flat.min(0).tolist()
        acc["max"] = flat.max(0).tolist()
    gltf.json.setdefault("accessors", []).append(acc)
    return len(gltf.json["accessors"]) - 1


def add_image(gltf: Gltf, png: bytes, name: str | None = None) -> int:
    """Append a PNG image stored in the binary buffer; returns its index."""
    image: dict[str, Any] = {"bufferView": add_view(gltf, png), "mimeType": "image/png"}
    if name:
        image["name"] = name
    gltf.json.setdefault("images", []).append(image)
    return len(gltf.json["images"]) - 1


def embed_images(gltf: Gltf) -> None:
    """Store every image given by URI inside the binary buffer (a GLB is one file)."""
    for index, image in enumerate(gltf.json.get("images", [])):
        if "uri" in image and "bufferView" not in image:
            try:
                data, mime = image_bytes(gltf, index)
            except FileNotFoundError:
                continue  # a missing file stays a (broken) reference, as it was; the loader warned
            image.pop("uri")
            image["bufferView"] = add_view(gltf, data)
            image["mimeType"] = mime


def write_glb(gltf: Gltf, path: Path) -> None:
    """Pack the document into one GLB (every buffer view re-laid into one 4-byte-aligned binary chunk)."""
    embed_images(gltf)
    doc = gltf.json
    blob = bytearray()
    for view, data in zip(doc.get("bufferViews", []), gltf.views, strict=True):
        blob.extend(b"\0" * (-len(blob) % 4))
        view["buffer"] = 0
        view["byteOffset"] = len(blob)
        view["byteLength"] = len(data)
        blob.extend(data)
    blob.extend(b"\0" * (-len(blob) % 4))
    doc["buffers"] = [{"byteLength": len(blob)}] if blob else []
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<II", len(text), CHUNK_JSON) + text
    if blob:
        chunks += struct.pack("<II", len(blob), CHUNK_BIN) + bytes(blob)
    path.write_bytes(GLB_MAGIC + struct.pack("<II", 2, 12 + len(chunks)) + chunks)
