"""Small meshes the mesh tests make themselves (no shared assets): written with trimesh or nst3d's glTF
writer, with procedural textures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from nst3d.backends.mesh import gltf as G


def checker(size: int = 16, cells: int = 4) -> np.ndarray:
    """uint8 [size, size, 3]: red/blue checker with a green top-left cell (orientation checks)."""
    y, x = np.mgrid[0:size, 0:size] * cells // size
    img = np.where(((x + y) % 2 == 0)[..., None], [220, 30, 30], [30, 30, 220]).astype(np.uint8)
    c = size // cells
    img[:c, :c] = [30, 200, 30]
    return img


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def quad() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A unit square in the z = 0 plane facing +z: (positions [4, 3], faces [2, 3], uv [4, 2] image convention,
    (0, 0) at the top-left corner = (-0.5, +0.5, 0))."""
    positions = np.array([[-0.5, 0.5, 0], [0.5, 0.5, 0], [0.5, -0.5, 0], [-0.5, -0.5, 0]], dtype=np.float64)
    faces = np.array([[0, 3, 2], [0, 2, 1]], dtype=np.int64)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    return positions, faces, uv


def icosphere(subdivisions: int = 1):
    import trimesh

    return trimesh.creation.icosphere(subdivisions=subdivisions)


def write_glb(path: Path, objects: list[dict], extras: dict | None = None) -> Path:
    """objects: {"name", "positions", "faces", "uv" (or None), "texture" (uint8 image or None),
    "color" (rgba or None), "translation"}."""
    gltf = G.Gltf({"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": []}], "nodes": [], "meshes": [],
                   "materials": [], "textures": [], "images": [], "accessors": [], "bufferViews": []}, [], path.parent)
    doc = gltf.json
    for obj in objects:
        attrs = {"POSITION": G.add_accessor(gltf, obj["positions"].astype(np.float32))}
        if obj.get("uv") is not None:
            attrs["TEXCOORD_0"] = G.add_accessor(gltf, obj["uv"].astype(np.float32))
        prim = {"attributes": attrs, "indices": G.add_accessor(gltf, obj["faces"].reshape(-1).astype(np.uint32))}
        if obj.get("texture") is not None:
            image = G.add_image(gltf, png_bytes(obj["texture"]))
            doc["textures"].append({"source": image})
            doc["materials"].append({"name": obj["name"] + "Mat",
                                     "pbrMetallicRoughness": {"baseColorTexture": {"index": len(doc["textures"]) - 1}}})
            prim["material"] = len(doc["materials"]) - 1
        elif obj.get("color") is not None:
            doc["materials"].append({"name": obj["name"] + "Mat",
                                     "pbrMetallicRoughness": {"baseColorFactor": list(obj["color"])}})
            prim["material"] = len(doc["materials"]) - 1
        doc["meshes"].append({"name": obj["name"], "primitives": [prim]})
        doc["nodes"].append({"name": obj["name"], "mesh": len(doc["meshes"]) - 1,
                             "translation": list(obj.get("translation", (0, 0, 0)))})
        doc["scenes"][0]["nodes"].append(len(doc["nodes"]) - 1)
    if extras:
        doc.update(extras)
    G.write_glb(gltf, path)
    return path


def textured_quad_glb(path: Path, size: int = 16) -> Path:
    positions, faces, uv = quad()
    return write_glb(path, [{"name": "Quad", "positions": positions, "faces": faces, "uv": uv,
                             "texture": checker(size)}])


def two_object_glb(path: Path) -> Path:
    """A textured quad and an untextured, UV-less icosphere with a base colour."""
    positions, faces, uv = quad()
    sphere = icosphere(1)
    return write_glb(path, [
        {"name": "Quad", "positions": positions, "faces": faces, "uv": uv, "texture": checker(16)},
        {"name": "Ball", "positions": np.asarray(sphere.vertices) * 0.4, "faces": np.asarray(sphere.faces),
         "uv": None, "color": (0.2, 0.6, 0.3, 1.0), "translation": (1.2, 0, 0)},
    ])


def textured_obj(folder: Path, texture_name: str = "tex.png", write_texture: bool = True) -> Path:
    """quad.obj + quad.mtl (+ tex.png): OBJ's v points up, so v = 1 - image row."""
    folder.mkdir(parents=True, exist_ok=True)
    positions, faces, uv = quad()
    lines = ["mtllib quad.mtl", "o Quad"]
    lines += [f"v {x} {y} {z}" for x, y, z in positions]
    lines += [f"vt {u} {1 - v}" for u, v in uv]
    lines += ["usemtl Paint"] + [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
    (folder / "quad.obj").write_text("\n".join(lines) + "\n")
    (folder / "quad.mtl").write_text(f"newmtl Paint\nKd 1 1 1\nmap_Kd {texture_name}\n")
    if write_texture:
        (folder / texture_name).write_bytes(png_bytes(checker(16)))
    return folder / "quad.obj"


PALETTE = np.array([[[230, 40, 40], [40, 200, 60], [40, 60, 230], [240, 220, 40]]], dtype=np.uint8)  # [1, 4, 3]


def palette_sphere_glb(path: Path) -> Path:
    """An icosphere textured like voxel/low-poly art: a 4x1 colour palette, each triangle's three UVs on the
    centre of swatch (triangle index % 4), so the UV layout has no area. Unwelded (3 vertices per triangle)."""
    sphere = icosphere(1)
    faces = np.asarray(sphere.faces)
    positions = np.asarray(sphere.vertices)[faces].reshape(-1, 3) * 0.5
    swatch = (np.arange(len(faces)) % 4 + 0.5) / 4
    uv = np.stack([np.repeat(swatch, 3), np.full(3 * len(faces), 0.5)], axis=1)
    return write_glb(path, [{"name": "Gem", "positions": positions, "faces": np.arange(3 * len(faces)).reshape(-1, 3),
                             "uv": uv, "texture": PALETTE}])
