"""Niantic .spz Gaussian splats (nianticlabs/spz, load-spz.cc), decoded to the in-memory INRIA layout.

Versions 2 and 3: a gzip stream holding a 16-byte header (magic "NGSP" = 0x5053474e, version, numPoints, shDegree,
fractionalBits, flags, reserved) and then, attribute by attribute: positions (3 x 24-bit signed fixed point with
`fractionalBits`), alphas (uint8, sigmoid applied), colours (uint8: SH DC * 0.15 * 255 + 127.5), scales (uint8:
(log scale + 10) * 16), rotations (v2: x, y, z as uint8 / 127.5 - 1, w >= 0 derived; v3: "smallest three", 2 bits
for the largest component's index and 3 x (sign + 9 bits) scaled by 1/sqrt 2), and SH (uint8, (v - 128) / 128,
coefficient-major with the colour channel inner). Version 4 (what PlayCanvas ships): a plain 32-byte header (the
same fields, then numStreams at byte 15, tocByteOffset at 16), optional extension records, a table of (compressed,
uncompressed) uint64 sizes, and one zstd stream per attribute in the same order.

Quaternions are stored x, y, z, w; the INRIA PLY stores w first. spz keeps its Gaussians in a right-up-back frame
(RUB, three.js), a PLY in right-down-front (RDF): like the reference loader asked for RDF, positions, rotations
and SH are flipped on load (y and z negated), so a decoded .spz lines up with the same scene's PLY.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from nst3d.backends.splat.ply import SplatPly, opacity_logit, splat_from_columns
from nst3d.errors import UserError

MAGIC = 0x5053474E
COLOR_SCALE = 0.15
SH_DIMS = {0: 0, 1: 3, 2: 8, 3: 15}  # SH coefficients per channel beyond DC
# load-spz's flipSh for RUB -> RDF (x kept, y and z negated), per SH coefficient of degrees 1..3.
RUB_TO_RDF_SH = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], np.float32)
FLAG_EXTENSIONS = 0x2
SH_QUANTIZATION_EXTENSION = 0xADBE0001  # rescales the SH bytes by a min/max this reader does not apply
MAX_POINTS = 100_000_000


def read_spz(path: str | Path) -> SplatPly:
    """Decode a .spz file (versions 2, 3, 4) into an in-memory INRIA-layout SplatPly in the PLY (RDF) frame."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"{path}: the .spz gzip stream is corrupt or truncated ({exc}); re-export it") from None
    if len(data) < 16 or struct.unpack_from("<I", data)[0] != MAGIC:
        raise UserError(f"{path}: not a Niantic .spz file (no NGSP magic at the start); give a .spz, a compressed "
                        "or an INRIA 3DGS .ply")
    version, count, degree, fractional_bits, flags = struct.unpack_from("<IIBBB", data, 4)
    if version not in (2, 3, 4):
        raise UserError(f"{path}: .spz version {version} is not supported (versions 2, 3 and 4 are); re-export it "
                        "with a current spz tool")
    if degree not in SH_DIMS:
        raise UserError(f"{path}: .spz with SH degree {degree}; an INRIA PLY holds degrees 0 to 3, so convert it "
                        "with degree 3 or less")
    if count > MAX_POINTS:
        raise UserError(f"{path}: the .spz header claims {count} Gaussians (over {MAX_POINTS}); the file is corrupt")
    sizes = attribute_sizes(count, degree, version)
    if version == 4:
        streams = v4_streams(path, data, sizes, degree)
    else:
        if flags & FLAG_EXTENSIONS:
            raise UserError(f"{path}: .spz v{version} with extensions is not supported; re-save it as version 4 "
                            "or without extensions")
        streams = split_streams(path, data, 16, sizes)
    columns = decode(streams, count, degree, fractional_bits, version)
    return splat_from_columns(path, columns, f"Niantic .spz v{version}")


def attribute_sizes(count: int, degree: int, version: int) -> list[int]:
    """Bytes of positions, alphas, colours, scales, rotations and SH, in file order."""
    sizes = [count * 9, count, count * 3, count * 3, count * (3 if version == 2 else 4)]
    return sizes + [count * SH_DIMS[degree] * 3] if degree else sizes


def split_streams(path: Path, data: bytes, offset: int, sizes: list[int]) -> list[np.ndarray]:
    """The attribute arrays of a v2/v3 payload that starts at `offset`."""
    need = offset + sum(sizes)
    if len(data) < need:
        raise UserError(f"{path}: the .spz data is truncated ({len(data)} bytes after unzipping, the header needs "
                        f"{need}); re-export it")
    out = []
    for size in sizes:
        out.append(np.frombuffer(data, np.uint8, size, offset))
        offset += size
    return out


def v4_streams(path: Path, data: bytes, sizes: list[int], degree: int) -> list[np.ndarray]:
    """The attribute arrays of a v4 file: the table of contents, then one zstd frame per attribute."""
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path}: .spz version 4 is zstd-compressed and needs the zstandard package; "
                        "pip install zstandard (or nst3d[splat])") from None

    if len(data) < 32:
        raise UserError(f"{path}: the .spz v4 header is truncated ({len(data)} bytes of 32)")
    flags, num_streams, toc = data[14], data[15], struct.unpack_from("<I", data, 16)[0]
    if num_streams != len(sizes) or toc < 32:
        raise UserError(f"{path}: .spz v4 header lists {num_streams} streams at byte {toc}; expected {len(sizes)} "
                        "at byte 32 or later (corrupt file)")
    if flags & FLAG_EXTENSIONS and degree and SH_QUANTIZATION_EXTENSION in extension_types(data[32:toc]):
        raise UserError(f"{path}: .spz uses the SH quantization extension (0xADBE0001), which is not supported; "
                        "re-save it without custom SH bits")
    if len(data) < toc + 16 * num_streams:
        raise UserError(f"{path}: the .spz v4 table of streams is truncated; re-export the file")
    offset, out = toc + 16 * num_streams, []
    decompressor = zstandard.ZstdDecompressor()
    for index, expected in enumerate(sizes):
        packed, unpacked = struct.unpack_from("<QQ", data, toc + 16 * index)
        if unpacked != expected:
            raise UserError(f"{path}: .spz v4 stream {index} unpacks to {unpacked} bytes, but the header's Gaussians "
                            f"need {expected} (corrupt file)")
        if offset + packed > len(data):
            raise UserError(f"{path}: the .spz file is truncated (stream {index} ends past its end); re-export it")
        try:
            raw = decompressor.decompress(data[offset:offset + packed], max_output_size=expected)
        except zstandard.ZstdError as exc:
            raise UserError(f"{path}: .spz v4 stream {index} does not decompress ({exc}); re-export the file") from None
        if len(raw) != expected:
            raise UserError(f"{path}: .spz v4 stream {index} holds {len(raw)} bytes, not {expected}")
        out.append(np.frombuffer(raw, np.uint8))
        offset += packed
    return out


def extension_types(block: bytes) -> list[int]:
    """Type ids of the [u32 type][u32 byteLength][payload] extension records in a v4 header zone."""
    types, offset = [], 0
    while offset + 8 <= len(block):
        kind, length = struct.unpack_from("<II", block, offset)
        types.append(kind)
        offset += 8 + length
    return types


def decode(streams: list[np.ndarray], count: int, degree: int, fractional_bits: int, version: int
           ) -> dict[str, np.ndarray]:
    """INRIA columns (float32 [N] each) from the raw attribute bytes, converted from RUB to the PLY's RDF."""
    positions, alphas, colors, scales, rotations = streams[:5]
    p = positions.reshape(count, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    xyz = fixed.astype(np.float32) * np.float32(1.0 / (1 << fractional_bits))
    quats = unpack_smallest_three(rotations) if version >= 3 else unpack_first_three(rotations)  # [N, 4] xyzw
    flip = np.array([1.0, -1.0, -1.0], np.float32)  # RUB -> RDF for positions; flipQ is the same for x, y, z
    columns = {name: xyz[:, i] * flip[i] for i, name in enumerate("xyz")}
    columns |= {f"rot_{i + 1}": quats[:, i] * flip[i] for i in range(3)}
    columns["rot_0"] = quats[:, 3]
    log_scales = scales.reshape(count, 3).astype(np.float32) / np.float32(16.0) - np.float32(10.0)
    columns |= {f"scale_{i}": log_scales[:, i] for i in range(3)}
    columns["opacity"] = opacity_logit(alphas.astype(np.float32) / np.float32(255.0))
    dc = (colors.reshape(count, 3).astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(COLOR_SCALE)
    columns |= {f"f_dc_{c}": dc[:, c] for c in range(3)}
    dim = SH_DIMS[degree]
    if dim:
        sh = (streams[5].reshape(count, dim, 3).astype(np.float32) - 128.0) / 128.0 * RUB_TO_RDF_SH[:dim, None]
        columns |= {f"f_rest_{c * dim + k}": sh[:, k, c] for c in range(3) for k in range(dim)}
    return columns


def unpack_first_three(packed: np.ndarray) -> np.ndarray:
    """v2 rotations: [N * 3] bytes of x, y, z -> [N, 4] unit quaternions x, y, z, w (w >= 0)."""
    xyz = packed.reshape(-1, 3).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(-1)))
    return np.concatenate([xyz, w[:, None]], axis=1).astype(np.float32)


def unpack_smallest_three(packed: np.ndarray) -> np.ndarray:
    """v3/v4 rotations: [N * 4] bytes (uint32 LE: 2-bit index of the largest component, then sign + 9-bit
    magnitude for each other component, last component in the lowest bits) -> [N, 4] quaternions x, y, z, w."""
    comp = packed.view("<u4").astype(np.int64)
    largest = comp >> 30
    quats = np.zeros((len(comp), 4), np.float32)
    shift = np.zeros(len(comp), np.int64)
    for i in (3, 2, 1, 0):
        skip = largest == i
        bits = comp >> shift
        value = np.float32(np.sqrt(0.5)) * (bits & 511).astype(np.float32) / np.float32(511)
        quats[:, i] = np.where(skip, 0.0, np.where(bits & 512, -value, value))
        shift = np.where(skip, shift, shift + 10)
    rest = (quats * quats).sum(-1)
    quats[np.arange(len(comp)), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    return quats
