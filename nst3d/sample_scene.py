"""A small multi-object scene the project makes itself (no downloads), for `nst3d demo` and for trying the
mesh backend: six objects in two rows, some with UVs and procedural textures, some without UVs (so they
need an atlas), some with only a base colour and one with no material at all.

    write_sample_scene(path)      -> path: writes the scene as a GLB (deterministic bytes)
    sample_scene_objects()        -> the objects as (name, positions, faces, uv | None, material) tuples
    python -m nst3d.sample_scene OUT.glb
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nst3d.backends.mesh import gltf as G
from nst3d.files import atomic_path

TEXTURE_SIZE = 256


def _texture_png(kind: str, seed: int) -> bytes:
    """A procedural texture (checker, stripes or wood), PNG bytes, TEXTURE_SIZE square."""
    from PIL import Image

    n = TEXTURE_SIZE
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    rng = np.random.default_rng(seed)
    if kind == "checker":
        cells = ((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None]
        img = cells * np.array([0.92, 0.88, 0.78]) + (1 - cells) * np.array([0.2, 0.35, 0.55])
    elif kind == "stripes":
        t = (np.sin(2 * np.pi * (x * 6 + 0.15 * np.sin(2 * np.pi * y * 2))) > 0)[..., None]
        img = t * np.array([0.95, 0.6, 0.15]) + (1 - t) * np.array([0.85, 0.2, 0.25])
    else:  # wood: rings around an off-centre axis, with a little deterministic grain
        noise = rng.normal(0, 1, (n // 8, n // 8))
        grain = np.kron(noise, np.ones((8, 8)))[:n, :n] * 0.03
        r = np.sqrt((x - 0.3) ** 2 * 4 + (y + 0.2) ** 2 * 0.3) * 18 + grain * 10
        t = (0.5 + 0.5 * np.sin(r))[..., None]
        img = t * np.array([0.72, 0.5, 0.28]) + (1 - t) * np.array([0.45, 0.28, 0.14])
    array = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _uv_sphere(radius: float, rows: int = 16, cols: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A latitude-longitude sphere with a UV seam: (positions, faces, uv in image convention)."""
    theta = np.linspace(0, np.pi, rows + 1)
    phi = np.linspace(0, 2 * np.pi, cols + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    positions = np.stack([np.sin(t) * np.cos(p), np.cos(t), -np.sin(t) * np.sin(p)], -1).reshape(-1, 3) * radius
    uv = np.stack([p / (2 * np.pi), t / np.pi], -1).reshape(-1, 2)
    faces = []
    for i in range(rows):
        for j in range(cols):
            a, b = i * (cols + 1) + j, (i + 1) * (cols + 1) + j
            if i > 0:
                faces.append([a, b, a + 1])
            if i < rows - 1:
                faces.append([a + 1, b, b + 1])
    return positions, np.array(faces, dtype=np.int64), uv


def _box(size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A box with each face in its own cell of a 3 x 2 UV layout (no overlaps)."""
    sx, sy, sz = (s / 2 for s in size)
    # (normal axis, sign) per face; corners counter-clockwise seen from outside.
    quads = {
        (0, 1): [(sx, -sy, sz), (sx, -sy, -sz), (sx, sy, -sz), (sx, sy, sz)],
        (0, -1): [(-sx, -sy, -sz), (-sx, -sy, sz), (-sx, sy, sz), (-sx, sy, -sz)],
        (1, 1): [(-sx, sy, sz), (sx, sy, sz), (sx, sy, -sz), (-sx, sy, -sz)],
        (1, -1): [(-sx, -sy, -sz), (sx, -sy, -sz), (sx, -sy, sz), (-sx, -sy, sz)],
        (2, 1): [(-sx, -sy, sz), (sx, -sy, sz), (sx, sy, sz), (-sx, sy, sz)],
        (2, -1): [(sx, -sy, -sz), (-sx, -sy, -sz), (-sx, sy, -sz), (sx, sy, -sz)],
    }
    positions, uv, faces = [], [], []
    for k, corners in enumerate(quads.values()):
        cx, cy = k % 3, k // 3
        pad = 0.02
        cell = [(cx + pad, cy + 1 - pad), (cx + 1 - pad, cy + 1 - pad), (cx + 1 - pad, cy + pad), (cx + pad, cy + pad)]
        base = len(positions)
        positions += corners
        uv += [(u / 3, v / 2) for u, v in cell]
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    return np.array(positions, dtype=np.float64), np.array(faces, dtype=np.int64), np.array(uv)


def _torus(major: float, minor: float, rings: int = 32, sides: int = 12) -> tuple[np.ndarray, np.ndarray]:
    u = np.linspace(0, 2 * np.pi, rings, endpoint=False)
    v = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    positions = np.stack([(major + minor * np.cos(vv)) * np.cos(uu), minor * np.sin(vv),
                          (major + minor * np.cos(vv)) * np.sin(uu)], -1).reshape(-1, 3)
    faces = []
    for i in range(rings):
        for j in range(sides):
            a, b = i * sides + j, ((i + 1) % rings) * sides + j
            c, d = i * sides + (j + 1) % sides, ((i + 1) % rings) * sides + (j + 1) % sides
            faces += [[a, c, b], [b, c, d]]
    return positions, np.array(faces, dtype=np.int64)


def _cone(radius: float, height: float, sides: int = 24) -> tuple[np.ndarray, np.ndarray]:
    angles = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = np.stack([radius * np.cos(angles), np.zeros(sides), radius * np.sin(angles)], -1)
    positions = np.concatenate([ring, [[0, height, 0]], [[0, 0, 0]]])
    apex, bottom = sides, sides + 1
    faces = [[i, apex, (i + 1) % sides] for i in range(sides)] + [[(i + 1) % sides, bottom, i] for i in range(sides)]
    return positions - [0, height / 3, 0], np.array(faces, dtype=np.int64)


def _icosahedron(radius: float, subdivisions: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A faceted gem: an icosahedron subdivided once and pushed to the sphere, unwelded per face."""
    t = (1 + 5 ** 0.5) / 2
    v = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
                  [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=np.float64)
    f = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
                  [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
                  [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])
    for _ in range(subdivisions):
        tri = v[f]  # [F, 3, 3]
        mids = (tri + np.roll(tri, -1, axis=1)) / 2
        new = []
        for a, b, c, ab, bc, ca in zip(tri[:, 0], tri[:, 1], tri[:, 2], mids[:, 0], mids[:, 1], mids[:, 2],
                                       strict=True):
            new += [[a, ab, ca], [ab, b, bc], [ca, bc, c], [ab, bc, ca]]
        v = np.array(new).reshape(-1, 3)
        f = np.arange(len(v)).reshape(-1, 3)
    v = v / np.linalg.norm(v, axis=1, keepdims=True) * radius
    return v, f


def sample_scene_objects() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any], tuple]]:
    """(name, positions [n, 3], faces [f, 3], uv [n, 2] or None, material {"texture": kind} |
    {"color": rgba} | {}, translation)."""
    sphere = _uv_sphere(0.55)
    crate = _box((0.9, 0.9, 0.9))
    pedestal = _box((1.2, 0.3, 1.2))
    ring = _torus(0.42, 0.14)
    cone = _cone(0.45, 1.0)
    gem = _icosahedron(0.5)
    return [
        ("Ball", *sphere, {"texture": "stripes"}, (-1.3, 0.55, -0.7)),
        ("Crate", *crate, {"texture": "wood"}, (0.0, 0.45, -0.7)),
        ("Pedestal", *pedestal, {"texture": "checker"}, (1.3, 0.15, -0.7)),
        ("Ring", *ring, None, {"color": (0.9, 0.65, 0.15, 1.0)}, (-1.3, 0.14, 0.7)),
        ("Gem", *gem, None, {"color": (0.7, 0.08, 0.12, 1.0)}, (0.0, 0.5, 0.7)),
        ("Cone", *cone, None, {}, (1.3, 0.33, 0.7)),
    ]


def sample_scene_gltf() -> G.Gltf:
    """The scene as an in-memory glTF document."""
    gltf = G.Gltf({"asset": {"version": "2.0", "generator": "nst3d sample scene"}, "scene": 0,
                   "scenes": [{"nodes": []}], "nodes": [], "meshes": [], "materials": [], "textures": [],
                   "images": [], "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071,
                                               "wrapT": 33071}], "accessors": [], "bufferViews": []}, [], Path("."))
    doc = gltf.json
    for seed, (name, positions, faces, uv, material, translation) in enumerate(sample_scene_objects()):
        attributes = {"POSITION": G.add_accessor(gltf, positions.astype(np.float32), target=34962)}
        if uv is not None:
            attributes["TEXCOORD_0"] = G.add_accessor(gltf, uv.astype(np.float32), target=34962)
        primitive: dict[str, Any] = {"attributes": attributes, "mode": 4,
                                     "indices": G.add_accessor(gltf, faces.reshape(-1).astype(np.uint16), target=34963)}
        if "texture" in material:
            image = G.add_image(gltf, _texture_png(material["texture"], seed), material["texture"])
            doc["textures"].append({"source": image, "sampler": 0})
            pbr = {"baseColorTexture": {"index": len(doc["textures"]) - 1}, "metallicFactor": 0.0,
                   "roughnessFactor": 0.8}
            doc["materials"].append({"name": f"{name}Paint", "pbrMetallicRoughness": pbr})
            primitive["material"] = len(doc["materials"]) - 1
        elif "color" in material:
            doc["materials"].append({"name": f"{name}Color", "pbrMetallicRoughness": {
                "baseColorFactor": list(material["color"]), "metallicFactor": 0.0, "roughnessFactor": 0.6}})
            primitive["material"] = len(doc["materials"]) - 1
        doc["meshes"].append({"name": name, "primitives": [primitive]})
        doc["nodes"].append({"name": name, "mesh": len(doc["meshes"]) - 1, "translation": list(translation)})
        doc["scenes"][0]["nodes"].append(len(doc["nodes"]) - 1)
    return gltf


def write_sample_scene(path: str | Path) -> Path:
    """Write the sample scene as a GLB at `path` (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        G.write_glb(sample_scene_gltf(), tmp)
    return path


if __name__ == "__main__":
    print(write_sample_scene(sys.argv[1] if len(sys.argv) > 1 else "sample_scene.glb"))
