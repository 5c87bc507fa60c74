"""Let `import torchvision` work when its compiled ops (`torchvision/_C.so`) cannot load.

torchvision 0.28's only wheel is a CUDA build; with a CPU-only torch its `_C.so` fails to load and
`import torchvision` then raises `RuntimeError: operator torchvision::nms does not exist`, because
`torchvision/_meta_registrations.py` registers fake kernels for `nms`/`qnms` unconditionally. nerfstudio
imports torchvision everywhere, so without this shim no nerfstudio command starts on such a machine.

`apply()` first tries to load the real `_C.so` itself; only if that fails does it define the two missing
operator schemas (no kernels). Models and transforms then work; `torchvision.ops` and `torchvision.io`
do not (they raise torchvision's own "Couldn't load custom C++ ops" error). On a machine where `_C.so`
loads, the shim does nothing.

Activation, in this order of preference:
- `python -m nst3d.integrations.nerfstudio.tv_shim install` writes `nst3d_torchvision_shim.pth` into the
  environment's site-packages: a one-line hook that applies the shim the first time anything imports
  torchvision (ns-train, ns-viewer, ...). It costs nothing for processes that never import torchvision.
- nst3d's own NeRF code calls `apply()` before importing nerfstudio.

This module imports only the standard library at import time (it runs at every interpreter start-up).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "nst3d_torchvision_shim.pth"
PTH_LINE = ("import sys; exec('try:\\n import nst3d.integrations.nerfstudio.tv_shim as m\\n"
            " m.install_hook()\\nexcept ImportError:\\n pass')\n")
SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_library = None  # the torch.library.Library holding our definitions; must stay alive
_applied = False


def apply() -> bool:
    """Make `import torchvision` work. Returns True if the shim had to define the ops (the real `_C.so`
    did not load), False if torchvision's own ops are there or torchvision is not installed."""
    global _library, _applied
    if _applied:
        return _library is not None
    _applied = True
    if "torchvision" in sys.modules:
        return False  # too late to help, or already imported fine
    import torch

    if _has_op(torch, "nms"):
        return False
    so_path = _extension_path()
    if so_path is None:
        return False
    try:
        torch.ops.load_library(str(so_path))
        return False
    except (OSError, ImportError, RuntimeError):
        pass
    if _has_op(torch, "nms"):
        return False
    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    for schema in SCHEMAS.values():
        _library.define(schema)
    return True


def _has_op(torch_module, name: str) -> bool:
    try:
        getattr(torch_module.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _extension_path() -> Path | None:
    """Path of torchvision's compiled `_C` library, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd")):
            return candidate
    return None


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Applies the shim the first time `torchvision` is imported, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall_hook()
            try:
                apply()
            except Exception as exc:  # never break an import over the shim itself
                print(f"nst3d torchvision shim: not applied ({exc.__class__.__name__}: {exc})",
                      file=sys.stderr)
        return None


def install_hook() -> None:
    """Apply the shim lazily, on the first `import torchvision` of this process."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())


def uninstall_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]


def pth_path() -> Path:
    """Where `install` writes the hook: this environment's site-packages."""
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def install_pth(path: Path | None = None) -> Path:
    """Write the start-up hook file (idempotent). Returns its path."""
    path = path or pth_path()
    if not path.exists() or path.read_text() != PTH_LINE:
        path.write_text(PTH_LINE)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["install"]:
        print(f"wrote {install_pth()}")
        return 0
    if argv == ["uninstall"]:
        path = pth_path()
        path.unlink(missing_ok=True)
        print(f"removed {path}")
        return 0
    if argv == ["check"]:
        print("shim applied (torchvision's _C.so did not load)" if apply() else "shim not needed")
        import torchvision

        print(f"torchvision {torchvision.__version__} imports")
        return 0
    print("usage: python -m nst3d.integrations.nerfstudio.tv_shim install|uninstall|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
