"""INRIA 3D Gaussian Splatting PLY files: read (memory-mapped), write (streamed), and make from tensors.

Layout (what 3DGS, gsplat, nerfstudio `ns-export gaussian-splat`, Polycam, Luma, KIRI write): one `vertex`
element, binary little endian, with x, y, z, optional nx, ny, nz, f_dc_0..2, f_rest_0..(3 (K-1) - 1) for
SH degree 0..3 (K = (degree + 1)^2 coefficients per channel, stored channel-major: all of R, then G, then B),
opacity (logit), scale_0..2 (log), rot_0..3 (quaternion w, x, y, z, not necessarily normalised).

Reading never loads the whole file: the vertex block is a numpy memmap of a structured dtype, so a scene of
millions of Gaussians costs only the columns one asks for. Writing streams the source file in chunks and
replaces only the colour columns, so every other property (geometry, opacity, normals, extra properties),
the header (comments included), the Gaussian count and any elements after the vertex block are kept
byte for byte.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nst3d.errors import UserError
from nst3d.files import atomic_path

SH_C0 = 0.28209479177387814  # the degree-0 SH basis constant: rgb = SH_C0 * f_dc + 0.5
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
GAUSSIAN_PROPERTIES = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                       "rot_0", "rot_1", "rot_2", "rot_3")
MAX_HEADER_BYTES = 1 << 20
CHUNK = 1 << 18  # Gaussians per chunk when streaming a file out (~16 MB at degree 3)


@dataclass
class PlyElement:
    """One `element` of a PLY header: its name, count, and (name, numpy dtype or None for lists)."""

    name: str
    count: int
    properties: list[tuple[str, str | None]]

    @property
    def dtype(self) -> np.dtype | None:
        """Structured little-endian dtype of one record; None if the element has list properties."""
        if any(kind is None for _, kind in self.properties):
            return None
        return np.dtype([(name, "<" + kind) for name, kind in self.properties])


@dataclass
class SplatPly:
    """An INRIA Gaussian-splat PLY opened for reading.

    vertices: structured array [N] (a read-only memmap of the file) with every property of the file.
    header: the header bytes, kept verbatim for writing; data_offset: where the vertex block starts.
    tail: (offset, length) of the bytes after the vertex block (other elements), copied as they are.
    """

    path: Path
    header: bytes
    vertices: np.ndarray
    data_offset: int
    tail: tuple[int, int]
    sh_degree: int
    has_normals: bool
    source_format: str = "INRIA PLY"  # what the file was: "INRIA PLY", "compressed PLY" or "Niantic .spz vN"
    packed: dict[str, np.ndarray] | None = None  # a compressed PLY's own chunk and vertex records, kept for writing

    @property
    def count(self) -> int:
        return len(self.vertices)

    @property
    def property_names(self) -> list[str]:
        return list(self.vertices.dtype.names)

    @property
    def num_rest(self) -> int:
        """Higher-order SH coefficients per channel, (degree + 1)^2 - 1."""
        return (self.sh_degree + 1) ** 2 - 1

    def columns(self, names: list[str], start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 [n, len(names)] of the given properties for Gaussians start..stop."""
        block = self.vertices[start:stop]
        return np.stack([np.asarray(block[name], dtype=np.float32) for name in names], axis=-1)

    def means(self) -> torch.Tensor:
        """[N, 3] positions."""
        return torch.from_numpy(self.columns(["x", "y", "z"]))

    def log_scales(self) -> torch.Tensor:
        """[N, 3] log standard deviations along the Gaussian's axes."""
        return torch.from_numpy(self.columns(["scale_0", "scale_1", "scale_2"]))

    def quats(self) -> torch.Tensor:
        """[N, 4] rotations as stored (w, x, y, z; gsplat normalises them)."""
        return torch.from_numpy(self.columns(["rot_0", "rot_1", "rot_2", "rot_3"]))

    def opacity_logits(self) -> torch.Tensor:
        """[N] opacities before the sigmoid."""
        return torch.from_numpy(self.columns(["opacity"])[:, 0])

    def sh_dc(self) -> torch.Tensor:
        """[N, 3] degree-0 SH coefficients."""
        return torch.from_numpy(self.columns(["f_dc_0", "f_dc_1", "f_dc_2"]))

    def sh_rest(self) -> torch.Tensor:
        """[N, K - 1, 3] higher-order SH coefficients (K = (degree + 1)^2), gsplat's layout."""
        k = self.num_rest
        flat = self.columns([f"f_rest_{i}" for i in range(3 * k)]) if k else np.zeros((self.count, 0), np.float32)
        return torch.from_numpy(flat.reshape(self.count, 3, k).transpose(0, 2, 1).copy())


def parse_header(path: Path, head: bytes) -> tuple[str, list[PlyElement], list[str], int]:
    """(format, elements, comments, header length in bytes) of a PLY file that starts with `head`."""
    end = head.find(b"end_header")
    if end < 0:
        raise UserError(f"{path}: PLY header has no end_header (truncated or not a PLY file)")
    stop = head.index(b"\n", end) + 1
    lines = head[:stop].decode("ascii", errors="replace").splitlines()
    fmt, elements, comments = "", [], []
    for line in lines[1:]:
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else ""
        elif words[0] in ("comment", "obj_info"):
            comments.append(line)
        elif words[0] == "element":
            try:
                elements.append(PlyElement(words[1], int(words[2]), []))
            except (IndexError, ValueError):
                raise UserError(f"{path}: malformed PLY header line '{line}'") from None
        elif words[0] == "property" and elements:
            if len(words) >= 2 and words[1] == "list":
                elements[-1].properties.append((words[-1], None))
            elif len(words) == 3 and words[1] in PLY_TYPES:
                elements[-1].properties.append((words[2], PLY_TYPES[words[1]]))
            else:
                raise UserError(f"{path}: unsupported PLY property line '{line}'")
    return fmt, elements, comments, stop


def sniff_format(path: Path, head: bytes) -> str | None:
    """A name for a known Gaussian-splat format that is not an INRIA PLY, else None."""
    suffix = path.suffix.lower()
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                magic = f.read(4)
        except OSError:
            magic = b""
        return "Niantic .spz (gzip-compressed)" if magic == b"NGSP" or suffix == ".spz" else "gzip-compressed data"
    if suffix == ".spz":
        return "Niantic .spz"
    if suffix == ".splat":
        return "antimatter15 .splat (32 bytes per Gaussian, no header)"
    if suffix in (".ksplat", ".sog"):
        return f"{suffix} (compressed splat)"
    if not head.startswith(b"ply"):
        return "not a PLY file"
    return None


def read_splat(path: str | os.PathLike) -> SplatPly:
    """Open an INRIA Gaussian-splat PLY (memory-mapped). Other splat formats raise a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"splat file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    other = sniff_format(path, head)
    if other:
        problem = other if other.startswith("not ") else f"{other} is not supported"
        raise UserError(f"{path}: {problem}; convert it to an INRIA 3DGS .ply (binary little "
                        "endian, f_dc_*/opacity/scale_*/rot_* per vertex), e.g. with SuperSplat's export")
    fmt, elements, _, header_len = parse_header(path, head)
    names = {e.name for e in elements}
    vertex = next((e for e in elements if e.name == "vertex"), None)
    vertex_props = [] if vertex is None else [name for name, _ in vertex.properties]
    if "chunk" in names or any(name.startswith("packed_") for name in vertex_props):
        raise UserError(f"{path}: compressed PlayCanvas/SuperSplat PLY (chunk + packed_* properties) is not "
                        "supported; decompress it first (SuperSplat: export as uncompressed .ply)")
    missing = [p for p in GAUSSIAN_PROPERTIES if p not in vertex_props]
    if vertex is None or missing:
        what = "a mesh" if "face" in names else "a point cloud"
        raise UserError(f"{path}: {what} PLY without Gaussian-splat properties (missing "
                        f"{', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}); give a 3DGS .ply")
    if fmt != "binary_little_endian":
        raise UserError(f"{path}: {fmt or 'unknown'} PLY is not supported for Gaussian splats; re-save it as "
                        "binary_little_endian")
    offset = header_len
    for element in elements:
        if element is vertex:
            break
        if element.dtype is None:
            raise UserError(f"{path}: element '{element.name}' with list properties before the Gaussians; "
                            "re-save the PLY with the vertex element first")
        offset += element.count * element.dtype.itemsize
    dtype = vertex.dtype
    if dtype is None:
        raise UserError(f"{path}: the vertex element has list properties, which a Gaussian splat never has")
    size = path.stat().st_size
    end = offset + vertex.count * dtype.itemsize
    if end > size:
        raise UserError(f"{path}: file is truncated ({size} bytes, the header promises {end}); re-export it")
    rest = sorted(int(name[7:]) for name in vertex_props if name.startswith("f_rest_") and name[7:].isdigit())
    degree = sh_degree_for(len(rest), path)
    if rest != list(range(len(rest))):
        raise UserError(f"{path}: f_rest_* properties are not numbered 0..{len(rest) - 1}")
    vertices = (np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(vertex.count,))
                if vertex.count else np.zeros(0, dtype))
    return SplatPly(path, head[:header_len], vertices, offset, (end, size - end), degree,
                    all(n in vertex_props for n in ("nx", "ny", "nz")))


def opacity_logit(alpha: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """float32 logits of opacities in [0, 1], clipped to [eps, 1 - eps] so 0 and 255 bytes stay finite."""
    p = np.clip(alpha.astype(np.float64), eps, 1 - eps)
    return np.log(p / (1 - p)).astype(np.float32)


def splat_from_columns(path: Path, columns: dict[str, np.ndarray], source_format: str) -> SplatPly:
    """An in-memory SplatPly in the INRIA layout from decoded columns (what the compressed readers return).

    columns: x, y, z, f_dc_0..2, f_rest_0..(3 (K - 1) - 1) (channel-major), opacity (logit), scale_0..2 (log),
    rot_0..3 (w, x, y, z), each float32 [N]. Written out by write_splat as a plain INRIA PLY.
    """
    rest = sorted((name for name in columns if name.startswith("f_rest_")), key=lambda name: int(name[7:]))
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    count = len(columns["x"])
    vertices = np.empty(count, np.dtype([(name, "<f4") for name in names]))
    for name in names:
        vertices[name] = columns[name]
    header = (f"ply\nformat binary_little_endian 1.0\ncomment decoded by nst3d from {source_format}\n"
              f"element vertex {count}\n" + "".join(f"property float {name}\n" for name in names) + "end_header\n")
    return SplatPly(Path(path), header.encode("ascii"), vertices, 0, (0, 0), sh_degree_for(len(rest), path), False,
                    source_format)


def sh_degree_for(num_rest: int, path: Path | str = "") -> int:
    """SH degree from the number of f_rest_* properties (0, 9, 24 or 45)."""
    for degree in range(4):
        if num_rest == 3 * ((degree + 1) ** 2 - 1):
            return degree
    raise UserError(f"{path}: {num_rest} f_rest_* properties do not match SH degree 0..3 (0, 9, 24 or 45)")


def rest_to_columns(sh_rest: torch.Tensor) -> np.ndarray:
    """gsplat layout [n, K - 1, 3] -> the PLY's channel-major f_rest columns [n, 3 (K - 1)] float32."""
    return sh_rest.detach().cpu().float().transpose(1, 2).reshape(len(sh_rest), -1).numpy()


def write_splat(path: str | os.PathLike, source: SplatPly, sh_dc: torch.Tensor,
                sh_rest: torch.Tensor | None = None, keep: np.ndarray | None = None) -> None:
    """Write `source` to `path` with new colours, atomically, streaming chunk by chunk.

    sh_dc: [N, 3]; sh_rest: [N, K - 1, 3] or None (keep the file's). Every other property is copied
    bit for bit. keep: optional bool mask [N] of the Gaussians to write (the clean-up option); the
    header's vertex count is updated then.
    """
    n = source.count
    if sh_dc.shape != (n, 3):
        raise ValueError(f"sh_dc has shape {tuple(sh_dc.shape)}, expected ({n}, 3)")
    if sh_rest is not None and sh_rest.shape != (n, source.num_rest, 3):
        raise ValueError(f"sh_rest has shape {tuple(sh_rest.shape)}, expected ({n}, {source.num_rest}, 3)")
    header = source.header
    if keep is not None:
        header = _with_vertex_count(header, int(keep.sum()))
    dc = sh_dc.detach().cpu()
    rest = None if sh_rest is None else sh_rest.detach().cpu()
    rest_names = [f"f_rest_{i}" for i in range(3 * source.num_rest)]
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(header)
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            block = np.array(source.vertices[start:stop])  # a writable copy of this chunk
            colours = dc[start:stop].numpy()
            for c in range(3):
                block[f"f_dc_{c}"] = colours[:, c]
            if rest is not None and rest_names:
                columns = rest_to_columns(rest[start:stop])
                for i, name in enumerate(rest_names):
                    block[name] = columns[:, i]
            if keep is not None:
                block = block[keep[start:stop]]
            out.write(block.tobytes())
        offset, length = source.tail
        if length:
            with open(source.path, "rb") as src:
                src.seek(offset)
                out.write(src.read(length))


def _with_vertex_count(header: bytes, count: int) -> bytes:
    lines = header.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"element vertex "):
            lines[i] = b"element vertex %d" % count
            break
    return b"\n".join(lines)


def save_gaussians(path: str | os.PathLike, means: torch.Tensor, log_scales: torch.Tensor, quats: torch.Tensor,
                   opacity_logits: torch.Tensor, sh_dc: torch.Tensor, sh_rest: torch.Tensor | None = None,
                   normals: bool = False) -> None:
    """Write Gaussians as a new INRIA PLY (what 3DGS's save_ply writes).

    means [N, 3], log_scales [N, 3], quats [N, 4] (w, x, y, z), opacity_logits [N], sh_dc [N, 3],
    sh_rest [N, K - 1, 3] or None (degree 0); normals: add zero nx, ny, nz as 3DGS does.
    """
    n = len(means)
    rest = np.zeros((n, 0), np.float32) if sh_rest is None else rest_to_columns(sh_rest)
    columns = [("x", means[:, 0]), ("y", means[:, 1]), ("z", means[:, 2])]
    if normals:
        columns += [(name, torch.zeros(n)) for name in ("nx", "ny", "nz")]
    columns += [(f"f_dc_{c}", sh_dc[:, c]) for c in range(3)]
    columns += [(f"f_rest_{i}", torch.from_numpy(rest[:, i])) for i in range(rest.shape[1])]
    columns += [("opacity", opacity_logits.reshape(n))]
    columns += [(f"scale_{i}", log_scales[:, i]) for i in range(3)]
    columns += [(f"rot_{i}", quats[:, i]) for i in range(4)]
    dtype = np.dtype([(name, "<f4") for name, _ in columns])
    data = np.empty(n, dtype)
    for name, value in columns:
        data[name] = value.detach().cpu().float().numpy()
    header = "ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
    header += "".join(f"property float {name}\n" for name, _ in columns) + "end_header\n"
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(header.encode("ascii"))
        out.write(data.tobytes())
