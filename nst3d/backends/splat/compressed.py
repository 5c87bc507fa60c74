"""SuperSplat / PlayCanvas compressed PLY (`*.compressed.ply`), decoded to the in-memory INRIA layout, as
splat-transform's decompress-ply does it.

Layout: element `chunk` (one per 256 Gaussians) of float32 min_x..max_z, min_scale_x..max_scale_z and optionally
min_r..max_b; element `vertex` of uint32 packed_position (11-10-11 bits, a fraction of the chunk's box),
packed_rotation (2 bits: which component is largest, 3 x 10 bits: the others, of rot_0..rot_3 = w, x, y, z),
packed_scale (11-10-11 bits of the chunk's log-scale range) and packed_color (8-8-8-8: r, g, b of
SH_C0 * f_dc + 0.5 within the chunk's colour range, or of [0, 1] without one, then opacity after the sigmoid);
optionally element `sh` of uint8 f_rest_0.. ((v + 0.5) / 256 - 0.5) * 8, with 0 and 255 the range's ends).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from nst3d.backends.splat.ply import (
    MAX_HEADER_BYTES,
    SH_C0,
    PlyElement,
    SplatPly,
    opacity_logit,
    parse_header,
    rest_to_columns,
    splat_from_columns,
)
from nst3d.errors import UserError
from nst3d.files import atomic_path

CHUNK_SIZE = 256
CHUNK_BOUNDS = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "min_scale_x", "min_scale_y", "min_scale_z",
                "max_scale_x", "max_scale_y", "max_scale_z")
CHUNK_COLORS = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
PACKED = ("packed_position", "packed_rotation", "packed_scale", "packed_color")


def read_compressed_ply(path: str | Path) -> SplatPly:
    """Decode a compressed PLY into an in-memory INRIA-layout SplatPly (same frame: compressed PLY is a PLY)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    fmt, elements, _, offset = parse_header(path, head)
    if fmt != "binary_little_endian":
        raise UserError(f"{path}: compressed PLY must be binary_little_endian, not {fmt or 'unknown'}; re-export it")
    chunk, vertex, sh = check_layout(path, elements)
    blocks, size = {}, path.stat().st_size
    for element in elements:
        need = offset + element.count * element.dtype.itemsize
        if need > size:
            raise UserError(f"{path}: file is truncated ({size} bytes, the header promises {need}); re-export it")
        blocks[element.name] = np.fromfile(path, element.dtype, element.count, offset=offset)
        offset = need
    columns = decode(blocks["chunk"], blocks["vertex"], blocks.get("sh"))
    splat = splat_from_columns(path, columns, "compressed PLY")
    splat.packed = {"chunk": blocks["chunk"], "vertex": blocks["vertex"]}
    return splat


def check_layout(path: Path, elements: list[PlyElement]) -> tuple[PlyElement, PlyElement, PlyElement | None]:
    """(chunk, vertex, sh or None) after checking names, property types and counts."""
    by_name = {e.name: e for e in elements}
    unknown = [e.name for e in elements if e.name not in ("chunk", "vertex", "sh")]
    chunk, vertex, sh = by_name.get("chunk"), by_name.get("vertex"), by_name.get("sh")
    if unknown or chunk is None or vertex is None:
        raise UserError(f"{path}: not a compressed PLY (elements {', '.join(e.name for e in elements)}; expected "
                        "chunk, vertex and optionally sh)")
    chunk_props = dict(chunk.properties)
    wanted = CHUNK_BOUNDS + (CHUNK_COLORS if len(chunk_props) == 18 else ())
    if len(chunk_props) not in (12, 18) or any(chunk_props.get(name) != "f4" for name in wanted):
        raise UserError(f"{path}: compressed PLY chunk properties {', '.join(chunk_props)} are not the 12 or 18 "
                        "float bounds (min_x ... max_scale_z [, min_r ... max_b]) this format has")
    vertex_props = dict(vertex.properties)
    if set(vertex_props) != set(PACKED) or any(kind != "u4" for kind in vertex_props.values()):
        raise UserError(f"{path}: compressed PLY vertex properties {', '.join(vertex_props)} are not the uint32 "
                        f"{', '.join(PACKED)}")
    if chunk.count != math.ceil(vertex.count / CHUNK_SIZE):
        raise UserError(f"{path}: {chunk.count} chunks for {vertex.count} Gaussians (expected one per 256)")
    if sh is not None:
        names = [name for name, _ in sh.properties]
        if (len(names) not in (9, 24, 45) or names != [f"f_rest_{i}" for i in range(len(names))]
                or any(kind != "u1" for _, kind in sh.properties) or sh.count != vertex.count):
            raise UserError(f"{path}: compressed PLY sh element must hold uchar f_rest_0..8, 23 or 44 for each "
                            "Gaussian")
    return chunk, vertex, sh


def unpack_unorm(value: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return (value & top).astype(np.float64) / top


def lerp(lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
    return lo * (1 - t) + hi * t


def unpack_rotation(packed: np.ndarray) -> np.ndarray:
    """uint32 [N] (2, 10, 10, 10 bits) -> [N, 4] rot_0..rot_3, the largest rebuilt from the other three."""
    norm = 1.0 / (math.sqrt(2) * 0.5)
    small = np.stack([(unpack_unorm(packed >> s, 10) - 0.5) * norm for s in (20, 10, 0)], axis=1)  # [N, 3]
    largest = np.sqrt(np.maximum(0.0, 1.0 - (small * small).sum(1)))
    which = (packed >> 30).astype(np.int64)
    out = np.empty((len(packed), 4))
    for index in range(4):
        others = [small[:, j] for j in range(3)]
        others.insert(index, largest)
        rows = which == index
        out[rows] = np.stack(others, axis=1)[rows]
    return out


def decode(chunks: np.ndarray, vertices: np.ndarray, sh: np.ndarray | None) -> dict[str, np.ndarray]:
    """INRIA columns (float32 [N]) from the structured chunk [C], vertex [N] and optional sh [N] records."""
    n = len(vertices)
    c = np.arange(n) // CHUNK_SIZE
    bound = {name: chunks[name].astype(np.float64)[c] for name in chunks.dtype.names}
    columns: dict[str, np.ndarray] = {}
    position, scale, color = (vertices[name].astype(np.uint32) for name in ("packed_position", "packed_scale",
                                                                               "packed_color"))
    for axis, shift, bits in (("x", 21, 11), ("y", 11, 10), ("z", 0, 11)):
        columns[axis] = lerp(bound[f"min_{axis}"], bound[f"max_{axis}"], unpack_unorm(position >> shift, bits))
    for i, (axis, shift, bits) in enumerate((("x", 21, 11), ("y", 11, 10), ("z", 0, 11))):
        columns[f"scale_{i}"] = lerp(bound[f"min_scale_{axis}"], bound[f"max_scale_{axis}"],
                                     unpack_unorm(scale >> shift, bits))
    rotation = unpack_rotation(vertices["packed_rotation"].astype(np.uint32))
    columns |= {f"rot_{i}": rotation[:, i] for i in range(4)}
    for i, (channel, shift) in enumerate((("r", 24), ("g", 16), ("b", 8))):
        value = unpack_unorm(color >> shift, 8)
        if "min_r" in bound:
            value = lerp(bound[f"min_{channel}"], bound[f"max_{channel}"], value)
        columns[f"f_dc_{i}"] = (value - 0.5) / SH_C0
    columns["opacity"] = opacity_logit(unpack_unorm(color, 8))
    if sh is not None:
        for name in sh.dtype.names:
            raw = sh[name].astype(np.float64)
            unit = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256))
            columns[name] = (unit - 0.5) * 8
    return {name: value.astype(np.float32) for name, value in columns.items()}


# ------------------------------------------------------------------------------------------------ writing

def write_compressed_ply(path: str | os.PathLike, source: SplatPly, sh_dc: torch.Tensor, sh_rest: torch.Tensor,
                         keep: np.ndarray | None = None) -> np.ndarray:
    """Write `source` with new colours (sh_dc [N, 3], sh_rest [N, K - 1, 3]) as a compressed PLY, atomically, as
    splat-transform's writer packs it. A compressed source (without `keep`) keeps its own chunks and its packed
    position, rotation, scale and opacity words, so the geometry decodes bit for bit as before; any other source
    is sorted in Morton order and packed afresh. Returns the source index of each written Gaussian [M]."""
    index = np.arange(source.count) if keep is None else np.flatnonzero(keep)
    reuse = source.packed is not None and keep is None
    if not reuse:
        index = index[morton_order(source.columns(["x", "y", "z"])[index])]
    n = len(index)
    starts = np.arange(0, n, CHUNK_SIZE)
    rgb = sh_dc.detach().cpu().double().numpy()[index] * SH_C0 + 0.5
    color_lo, color_hi = np.minimum.reduceat(rgb, starts), np.maximum.reduceat(rgb, starts)
    chunk_of = np.arange(n) // CHUNK_SIZE
    color = pack_fields([normalize(rgb[:, i], color_lo[chunk_of, i], color_hi[chunk_of, i]) for i in range(3)],
                        (8, 8, 8), (24, 16, 8))
    chunk_dtype = np.dtype([(name, "<f4") for name in CHUNK_BOUNDS + CHUNK_COLORS])
    chunks = np.zeros(len(starts), chunk_dtype)
    vertices = np.zeros(n, np.dtype([(name, "<u4") for name in PACKED]))
    if reuse:
        for name in CHUNK_BOUNDS:
            chunks[name] = source.packed["chunk"][name]
        for name in PACKED[:3]:
            vertices[name] = source.packed["vertex"][name]
        alpha = source.packed["vertex"]["packed_color"].astype(np.uint32) & 255
    else:
        pack_geometry(source, index, starts, chunks, vertices)
        alpha = pack_unorm(1 / (1 + np.exp(-source.columns(["opacity"])[index, 0].astype(np.float64))), 8)
    for i, channel in enumerate("rgb"):
        chunks[f"min_{channel}"], chunks[f"max_{channel}"] = color_lo[:, i], color_hi[:, i]
    vertices["packed_color"] = color | alpha
    rest = rest_to_columns(sh_rest)[index] if source.num_rest else np.zeros((n, 0), np.float32)
    sh = np.clip(np.trunc((rest.astype(np.float64) / 8 + 0.5) * 256), 0, 255).astype(np.uint8)
    header = ["ply", "format binary_little_endian 1.0", "comment Generated by nst3d", f"element chunk {len(starts)}",
              *[f"property float {name}" for name in chunk_dtype.names], f"element vertex {n}",
              *[f"property uint {name}" for name in PACKED]]
    if sh.shape[1]:
        header += [f"element sh {n}", *[f"property uchar f_rest_{i}" for i in range(sh.shape[1])]]
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(("\n".join(header) + "\nend_header\n").encode("ascii"))
        for block in (chunks, vertices, sh):
            out.write(np.ascontiguousarray(block).tobytes())
    return index


def pack_geometry(source: SplatPly, index: np.ndarray, starts: np.ndarray, chunks: np.ndarray,
                  vertices: np.ndarray) -> None:
    """Fill the chunks' position and scale bounds and the packed position, rotation and scale words."""
    chunk_of = np.arange(len(index)) // CHUNK_SIZE
    for names, prefix, key in ((("x", "y", "z"), "", "packed_position"),
                               (("scale_0", "scale_1", "scale_2"), "scale_", "packed_scale")):
        values = source.columns(list(names))[index].astype(np.float64)
        lo, hi = np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)
        if prefix:  # scales can be at infinity
            lo, hi = np.clip(lo, -20, 20), np.clip(hi, -20, 20)
        for i, axis in enumerate("xyz"):
            chunks[f"min_{prefix}{axis}"], chunks[f"max_{prefix}{axis}"] = lo[:, i], hi[:, i]
        vertices[key] = pack_fields([normalize(values[:, i], lo[chunk_of, i], hi[chunk_of, i]) for i in range(3)],
                                    (11, 10, 11), (21, 11, 0))
    q = source.columns(["rot_0", "rot_1", "rot_2", "rot_3"])[index].astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True).clip(min=1e-30)
    largest = np.abs(q).argmax(1)
    q *= np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None]
    others = q[np.arange(4)[None] != largest[:, None]].reshape(len(q), 3)
    word = largest.astype(np.uint32)
    for i in range(3):
        word = (word << 10) | pack_unorm(others[:, i] * math.sqrt(2) * 0.5 + 0.5, 10)
    vertices["packed_rotation"] = word


def normalize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """x within [lo, hi] as [0, 1]; 0 where the range is under 1e-5."""
    t = np.where(hi - lo < 1e-5, 0.0, (x - lo) / np.where(hi - lo < 1e-5, 1.0, hi - lo))
    return np.clip(t, 0.0, 1.0)


def pack_unorm(value: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(value * top + 0.5), 0, top).astype(np.uint32)


def pack_fields(values: list[np.ndarray], bits: tuple[int, ...], shifts: tuple[int, ...]) -> np.ndarray:
    word = np.zeros(len(values[0]), np.uint32)
    for value, b, shift in zip(values, bits, shifts, strict=True):
        word |= pack_unorm(value, b) << np.uint32(shift)
    return word


def morton_order(points: np.ndarray) -> np.ndarray:
    """Indices [N] sorting points [N, 3] along a Z-order curve of 10 bits an axis, so a chunk of 256 consecutive
    Gaussians is a small box (what SuperSplat does before packing)."""
    lo, hi = points.min(0), points.max(0)
    cells = ((points - lo) / np.maximum(hi - lo, 1e-12) * 1023).clip(0, 1023).astype(np.uint64)
    code = np.zeros(len(points), np.uint64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + 2 - axis)
    return np.argsort(code, kind="stable")
