"""Run one stylization job described in JSON and stream its events as JSON lines on stdout.

This is what the Blender add-on and the headless batch script launch (`nst3d worker JOB.json`), so that
Blender never imports torch. The job file (paths relative to the job file's folder):

    {"nst3d_job": 1, "kind": "mesh", "input": "input.glb", "output_dir": "out",
     "options": {"styles": ["starry.jpg"], "steps": 200, ...},   # 1:1 nst3d.options.StyleOptions fields
     "texture_size": 512, "style_map": null, "export_format": "glb",
     "offline": false,   # true: never download (Blender's online access is off); missing weights: an error
     "preview_every": 0} # N > 0: a "preview" event every N optimisation steps (PNGs in <job folder>/previews)

Events, one JSON object per line on stdout (everything else the process prints goes to stderr):
    {"event": "start", ...}
    {"event": "progress", "stage", "step", "total", "loss" (optimising only), "unit" (when not a step), ...}
    {"event": "message", "text"}   {"event": "warning", "text"} (bad but usable input, e.g. a missing texture)
    {"event": "preview", "step", "total", "path"} (a small PNG of one held-out view; nst3d.worker_preview)
    {"event": "done", "outputs": [...], "textures": [{"material", "path", "factor"}], "report": {...}}
        (report: nst3d.pipelines.report.Report as JSON, the same keys as every command's report.json)
    {"event": "error", "message": "one line"}   {"event": "cancelled"}
Exit status: 0 done, 2 bad job/input, 1 crash, 3 out of memory, 130 cancelled (SIGTERM/SIGINT). On any
failure the output folder the worker created is removed: nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nst3d import __version__
from nst3d.errors import UserError
from nst3d.events import Event, JsonLines
from nst3d.glb_textures import extract_base_color_textures, read_glb  # noqa: F401 - also this module's API

JOB_VERSION = 1
JOB_KINDS = ("mesh",)

EXIT_OK, EXIT_CRASH, EXIT_USER, EXIT_OOM, EXIT_CANCELLED = 0, 1, 2, 3, 130


@dataclass
class Job:
    """One job: stylize `input` into `output_dir` (which must not exist yet, or be empty)."""

    kind: str
    input: Path
    output_dir: Path
    options: Any  # nst3d.options.StyleOptions (imported lazily: it imports torch)
    texture_size: int | None = None
    style_map: dict[str, list[Path]] | None = None
    export_format: str = "glb"
    shading: str = "none"
    keep_uv_layouts: bool = False  # the caller applies textures to its own UVs (see nst3d.backends.mesh.load)
    offline: bool = False  # never download the VGG-19 weights (the host application forbids network access)
    preview_every: int = 0  # a "preview" event every N optimisation steps (0: none)
    preview_dir: Path | None = None  # where the preview PNGs go (the job file's folder / "previews")


# ----------------------------------------------------------------------------------------------------------
# The job file


def load_job(path: str | os.PathLike) -> Job:
    """Read and validate a job file; relative paths are resolved against its folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"job file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read job file {path}: {exc}") from None
    return job_from_dict(data, path.resolve().parent)


def job_from_dict(data: Any, base: Path) -> Job:
    """The Job a parsed job document describes (validated against nst3d.schema; paths resolved against `base`)."""
    from nst3d.schema import MeshOptions, from_mapping

    if not isinstance(data, dict):
        raise UserError("job file must hold a JSON object")
    if data.get("nst3d_job") != JOB_VERSION:
        raise UserError(f"job file version {data.get('nst3d_job')!r} is not supported (expected "
                        f"\"nst3d_job\": {JOB_VERSION}); update the add-on and nst3d together")
    mesh_fields = {"texture_size", "shading", "export_format"}
    known = {"nst3d_job", "kind", "input", "output_dir", "options", "style_map", "keep_uv_layouts", "offline",
             "preview_every", *mesh_fields}
    if unknown := sorted(set(data) - known):
        raise UserError(f"job file has unknown keys {', '.join(unknown)}")
    kind = data.get("kind")
    if kind not in JOB_KINDS:
        raise UserError(f"job kind {kind!r} is not supported; use one of {', '.join(JOB_KINDS)}")
    for key in ("input", "output_dir"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError(f"job file needs \"{key}\" (a path)")
    try:
        mesh = from_mapping(MeshOptions, {k: data[k] for k in mesh_fields if k in data}, base, what="job")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    flags = {key: data.get(key, False) for key in ("keep_uv_layouts", "offline")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise UserError(f"job {key} must be true or false, got {value!r}")
    preview_every = data.get("preview_every", 0)
    if isinstance(preview_every, bool) or not isinstance(preview_every, int) or preview_every < 0:
        raise UserError(f"job preview_every must be a whole number of steps (0: no previews), got {preview_every!r}")
    return Job(kind=kind, input=_path(data["input"], base), output_dir=_path(data["output_dir"], base),
               options=options_from_dict(data.get("options") or {}, base), texture_size=mesh.texture_size,
               style_map=_style_map(data.get("style_map"), base), export_format=mesh.export_format,
               shading=mesh.shading, **flags, preview_every=preview_every, preview_dir=base / "previews")


def _style_map(value: Any, base: Path) -> dict[str, list[Path]] | None:
    """{name: [style image, ...]} from {name: path or [paths]}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UserError("job style_map must map material/object names to style image paths")
    out = {}
    for name, paths in value.items():
        paths = [paths] if isinstance(paths, str) else paths
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise UserError(f"job style_map[{name!r}] must be a style image path or a list of them")
        out[name] = [_path(p, base) for p in paths]
    return out


def options_from_dict(data: Any, base: Path) -> Any:
    """StyleOptions from a job's "options": the field names of nst3d.schema.StyleOptions, checked by its specs
    (the same rules as the command line), paths as strings."""
    from nst3d.schema import StyleOptions, check_style_weights, from_mapping

    try:
        opts = from_mapping(StyleOptions, data, base)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not opts.styles:
        raise UserError("job options need \"styles\": a non-empty list of style image paths")
    try:
        check_style_weights(opts)
    except ValueError as exc:
        raise UserError(f"job option style_weights {exc}") from None
    return opts


def options_to_dict(opts: Any) -> dict[str, Any]:
    """The JSON form of a StyleOptions (absolute paths as strings); inverse of options_from_dict."""
    from nst3d.schema import to_mapping

    return to_mapping(opts)


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """The options a mesh job takes, spelled as `nst3d mesh` spells them (for the batch script)."""
    from nst3d.options import add_style_options
    from nst3d.schema import DEFAULTS, MeshOptions, add_arguments

    add_style_options(parser, DEFAULTS["mesh"])
    add_arguments(parser, MeshOptions, title="mesh")


def job_fields_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job fields ("options", "texture_size", "style_map", "shading") from add_job_options' arguments, and
    "report": where the batch script writes the run's report (--report), or None."""
    from nst3d.options import options_from_args
    from nst3d.schema import parse_style_map

    style_map = {name: [str(Path(p).expanduser().resolve()) for p in paths]
                 for name, paths in parse_style_map(args.style_map).items()}
    return {"options": options_to_dict(options_from_args(args)), "texture_size": args.texture_size,
            "style_map": style_map or None, "shading": args.shading,
            "report": str(Path(args.report).expanduser().resolve()) if args.report else None}


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise UserError(f"job file: expected a path string, got {value!r}")
    from nst3d.schema import resolve_path

    return resolve_path(Path(value), base)


# ----------------------------------------------------------------------------------------------------------
# Running a job


def run_job(job: Job, on_event: Callable[[Event], None],
            should_stop: Callable[[], bool] | None = None) -> Event:
    """Run `job`; returns the "done" event (outputs, extracted base-colour textures, report)."""
    if job.kind != "mesh":
        raise UserError(f"job kind {job.kind!r} is not supported")
    try:
        from nst3d.pipelines.mesh import stylize_mesh_file
        from nst3d.worker_preview import Previews
    except ModuleNotFoundError as exc:
        raise UserError(f"this nst3d installation cannot stylize meshes (missing module {exc.name}); "
                        "install it with: pip install 'nst3d[mesh]'") from None
    if not job.input.is_file():
        raise UserError(f"job input not found: {job.input}")
    if job.offline:
        job.options.weights = offline_weights(job.options.weights)
    started = time.perf_counter()
    sink = _without_done(on_event)
    previews = Previews(job.preview_every, job.preview_dir, sink) if job.preview_every else None
    report = stylize_mesh_file(job.input, job.output_dir, job.options, job.style_map,
                               texture_size=job.texture_size, export_format=job.export_format,
                               shading=job.shading, keep_uv_layouts=job.keep_uv_layouts,
                               on_event=previews or sink, should_stop=should_stop,
                               on_adapter=(lambda adapter: setattr(previews, "adapter", adapter)) if previews else None)
    outputs = sorted(str(p) for p in job.output_dir.rglob("*") if p.is_file())
    asset = Path(report.outputs["asset"])
    textures = []
    if asset.suffix == ".glb" and asset.is_file():
        textures = extract_base_color_textures(asset, job.output_dir / "textures", source=job.input)
    return {"event": "done", "outputs": outputs, "textures": textures, "report": report.to_dict(),
            "seconds": time.perf_counter() - started}


def offline_weights(weights: Path | None) -> Path:
    """The VGG-19 weights file, never downloaded; UserError saying where to put one."""
    from nst3d.features import TORCHVISION_FILE, WEIGHTS_ENV, hub_checkpoint_path, resolve_weights

    if weights or os.environ.get(WEIGHTS_ENV) or hub_checkpoint_path().is_file():
        return resolve_weights(weights, download=False)
    raise UserError(f"no VGG-19 weights, and online access is off so they cannot be downloaded: put "
                    f"{TORCHVISION_FILE} in {hub_checkpoint_path().parent}, or choose a weights file "
                    f"(the add-on preferences' VGG-19 Weights, or ${WEIGHTS_ENV})")


def _without_done(on_event: Callable[[Event], None]) -> Callable[[Event], None]:
    """Forward the backend's events; its own "done" is renamed so only the worker's final one ends a job."""

    def send(event: Event) -> None:
        if event.get("event") == "done":
            event = {**event, "event": "stage_done"}
        on_event(event)

    return send


# ----------------------------------------------------------------------------------------------------------
# The environment check (the add-on's "Check" button)


def check(device: str = "auto", weights: str | None = None) -> Event:
    """Versions, device and weights this worker would use; "problems" lists what stops a job from running."""
    problems: list[str] = []
    notes: list[str] = []
    report: Event = {"event": "check", "nst3d": __version__, "python": platform.python_version(),
                     "executable": sys.executable}
    try:
        import torch
    except ImportError as exc:
        problems.append(f"torch cannot be imported ({exc}); install nst3d with its dependencies")
        return {**report, "ok": False, "problems": problems, "notes": notes}
    report["torch"] = torch.__version__
    report["cuda"] = bool(torch.cuda.is_available())
    if report["cuda"]:
        report["gpu"] = torch.cuda.get_device_name(0)
    try:
        from nst3d.options import resolve_device

        report["device"] = str(resolve_device(device))
    except UserError as exc:
        problems.append(str(exc))
    try:
        import nst3d.pipelines.mesh  # noqa: F401 - only checks that the mesh backend imports
        report["mesh"] = True
    except ImportError as exc:
        report["mesh"] = False
        problems.append(f"the mesh backend cannot be imported ({exc}); install: pip install 'nst3d[mesh]'")
    try:
        from nst3d.features import load_vgg, resolve_weights

        path = resolve_weights(weights, download=False)
        vgg = load_vgg(path, "auto", "cpu")
        report["weights"] = str(path)
        report["layers"] = vgg.available[-1] if vgg.available else None
    except UserError as exc:
        if weights:
            problems.append(str(exc))
        else:
            notes.append(f"{exc} (the first job downloads them, ~550 MB)")
    return {**report, "ok": not problems, "problems": problems, "notes": notes}


# ----------------------------------------------------------------------------------------------------------
# The process: signals, stdout hygiene, exit status


class _Stop:
    """SIGTERM/SIGINT handler: the first signal raises Cancelled at once (like Ctrl-C in the CLI)."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame) -> None:
        from nst3d.stylize import Cancelled

        if not self.requested:
            self.requested = True
            raise Cancelled()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


def event_stream() -> IO[str]:
    """A private copy of stdout for the JSON lines; fd 1 itself is pointed at stderr, so stray prints (ours,
    a library's, or C code's) can never corrupt the event stream."""
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def run_job_file(job_path: str | os.PathLike, stream: IO[str] | None = None, device: str | None = None) -> int:
    """Run the job in `job_path`, streaming events to `stream` (default: the real stdout); the exit status.
    `device` (auto, cpu or cuda), when given, replaces the job options' device (`nst3d worker JOB --device`)."""
    emit = JsonLines(stream or event_stream())
    stop = _Stop()
    stop.install()
    claimed: tuple[Path, bool] | None = None
    try:
        job = load_job(job_path)
        if device is not None:
            from nst3d.schema import DEVICES

            if device not in DEVICES:
                raise UserError(f"device {device!r} is not one of {', '.join(DEVICES)}")
            job.options.device = device
        claimed = _claim_output_dir(job.output_dir)
        emit({"event": "start", "job": str(Path(job_path).resolve()), "kind": job.kind,
              "input": str(job.input), "pid": os.getpid(), "nst3d": __version__})
        emit(run_job(job, emit, should_stop=lambda: stop.requested))
        claimed = None
        return EXIT_OK
    except KeyboardInterrupt:  # includes nst3d.stylize.Cancelled
        emit({"event": "cancelled", "message": "cancelled; nothing was written"})
        return EXIT_CANCELLED
    except UserError as exc:
        emit({"event": "error", "message": str(exc), "kind": "user"})
        return EXIT_USER
    except MemoryError:
        emit({"event": "error", "message": "out of memory; lower the size or views", "kind": "memory"})
        return EXIT_OOM
    except Exception as exc:  # noqa: BLE001 - the worker reports every failure as an event, then exits
        traceback.print_exc(file=sys.stderr)
        if exc.__class__.__name__ == "OutOfMemoryError":
            emit({"event": "error", "message": "out of GPU memory; lower the size or views, or use the CPU",
                  "kind": "memory"})
            return EXIT_OOM
        emit({"event": "error", "message": f"internal error: {exc.__class__.__name__}: {_one_line(exc)}",
              "kind": "crash"})
        return EXIT_CRASH
    finally:
        if claimed is not None:
            _discard(*claimed)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _claim_output_dir(path: Path) -> tuple[Path, bool]:
    """Create the job's (new or empty) output folder; (path, whether this worker created it)."""
    if path.exists():
        if not path.is_dir() or any(path.iterdir()):
            raise UserError(f"job output folder {path} exists and is not empty; give a new folder")
        return path, False
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create job output folder {path}: {exc.strerror}") from None
    return path, True


def _discard(path: Path, created: bool) -> None:
    """Remove what a failed or cancelled job wrote: the folder if the worker made it, else its contents."""
    if created:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or "(no message)"

