"""The private nst3d environment that "Set up nst3d" makes: a Python virtual environment in the add-on's user
folder, with nst3d (the wheel the extension zip carries, in wheels/) and torch installed into it.

Where: `bpy.utils.extension_path_user(__package__)/env` for the extension; a classic add-on (no extension
folder) uses `<Blender user datafiles>/nst3d/env`. The worker is then found there without a typed path
(worker_process.find_interpreter: after the preferences' path and $NST3D_PYTHON).

Set-up runs four commands in the background (tasks.py), each an argument list:
1. `BASE -c VENV_SCRIPT FOLDER/env.partial REUSE`: a venv with pip; with REUSE, BASE's own packages are layered
   under the new env's (a .pth: site.addsitedir), so an existing torch is reused instead of installed again.
2. `env python -m pip install nst3d`, then `nst3d[mesh]` (its dependencies), from: a local wheel folder
   (`--no-index`: offline studios), or PyPI with PyTorch's CPU or CUDA index for torch; the add-on's own
   wheels/ folder is always a --find-links.
3. the worker's `--check`. Only when all succeed is env.partial renamed to env (an earlier env is
   replaced); on failure or Cancel, env.partial is removed and nothing else changes. The log: FOLDER/setup.log.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import bpy

from .worker_process import check_argv

ADDON_DIR = Path(__file__).resolve().parent
BUNDLED_WHEELS = ADDON_DIR / "wheels"  # scripts/build_addon.py puts the nst3d wheel here
REQUIREMENT = "nst3d[mesh]"
TORCH_INDEXES = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": "https://download.pytorch.org/whl/cu126",
}
SOURCE_ITEMS = (
    ("cpu", "CPU (download)", "nst3d's packages from PyPI, torch's CPU build from PyTorch's index (~1 GB)"),
    ("cuda", "NVIDIA CUDA (download)", "torch's CUDA 12.6 build from PyTorch's index (~4 GB); needs an NVIDIA GPU"),
    ("wheels", "Local Wheel Folder", "Install offline from a folder of wheels (pip download nst3d[mesh] torch "
                                     "-d FOLDER on a connected machine)"),
)

# Run by the base Python: make the venv (with pip) and, when asked, layer the base Python's own packages under it.
# The env's own setuptools (ensurepip's, older) would shadow a reused newer one that packages require: removed.
VENV_SCRIPT = """\
import os, subprocess, sys, sysconfig, venv
target, reuse = sys.argv[1], sys.argv[2] == "1"
builder = venv.EnvBuilder(with_pip=True, clear=True)
builder.create(target)
if reuse:
    own = sysconfig.get_paths(vars={"base": target, "platbase": target})["purelib"]
    with open(own + "/nst3d_reused_packages.pth", "w", encoding="utf-8") as pth:
        pth.write("import site; site.addsitedir(%r)\\n" % sysconfig.get_paths()["purelib"])
    python = os.path.join(target, "Scripts" if os.name == "nt" else "bin", "python")
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"], check=True)
print("created", target)
"""


def env_root() -> Path:
    """The add-on's user folder: the extension's own, else (a classic add-on) one under Blender's datafiles."""
    package = __package__ or "nst3d"
    try:
        return Path(bpy.utils.extension_path_user(package, path="", create=True))
    except (ValueError, AttributeError):  # not installed as an extension (Blender < 4.2 has no extensions)
        return Path(bpy.utils.user_resource("DATAFILES", path="nst3d", create=True))


def env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def managed_python() -> str:
    """The set-up environment's Python when one exists, else ""."""
    try:
        python = env_python(env_root() / "env")
    except OSError:
        return ""
    return str(python) if python.is_file() else ""


def venv_argv(base: str, target: Path, reuse: bool) -> list[str]:
    return [base, "-c", VENV_SCRIPT, str(target), "1" if reuse else "0"]


def pip_argv(python: str, source: str, wheels: str = "") -> list[str]:
    """The install command for `source` (cpu, cuda or wheels); raises ValueError for a wheels source without a
    folder."""
    argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off",
            "--no-input", "--isolated"]  # --isolated: no user pip.conf or PIP_* variables change what is installed
    if BUNDLED_WHEELS.is_dir():
        argv += ["--find-links", str(BUNDLED_WHEELS)]
    if source == "wheels":
        if not wheels or not Path(wheels).is_dir():
            raise ValueError(f"the wheel folder does not exist: {wheels or '(none chosen)'}; choose one")
        argv += ["--no-index", "--find-links", wheels]
    else:
        argv += ["--extra-index-url", TORCH_INDEXES[source]]
    return argv + [REQUIREMENT]


def pip_reason(lines: list[str]) -> str:
    """The first meaningful line of a failed pip run: its first ERROR: line that says what (not pip's pointers to
    its documentation), else the last line of output."""
    errors = [line.strip().removeprefix("ERROR: ") for line in lines if line.strip().startswith("ERROR:")]
    errors = [line for line in errors if not line.startswith(("ResolutionImpossible", "To fix this"))]
    text = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("WARNING:", "["))]
    return (errors or text[-1:] or ["pip stopped without a message"])[0]


def finish_env(root: Path, ok: bool) -> Path | None:
    """On success, env.partial becomes env (replacing an earlier one) and its Python is returned; otherwise
    env.partial is removed."""
    partial, env = root / "env.partial", root / "env"
    if not ok:
        shutil.rmtree(partial, ignore_errors=True)
        return None
    old = root / "env.old"
    shutil.rmtree(old, ignore_errors=True)
    if env.exists():
        os.replace(env, old)
    os.replace(partial, env)
    shutil.rmtree(old, ignore_errors=True)
    return env_python(env)


def setup_argvs(base: str, source: str, wheels: str, reuse: bool, device: str) -> tuple[Path, list[list[str]]]:
    """(user folder, the commands: venv, nst3d itself, its dependencies, the check); ValueError for an unusable
    choice. nst3d is installed first on its own (--force-reinstall --no-deps): with reused packages that already
    hold an nst3d, pip would otherwise call the requirement met and install nothing into the env."""
    root = env_root()
    partial = root / "env.partial"
    python = str(env_python(partial))
    install = pip_argv(python, source, wheels)
    nst3d_only = [*install[:-1], "--no-deps", "--force-reinstall", "nst3d"]
    return root, [venv_argv(base, partial, reuse), nst3d_only, install, check_argv(python, device)]
