"""Which Gaussian-splat file is this: the one rule (`splat_format`) every command uses to tell a splat from a mesh,
and `read_any_splat`, which opens any format nst3d reads as the same in-memory INRIA splat (ply.SplatPly).

Standard library only at import time, so the batch runner and `nst3d render` can ask cheaply.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

HEADER_BYTES = 1 << 16
SPLAT_SUFFIXES = (".ply", ".spz")


def splat_format(path: str | os.PathLike) -> str | None:
    """"ply" (INRIA 3DGS), "compressed-ply" (SuperSplat/PlayCanvas), "spz" (Niantic), or None when the file is
    none of these (a mesh or point-cloud PLY, another format). Decided by content; .spz also by its suffix."""
    path = Path(path)
    if path.suffix.lower() == ".spz":
        return "spz"
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError:  # missing or unreadable: the reader says which
        return None
    if head[:4] == b"NGSP":
        return "spz"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                return "spz" if f.read(4) == b"NGSP" else None
        except (OSError, EOFError):
            return None
    if not head.startswith(b"ply"):
        return None
    header = head.split(b"end_header")[0]
    if b"element chunk" in header and b"packed_position" in header:
        return "compressed-ply"
    if all(name in header for name in (b"f_dc_0", b"opacity", b"scale_0")):
        return "ply"
    return None


def read_any_splat(path: str | os.PathLike):
    """Open an INRIA PLY (memory-mapped), or decode a compressed PLY or .spz, as a ply.SplatPly. Anything else
    gets read_splat's one-line error saying what the file is and what to give instead."""
    from nst3d.backends.splat.ply import read_splat
    from nst3d.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"splat file not found: {path}")
    kind = splat_format(path)
    if kind == "spz":
        from nst3d.backends.splat.spz import read_spz

        return read_spz(path)
    if kind == "compressed-ply":
        from nst3d.backends.splat.compressed import read_compressed_ply

        return read_compressed_ply(path)
    return read_splat(path)
