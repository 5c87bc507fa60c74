#!/usr/bin/env python3
"""Build the Blender extension .zip from blender_addon/ (standard library only).

    python scripts/build_addon.py                 # dist/nst3d-<version>.zip (extension: install from disk)
    python scripts/build_addon.py --classic       # dist/nst3d_style-<version>-classic.zip (legacy add-on zip)
    python scripts/build_addon.py --blender blender   # let `blender --command extension build` do it

Without --blender the zip is written with zipfile, laid out as Blender's own builder does (files at the
archive root, no __pycache__ or dot-files); if Blender's extension tool is importable here (the `bpy`
module ships it) the manifest is validated with it first. The zip also carries nst3d itself as a wheel
(wheels/nst3d-<version>-py3-none-any.whl, built with `pip wheel --no-deps` from this checkout): the add-on's
"Set up nst3d" installs it from there, so an artist needs no checkout (--no-wheel leaves it out).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "blender_addon"
CLASSIC_FOLDER = "nst3d_style"
EXCLUDE_DIRS = {"__pycache__"}


def manifest_value(source: Path, key: str) -> str:
    """A top-level string value of blender_manifest.toml (tomllib is 3.11+; the keys we need are simple)."""
    text = (source / "blender_manifest.toml").read_text(encoding="utf-8")
    match = re.search(rf'^{key}\s*=\s*"([^"]*)"', text, flags=re.MULTILINE)
    if match is None:
        raise SystemExit(f"build_addon: blender_manifest.toml has no {key}")
    return match.group(1)


def addon_files(source: Path) -> list[Path]:
    """The files that go into the package, sorted (no caches, no dot-files, no built zips)."""
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in EXCLUDE_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix not in (".zip", ".pyc"):
            files.append(path)
    return files


def build_wheel(out_dir: Path) -> Path:
    """nst3d's wheel from this checkout (no dependencies; setuptools from this Python, no download)."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "--disable-pip-version-check", "-w", str(out_dir), str(REPO)],
                            capture_output=True, text=True)
    found = sorted(out_dir.glob("nst3d-*.whl"))
    if result.returncode != 0 or not found:
        raise SystemExit(f"build_addon: cannot build the nst3d wheel: {(result.stderr or result.stdout).strip()}")
    return found[-1]


def write_zip(source: Path, target: Path, prefix: str = "", extra: list[tuple[Path, str]] = ()) -> Path:
    """Zip `source`'s add-on files into `target`, plus `extra` (file, name in the zip); written atomically.
    With a `prefix` (a classic add-on zip: one top folder) the manifest is left out, so that Blender installs
    it as a legacy add-on."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in addon_files(source):
            name = path.relative_to(source).as_posix()
            if prefix and name == "blender_manifest.toml":
                continue
            archive.write(path, f"{prefix}/{name}" if prefix else name)
        for path, name in extra:
            archive.write(path, f"{prefix}/{name}" if prefix else name)
    tmp.replace(target)
    return target


def blender_ext_tool() -> Path | None:
    """Blender's extension command-line tool as shipped inside the `bpy` module, if installed."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return found[-1] if found else None


def validate(source: Path) -> None:
    """Validate the manifest with Blender's own tool when it is available (skipped otherwise)."""
    tool = blender_ext_tool()
    if tool is None:
        print("build_addon: Blender's extension tool not found; manifest not validated", file=sys.stderr)
        return
    result = subprocess.run([sys.executable, str(tool), "validate", str(source)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"build_addon: invalid extension: {(result.stdout + result.stderr).strip()}")


def build(source: Path = SOURCE, out_dir: Path = REPO / "dist", classic: bool = False,
          blender: str | None = None, wheel: bool = True) -> Path:
    """Build the package; returns the path of the zip."""
    version = manifest_value(source, "version")
    if blender:
        exe = shutil.which(blender) or blender
        out_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([exe, "--factory-startup", "--command", "extension", "build",
                        "--source-dir", str(source), "--output-dir", str(out_dir)], check=True)
        return out_dir / f"{manifest_value(source, 'id')}-{version}.zip"
    validate(source)
    with tempfile.TemporaryDirectory(prefix="nst3d-wheel-") as tmp:
        built = build_wheel(Path(tmp)) if wheel else None
        extra = [(built, f"wheels/{built.name}")] if built else []
        if classic:
            return write_zip(source, out_dir / f"{CLASSIC_FOLDER}-{version}-classic.zip", CLASSIC_FOLDER, extra)
        return write_zip(source, out_dir / f"{manifest_value(source, 'id')}-{version}.zip", extra=extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out-dir", type=Path, default=REPO / "dist", help="where to write the zip")
    parser.add_argument("--classic", action="store_true", help="a legacy add-on zip (one top folder) instead")
    parser.add_argument("--blender", metavar="EXE", help="build with `EXE --command extension build` (no wheel)")
    parser.add_argument("--no-wheel", action="store_true", help="leave nst3d's own wheel out of the zip")
    args = parser.parse_args(argv)
    print(build(SOURCE, args.out_dir, args.classic, args.blender, wheel=not args.no_wheel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
