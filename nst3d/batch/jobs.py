"""The job list: one row per asset.

CSV (with a header) or JSON lines. Columns / keys:
  input          the asset (mesh, Gaussian-splat PLY, image, or a nerfstudio config.yml) - required
  style          style image(s); several separated by ';' in CSV, or a list in JSON
  style_weights  their blend, e.g. 0.7;0.3 (CSV) or [0.7, 0.3]
  backend        mesh | splat | image | nerf; inferred from the file type when empty
  name           the result folder's name (default: the input's stem)
  any other      an option of the backend's own command, with '_' or '-': steps, size, loss, texture_size,
                 preserve_color, compare_baseline (true/false), style_map ('Wood=b.jpg;Metal=c.jpg'), ...
Relative paths are relative to the job list's folder. Every row is checked before anything runs: a bad row is
reported with its line number.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nst3d import __version__
from nst3d.backends.splat.formats import SPLAT_SUFFIXES, splat_format
from nst3d.errors import UserError
from nst3d.schema import subcommand_parser

BACKENDS = ("mesh", "splat", "image", "nerf")
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".stl", ".off", ".ply")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
RESERVED = ("input", "style", "style_weights", "backend", "name")
PATH_OPTIONS = ("style_map", "texture", "cameras", "dataparser_transforms", "weights", "data")


@dataclass
class Job:
    """One validated row: what to run (the backend's command-line arguments, outputs excluded) and its key."""

    line: int
    name: str
    backend: str
    input: Path
    args: list[str]  # the backend's options, e.g. ["--style", "/abs/s.jpg", "--steps", "100"]
    inputs: list[Path] = field(default_factory=list)  # every file the result depends on
    key: str = ""

    @property
    def folder(self) -> str:
        """Result folder name: readable and unique per input + options."""
        return f"{self.name}-{self.key[:12]}"

    def argv(self, out_dir: Path) -> list[str]:
        """The full `nst3d` argument list that writes this job's results into out_dir."""
        stem = self.input.stem if self.backend != "nerf" else self.name
        report = ["--report", str(out_dir / "report.json"), "--quiet"]
        if self.backend == "mesh":
            return ["mesh", str(self.input), "-o", str(out_dir), *self.args, *report]
        if self.backend == "splat":
            return ["splat", str(self.input), "-o", str(out_dir / f"{stem}_styled.ply"), *self.args, *report]
        if self.backend == "image":
            return ["image", str(self.input), "-o", str(out_dir / f"{stem}_styled.png"), *self.args, *report]
        return ["nerf", "--load-config", str(self.input), "-o", str(out_dir), *self.args, *report]

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "name": self.name, "backend": self.backend, "input": str(self.input),
                "args": self.args, "inputs": [str(p) for p in self.inputs], "key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(data["line"], data["name"], data["backend"], Path(data["input"]), list(data["args"]),
                   [Path(p) for p in data["inputs"]], data["key"])


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for each job in a .csv or .jsonl/.ndjson file."""
    if not path.is_file():
        raise UserError(f"job list not found: {path}")
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson", ".json"):
        raise UserError(f"unsupported job list type '{path.suffix}'; use .csv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not a text job list (byte {exc.start} is not UTF-8); give a .csv or .jsonl "
                        "file") from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: each line must be a JSON object")
            rows.append((number, row))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "input" not in [f.strip() for f in reader.fieldnames]:
        raise UserError(f"{path}: the CSV needs a header row with an 'input' column")
    rows = []
    for row in reader:
        if None in row:
            raise UserError(f"{path}:{reader.line_num}: more cells than header columns")
        cleaned = {k.strip(): (v or "").strip() for k, v in row.items()}
        if any(cleaned.values()):
            rows.append((reader.line_num, cleaned))
    return rows


def infer_backend(path: Path) -> str:
    """mesh | splat | image | nerf from the file; raises UserError when it is none of them."""
    suffix = path.suffix.lower()
    if path.name.endswith((".yml", ".yaml")):
        return "nerf"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in SPLAT_SUFFIXES and splat_format(path):
        return "splat"
    if suffix in MESH_SUFFIXES:
        return "mesh"
    raise UserError(f"cannot tell the backend of '{path.name}'; set the backend column (mesh, splat, image, nerf)")


def _listify(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(";") if v.strip()]


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("", "0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"expected true or false, got '{value}'")


def _resolve(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def row_to_job(number: int, row: dict[str, Any], base: Path, common: list[str],
               parser: argparse.ArgumentParser) -> Job:
    """Validate one row into a Job; `common` are command-line options that apply to every job."""
    if not row.get("input"):
        raise UserError("the 'input' column is empty")
    source = Path(_resolve(str(row["input"]), base))
    if not source.exists():
        raise UserError(f"input not found: {source}")
    backend = str(row.get("backend") or "").strip().lower() or infer_backend(source)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    args = list(common)
    styles = _listify(row.get("style"))
    if styles:  # a row's styles replace the command line's
        args = _drop_option(args, "--style")
        for style in styles:
            args += ["--style", _resolve(style, base)]
    weights = _listify(row.get("style_weights"))
    if weights:
        args = _drop_option(args, "--style-weights") + ["--style-weights", ",".join(weights)]
    sub = _subparser(parser, backend)
    flags = {action.dest: action for action in sub._actions}
    for column, value in row.items():
        dest = column.strip().replace("-", "_")
        if dest in RESERVED or value in (None, "", []):
            continue
        if dest not in flags or not flags[dest].option_strings:
            raise UserError(f"unknown option column '{column}' for the {backend} backend")
        flag = flags[dest].option_strings[-1]
        action = flags[dest]
        if action.nargs == 0:  # a switch such as --compare-baseline
            try:
                args += [flag] if _truthy(value) else []
            except ValueError as exc:
                raise UserError(f"column '{column}': {exc}") from None
            continue
        values = _listify(value) if dest == "style_map" else [value]
        for item in values:
            text = str(item)
            if dest in PATH_OPTIONS:
                name, sep, image = text.partition("=") if dest == "style_map" else ("", "", text)
                text = f"{name}={_resolve(image, base)}" if sep else _resolve(text, base)
            args += [flag, text]
    default_name = source.parent.name if backend == "nerf" else source.stem
    job = Job(number, _safe_name(str(row.get("name") or default_name)), backend, source, args)
    _check_with_parser(parser, job)
    _check_files(args)
    job.inputs = [source, *[Path(a) for a in _option_values(args, "--style")]]
    job.key = job_key(job)
    return job


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "job"


def _drop_option(args: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for item in args:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = True
            continue
        out.append(item)
    return out


def _option_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, item in enumerate(args[:-1]) if item == flag]


def _subparser(parser: argparse.ArgumentParser, backend: str) -> argparse.ArgumentParser:
    sub = subcommand_parser(parser, backend)
    if sub is None:
        raise UserError(f"the {backend} backend is not installed (its command is missing)")
    return sub


def _check_files(args: list[str]) -> None:
    """Every style image (and style-map image) a job names exists: found now, not when the job runs."""
    images = _option_values(args, "--style") + [v.partition("=")[2] for v in _option_values(args, "--style-map")]
    for image in images:
        if image and not Path(image).is_file():
            raise UserError(f"style image not found: {image}")


def _check_with_parser(parser: argparse.ArgumentParser, job: Job) -> None:
    """Parse the job's full command line with the real `nst3d` parser: argparse's own message on failure."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parser.parse_args(job.argv(Path("/nonexistent-output")))
    except SystemExit:
        message = captured.getvalue().strip().splitlines()[-1] if captured.getvalue().strip() else "bad options"
        raise UserError(re.sub(r"^nst3d( \w+)?: error: ", "", message)) from None


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (streamed), or of a folder's file names, sizes and contents."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for item in files:
        digest.update(str(item.relative_to(path) if path.is_dir() else item.name).encode())
        with open(item, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def job_key(job: Job) -> str:
    """A key that changes when the input, a style image, an option or nst3d's version changes."""
    digest = hashlib.sha256()
    digest.update(f"{__version__}|{job.backend}|{file_digest(job.input)}".encode())
    for arg in job.args:
        digest.update(_arg_digest(arg).encode() + b"\0")
    return digest.hexdigest()


def _arg_digest(arg: str) -> str:
    """A file argument (or NAME=file) stands for its content, anything else for itself."""
    name, _, value = arg.rpartition("=")
    path = Path(value)
    if value.startswith("/") and path.is_file():
        return f"{name}={file_digest(path)}"
    return arg


def load_jobs(path: Path, common: list[str], parser: argparse.ArgumentParser) -> list[Job]:
    """Every row validated (errors name their line); duplicate result folders are an error too."""
    base = path.resolve().parent
    jobs: list[Job] = []
    errors: dict[str, list[int]] = {}  # message -> the lines that have it (a bad common option: every line)
    rows = read_rows(path)
    for number, row in rows:
        try:
            jobs.append(row_to_job(number, row, base, common, parser))
        except UserError as exc:
            errors.setdefault(str(exc), []).append(number)
    if not jobs and not errors:
        raise UserError(f"{path} has no jobs")
    seen: dict[str, int] = {}
    for job in jobs:
        if job.folder in seen:
            errors.setdefault(f"the same job as line {seen[job.folder]}", []).append(job.line)
        seen.setdefault(job.folder, job.line)
    if errors:
        count = sum(len(lines) for lines in errors.values())
        where = (lambda lines: f"every row of {path.name}" if len(lines) == len(rows) > 1
                 else f"{path.name}:{lines[0]}" if len(lines) == 1 else f"{path.name} lines {line_ranges(lines)}")
        raise UserError(f"{count} bad row(s), nothing was run: "
                        + "; ".join(f"{where(lines)}: {message}" for message, lines in errors.items()))
    return jobs


def line_ranges(lines: list[int]) -> str:
    """Sorted line numbers as runs: [2, 3, 4, 7] -> "2-4, 7"."""
    runs: list[list[int]] = []
    for line in lines:
        if runs and line == runs[-1][1] + 1:
            runs[-1][1] = line
        else:
            runs.append([line, line])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
