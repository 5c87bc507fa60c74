"""Where an OBJ's material library and textures really are.

OBJ/MTL files written on Windows name textures as `.\\wood.jpg`, `C:\\Users\\me\\proj\\textures\\Wood.JPG` or
`textures\\wood.jpg` while the file lies beside the OBJ, and map_Kd may carry options before its file name
(`map_Kd -s 1 1 1 wood.png`). trimesh looks a name up only as written, inside the OBJ's folder, so such textures
were dropped. Here each name is looked up the way Blender and assimp do (backslashes read as separators, any
letter case, the written folders dropped one by one, in the MTL's and then the OBJ's folder), and trimesh is
handed a resolver that serves the files found.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trimesh.resolvers import FilePathResolver

# map_* options and how many values follow each (-o, -s and -t take 1 to 3 numbers)
MAP_OPTIONS = {"-blendu": 1, "-blendv": 1, "-bm": 1, "-boost": 1, "-cc": 1, "-clamp": 1, "-imfchan": 1,
               "-mm": 2, "-texres": 1, "-type": 1, "-o": 3, "-s": 3, "-t": 3}
UP_TO_THREE_NUMBERS = ("-o", "-s", "-t")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def map_file_name(argument: str) -> str:
    """The file name in a map_Kd statement's argument: leading options (`-s 1 1 1`, `-bm 0.5`, `-clamp on`)
    skipped, the rest kept whole (file names may contain spaces)."""
    rest = argument.strip()
    while (option := re.match(r"(\S+)\s+", rest)) and option.group(1).lower() in MAP_OPTIONS:
        name, rest = option.group(1).lower(), rest[option.end():]
        for k in range(MAP_OPTIONS[name]):
            value = re.match(r"(\S+)(?:\s+|$)", rest)
            if value is None or (name in UP_TO_THREE_NUMBERS and k > 0 and not _is_number(value.group(1))):
                break
            rest = rest[value.end():]
    return rest.strip()


def _walk(folder: Path, parts: Sequence[str]) -> Path | None:
    """folder/parts[0]/parts[1]/..., each part matched in any letter case; the file, or None."""
    current = folder
    for part in parts:
        if part == "..":
            current = current.parent
            continue
        child = current / part
        if not child.exists():
            if not current.is_dir():
                return None
            matches = sorted(p for p in current.iterdir() if p.name.lower() == part.lower())
            if not matches:
                return None
            child = matches[0]
        current = child
    return current if current.is_file() else None


def find_file(written: str, folders: Sequence[Path]) -> Path | None:
    """The file a name in an OBJ or MTL means: as written (absolute, or relative to one of `folders`); else with
    backslashes read as separators, a Windows drive dropped, any letter case, and the written folders dropped
    one by one from the front (down to the bare file name), in each of `folders` in turn. None if not found."""
    literal = Path(written)
    if literal.is_absolute():
        if literal.is_file():
            return literal
    else:
        for folder in folders:
            if (folder / written).is_file():
                return folder / written
    parts = [p for p in re.split(r"[\\/]+", written) if p not in ("", ".")]
    if parts and re.fullmatch(r"[A-Za-z]:", parts[0]):
        parts = parts[1:]
    for folder in folders:
        for start in range(len(parts)):
            found = _walk(folder, parts[start:])
            if found is not None:
                return found
    return None


@dataclass
class ObjMaterialFiles:
    """The files an OBJ's mtllib and map_Kd statements mean, keyed by the name exactly as trimesh asks its
    resolver for it (the statement's argument), and what the user should hear about them."""

    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _shown(path: Path, folder: Path) -> str:
    """path relative to `folder` (the OBJ's) where it lies inside it, else in full."""
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def locate_material_files(obj: Path, text: str | None = None) -> ObjMaterialFiles:
    """Find the material libraries of an OBJ (whose contents are `text`, read if not given) and the map_Kd
    textures they name. A name found only by the lenient lookup (find_file) gets a note naming the file used;
    a missing one, a note that plain colours are used."""
    found = ObjMaterialFiles()
    folder = obj.parent
    text = obj.read_text(errors="replace") if text is None else text
    for library in re.findall(r"^[ \t]*mtllib[ \t]+(.+?)\s*$", text, flags=re.M):
        mtl = find_file(library, [folder])
        if mtl is None:
            found.notes.append(f"material library {library} not found: using plain colours")
            continue
        if mtl != folder / library:
            found.notes.append(f"material library {library} not found as written; using {_shown(mtl, folder)}")
        found.files[library] = mtl
        for line in mtl.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) < 2 or words[0].lower() != "map_kd":
                continue
            argument = line[line.lower().index("map_kd") + 6:].strip()  # trimesh's key for this texture
            name = map_file_name(argument)
            image = find_file(name, [mtl.parent, folder]) if name else None
            if image is None:
                found.notes.append(f"texture {name or argument} (named in {library}) not found: using the base colour")
                continue
            if image != mtl.parent / name:
                found.notes.append(f"texture {name} (named in {library}) not found as written; using "
                                   f"{_shown(image, folder)}")
            found.files[argument] = image
    return found


class MaterialFileResolver(FilePathResolver):
    """trimesh's file resolver for an OBJ, serving the files locate_material_files found (by the names the
    OBJ and MTL use); any other name is looked up as trimesh does."""

    def __init__(self, obj: Path, files: dict[str, Path]):
        super().__init__(str(obj))
        self.files = files

    def get(self, name: str) -> bytes:
        path = self.files.get(name.strip())
        return path.read_bytes() if path is not None else super().get(name)
