"""Which rasterizer renders a splat: gsplat's CUDA kernels, or nst3d's tiled PyTorch compositor (render.py, plain
torch, so it runs on a GPU too).

gsplat's PyPI wheel is pure Python: its kernels come from a `gsplat.csrc` extension when one was built at install
time, else gsplat.cuda._backend JIT-compiles them with nvcc at first import (minutes, once; the build is kept
under TORCH_EXTENSIONS_DIR), else it leaves `_C = None` and every rasterization fails with an AttributeError.
`kernel_status` tells those cases apart without importing that module (the import is what compiles);
`choose_engine` imports it at most once per process, announces a compile as a progress stage, and falls back to
the compositor with one warning when the kernels cannot load.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import shutil
import sys
from dataclasses import dataclass

import torch

from nst3d.events import EventSink, ignore

GSPLAT, TORCH = "gsplat", "torch"
EXTENSION = "gsplat_cuda"  # the name gsplat JIT-builds its kernels under
DEFAULT_CUDA_HOME = "/usr/local/cuda"  # where torch and gsplat >= 1.5 also look for nvcc
COMPILING = "compiling gsplat's CUDA kernels (first run only, a few minutes)"


@dataclass(frozen=True)
class KernelStatus:
    """state: "ready" (built, loads at once), "compile" (nvcc found, not built yet) or "unavailable";
    reason: why, for the warning when unavailable."""

    state: str
    reason: str = ""


def find_nvcc() -> str | None:
    """The nvcc gsplat would compile with: on PATH, or under $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    on_path = shutil.which("nvcc")
    if on_path:
        return on_path
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), DEFAULT_CUDA_HOME):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def kernel_status() -> KernelStatus:
    """Whether gsplat's CUDA kernels can load here, decided without importing gsplat.cuda._backend."""
    loaded = sys.modules.get("gsplat.cuda._backend")
    if loaded is not None:  # already imported (by us or by the caller): it either holds the kernels or not
        if getattr(loaded, "_C", None) is not None:
            return KernelStatus("ready")
        return KernelStatus("unavailable", "gsplat's CUDA extension did not load in this process")
    if importlib.util.find_spec("gsplat") is None:
        return KernelStatus("unavailable", "gsplat is not installed")
    try:
        prebuilt = importlib.util.find_spec("gsplat.csrc") is not None  # imports gsplat itself, not its kernels
    except ImportError as exc:
        return KernelStatus("unavailable", f"gsplat does not import: {exc}")
    if prebuilt:
        return KernelStatus("ready")  # a wheel or source install with prebuilt kernels
    if find_nvcc() is None:
        return KernelStatus("unavailable", "this gsplat has no prebuilt kernels and there is no CUDA toolkit (nvcc) "
                            "to compile them")
    try:
        from torch.utils.cpp_extension import _get_build_directory  # where gsplat's JIT build goes

        build = _get_build_directory(EXTENSION, verbose=False)
    except (ImportError, OSError):
        return KernelStatus("compile")
    built = any(os.path.exists(os.path.join(build, EXTENSION + ext)) for ext in (".so", ".lib", ".pyd"))
    return KernelStatus("ready" if built else "compile")


@functools.cache
def load_kernels() -> str | None:
    """Import gsplat's extension once per process (compiling it if need be). None when the kernels loaded, else
    why not, in one line. gsplat's own console output (a spinner, "No CUDA toolkit found") is kept off stdout,
    which carries the worker's JSON lines."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from gsplat.cuda._backend import _C
    except Exception as exc:  # a failed compile raises whatever the toolchain raised; all mean the same here
        text = str(exc).strip().splitlines()
        return f"{exc.__class__.__name__}: {text[0][:200] if text else ''}".rstrip(": ")
    return None if _C is not None else "gsplat's CUDA extension did not load"


def choose_engine(device: torch.device | str, on_event: EventSink = ignore) -> str:
    """GSPLAT on a CUDA device whose kernels load, else TORCH (the compositor: any device). On CUDA without
    kernels, a "warning" event says so; a first-time compile is shown as a progress stage."""
    if torch.device(device).type != "cuda":
        return TORCH
    status = kernel_status()
    if status.state == "unavailable":
        reason = status.reason
    else:
        first = status.state == "compile" and load_kernels.cache_info().currsize == 0
        if first:
            on_event({"event": "progress", "stage": COMPILING, "step": 0, "total": 1, "unit": "build"})
        reason = load_kernels()
        if first:
            on_event({"event": "progress", "stage": COMPILING, "step": 1, "total": 1, "unit": "build"})
            on_event({"event": "stage_done", "stage": COMPILING})
    if reason is None:
        return GSPLAT
    on_event({"event": "warning", "text": f"gsplat's CUDA kernels cannot load ({reason}); rendering with nst3d's "
              "tiled PyTorch compositor on the GPU instead (slower)"})
    return TORCH
