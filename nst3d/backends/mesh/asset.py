"""A loaded mesh asset: primitives (triangles as the file stores them), their world placements (instances),
and texture slots (one optimised texture each); `MeshAsset.world()` flattens it for the rasterizer.

Colours are display (sRGB-encoded) values in [0, 1]. UVs are in image convention: (0, 0) is the top-left
corner of the texture, v grows downwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import nst3d.backends.mesh.gltf as G


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
