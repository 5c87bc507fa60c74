"""Stylize every mesh of a .blend headless; the result is saved as a new .blend (the input is never touched).

Inside Blender:
    blender -b scene.blend -P scripts/batch_stylize.py -- --style s.jpg [--objects "Chair*"] -o out.blend
With the `bpy` module (pip install bpy):
    python scripts/batch_stylize.py scene.blend --style s.jpg [--objects "Chair*"] -o out.blend

It takes the same stylization options as `nst3d mesh` (--steps, --size, --views, --loss, --strength,
--texture-size, ...). The work runs in the nst3d worker, exactly as in the add-on (blender_addon/jobs.py):
private copies of the meshes are exported, stylized, and the results come back as NEW `_styled` materials
and images (packed into the saved file); the original materials stay in the file. Objects without UVs get a
Smart UV Project into a new UV map. Exit status: 0 done, 2 bad input or failed job, 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bpy

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from blender_addon import jobs  # noqa: E402 - bpy + stdlib, shared with the add-on
from blender_addon.worker_process import WorkerError, find_interpreter, parse_lines, worker_env  # noqa: E402

PROG = "batch_stylize"


class BatchError(Exception):
    """A one-line reason the batch cannot run."""


def inside_blender() -> bool:
    """True when run by the Blender executable (-P), False through the bpy module."""
    return bool(bpy.app.binary_path)


def script_args(argv: list[str]) -> list[str]:
    """The script's own arguments: after "--" inside Blender, else everything after the script name."""
    if inside_blender():
        return argv[argv.index("--") + 1:] if "--" in argv else []
    return argv[1:]


def nst3d_here() -> bool:
    """Whether this process can import nst3d (and torch) itself, to parse the options in-process."""
    return importlib.util.find_spec("nst3d") is not None and importlib.util.find_spec("torch") is not None


def own_parser(full: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, add_help=full,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, help="the stylized .blend to write")
    parser.add_argument("--objects", action="append", metavar="PATTERN",
                        help="only objects whose name matches (fnmatch, e.g. 'Chair*'; repeat or "
                             "comma-separate); default: every mesh in the scene")
    parser.add_argument("--python", default="", metavar="EXE",
                        help="Python with nst3d for the worker (default: $NST3D_PYTHON, this Python, "
                             "or nst3d on PATH)")
    parser.add_argument("--keep-job", action="store_true",
                        help="keep the job folder (GLB, results, worker.log)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def split_scene(argv: list[str]) -> tuple[Path | None, list[str]]:
    """The scene path (the first argument, when it is not an option) and the rest. Taken out by hand so that
    the stylization options can be handed on untouched when this Python has no nst3d."""
    if argv and not argv[0].startswith("-"):
        return Path(argv[0]), argv[1:]
    return None, argv


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    """(own arguments + .scene, job fields {"options", "texture_size", "style_map", "shading", "report"})."""
    scene, argv = split_scene(argv)
    if nst3d_here():
        from nst3d.errors import UserError
        from nst3d.worker import add_job_options, job_fields_from_args

        parser = own_parser(full=True)
        add_job_options(parser)
        args = parser.parse_args(argv)
        try:
            fields = job_fields_from_args(args)
        except UserError as exc:
            raise BatchError(str(exc)) from None
    elif "-h" in argv or "--help" in argv:
        own_parser(full=True).print_help()
        print("\nstylization options: the same as `nst3d mesh` (see `nst3d mesh --help`)")
        raise SystemExit(0)
    else:
        args, rest = own_parser(full=False).parse_known_args(argv)
        fields = _parse_in_worker(args.python, rest)
    args.scene = scene
    styles = [*fields["options"].get("styles", []), *(p for paths in (fields.get("style_map") or {}).values()
                                                       for p in paths)]
    for style in styles:  # now, not after the scene has loaded
        if not Path(style).is_file():
            raise BatchError(f"style image not found: {style}")
    return args, fields


def _parse_in_worker(python_pref: str, rest: list[str]) -> dict:
    """Let the worker's Python parse the stylization options (this Python has no nst3d/torch)."""
    try:
        python, _how = find_interpreter(python_pref)
    except WorkerError as exc:
        raise BatchError(str(exc)) from None
    result = subprocess.run([python, "-m", "nst3d", "worker", "--parse-options", *rest], capture_output=True,
                            text=True, env=worker_env(python))
    fields = next((e for e in parse_lines(result.stdout.splitlines()) if e.get("event") == "options"), None)
    if result.returncode != 0 or fields is None:
        lines = result.stderr.strip().splitlines() or ["the worker could not parse the options"]
        raise BatchError(lines[-1])
    return {key: fields.get(key) for key in ("options", "texture_size", "style_map", "shading", "report")}


def select_objects(patterns: list[str] | None) -> list[bpy.types.Object]:
    """The scene's mesh objects whose names match one of the patterns (all meshes without patterns)."""
    names = [p.strip() for group in (patterns or []) for p in group.split(",") if p.strip()]
    scene_objects = list(bpy.context.scene.objects)
    matched = [ob for ob in scene_objects if not names or any(fnmatch.fnmatchcase(ob.name, p) for p in names)]
    meshes = [ob for ob in matched if ob.type == "MESH" and len(ob.data.polygons)]
    if not meshes:
        what = f"matching {', '.join(names)}" if names else "in the scene"
        raise BatchError(f"no mesh objects {what} ({len(scene_objects)} objects in the scene)")
    return meshes


def open_scene(args: argparse.Namespace) -> Path:
    """Open the input .blend (bpy module) or check the one Blender opened; its path."""
    if args.scene is not None:
        if not args.scene.is_file():
            raise BatchError(f"scene not found: {args.scene}")
        if not inside_blender() or Path(bpy.data.filepath).resolve() != args.scene.resolve():
            try:
                bpy.ops.wm.open_mainfile(filepath=str(args.scene), load_ui=False)
            except RuntimeError as exc:  # not a .blend, or a damaged one
                reason = str(exc).strip().removeprefix("Error: ").splitlines()[0]
                raise BatchError(f"cannot open {args.scene}: {reason}; give a .blend saved by Blender") from None
    if not bpy.data.filepath:
        raise BatchError("no .blend given: blender -b scene.blend -P batch_stylize.py -- ... "
                         "or python batch_stylize.py scene.blend ...")
    return Path(bpy.data.filepath)


def check_output(output: Path, scene: Path) -> None:
    if output.suffix.lower() != ".blend":
        raise BatchError(f"output must be a .blend file, got {output}")
    if output.resolve() == scene.resolve():
        raise BatchError("the output is the input scene; choose another file (inputs are never overwritten)")
    probe_folder(output.resolve().parent)


def probe_folder(folder: Path) -> None:
    """Prove `folder` takes new files (a probe file, deleted at once; /proc and /sys pass a permission check
    and fail at the save, after the whole run). A missing folder is made for the probe and removed again."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=".nst3d-probe.", dir=folder):
            pass
    except OSError as exc:
        raise BatchError(f"cannot write to {folder} ({exc.strerror or exc.__class__.__name__}); "
                         "choose another output path") from None
    finally:
        for created in missing:  # a run that fails later leaves no empty folder
            with contextlib.suppress(OSError):
                created.rmdir()


class TextBar:
    """A progress line on stderr, for a Blender Python without tqdm."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.last = 0.0

    def __call__(self, event: dict) -> None:
        if event.get("event") == "warning":
            print(f"nst3d: warning: {event.get('text', '')}", file=sys.stderr)
            return
        if self.quiet:
            return
        if event.get("event") == "progress":
            now = time.monotonic()
            if now - self.last < 0.2 and event["step"] < event["total"]:
                return
            self.last = now
            done = int(30 * event["step"] / max(1, event["total"]))
            loss = f" loss {event['loss']:.4g}" if "loss" in event else ""  # rendering stages have none
            print(f"\r{event.get('stage', 'stylizing')} [{'#' * done}{'.' * (30 - done)}] "
                  f"{event['step']}/{event['total']}{loss}", end="", file=sys.stderr, flush=True)
            if event["step"] >= event["total"]:
                print(file=sys.stderr)
        elif event.get("event") == "message":
            print(event.get("text", ""), file=sys.stderr)

    def close(self) -> None:
        pass


def progress_bar(quiet: bool):
    """nst3d's tqdm bar where nst3d.events imports (stdlib + tqdm), else a plain text line."""
    try:
        import tqdm  # noqa: F401 - ProgressBar needs it

        from nst3d.events import ProgressBar
    except ImportError:
        return TextBar(quiet)
    return ProgressBar(desc="stylizing", quiet=quiet)


def run_job(objects, fields: dict, python: str, quiet: bool) -> jobs.StylizeJob:
    """Launch the worker and follow it to the end (Ctrl-C cancels it)."""
    extra = {key: fields[key] for key in ("style_map", "shading") if fields.get(key)}
    job = jobs.start_job(objects, fields["options"], fields.get("texture_size"), python, extra=extra)
    bar = progress_bar(quiet)
    try:
        while True:
            for event in job.tick():
                bar(event)
            if job.finished:
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        job.cancel()
        while not job.finished:
            job.tick()
            time.sleep(0.05)
    finally:
        bar.close()
    return job


def summary(plan: jobs.Plan, assigned: dict[str, list[str]], result: dict) -> list[str]:
    """One line per object: its new materials and texture sizes, and whether it was unwrapped."""
    unwrapped = {u.object for u in plan.unwraps}
    lines = []
    for name in plan.objects:
        parts = []
        for material_name in assigned.get(name, []):
            material = bpy.data.materials.get(material_name)
            source = material.get(jobs.SOURCE_KEY, "") if material else ""
            image = _styled_image(material)
            size = f" {image.size[0]}x{image.size[1]}" if image is not None else ""
            parts.append(f"{source or '(no material)'} -> {material_name}{size}")
        uv = f"new UV map {jobs.UV_MAP_NAME} (Smart UV Project)" if name in unwrapped else "own UVs"
        lines.append(f"  {name}: {'; '.join(parts) or 'nothing assigned'}; {uv}")
    report = result.get("report")  # nst3d.pipelines.report.Report as JSON: the same keys for every backend
    if report:
        style = report["evaluation"]["style_distance"]
        lines.append(f"  style distance {style['before']:.4g} -> {style['after']:.4g} (held-out views)")
    return lines


def _styled_image(material):
    if material is None or material.node_tree is None:
        return None
    for node in material.node_tree.nodes:
        if node.type == "TEX_IMAGE" and node.image is not None and jobs.SOURCE_KEY in node.image:
            return node.image
    return None


def write_report(report: dict, path: Path) -> None:
    """The run's report (the worker's report.json) as JSON at `path` (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _finite(value):
    """JSON data with NaN and infinities as null (as nst3d's own reports; JSON has no such numbers)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def save_blend(output: Path) -> None:
    """Save a copy of the current file to `output` (temporary name, then rename)."""
    tmp = output.with_name(f".{output.stem}.part.blend")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp), copy=True, check_existing=False)
        os.replace(tmp, output)
    except (RuntimeError, OSError) as exc:  # e.g. the disk filled up during the run
        reason = str(exc).strip().removeprefix("Error: ").splitlines()[0]
        raise BatchError(f"cannot save {output}: {reason}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def main(argv: list[str] | None = None) -> int:
    argv = script_args(sys.argv if argv is None else argv)
    started = time.perf_counter()
    # Parsing imports torch: a KeyboardInterrupt raised inside a C extension's import can abort the process, so
    # until then Ctrl-C is only noted.
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        try:
            args, fields = parse(argv)
        finally:
            signal.signal(signal.SIGINT, previous)
        if noted:
            raise KeyboardInterrupt
        scene = open_scene(args)
        check_output(args.output, scene)
        if fields.get("report"):
            if Path(fields["report"]).suffix.lower() != ".json":
                raise BatchError(f"--report must name a .json file, got {fields['report']}")
            probe_folder(Path(fields["report"]).parent)
        objects = select_objects(args.objects)
        print(f"{PROG}: stylizing {len(objects)} object(s) of {scene.name}: "
              f"{', '.join(ob.name for ob in objects)}", file=sys.stderr)
        job = run_job(objects, fields, args.python, args.quiet)
        try:
            if job.cancelled:
                print(f"{PROG}: cancelled; nothing was written", file=sys.stderr)
                return 130
            if job.result is None:
                raise BatchError(job.error)
            assigned = jobs.apply_result(job.plan, job.result)
            save_blend(args.output)
            if fields.get("report"):
                write_report(job.result.get("report") or {}, Path(fields["report"]))
            lines = summary(job.plan, assigned, job.result)
        finally:
            keep = args.keep_job or job.crashed
            job.cleanup(keep=keep)
            if keep:
                print(f"{PROG}: the job folder (exported GLB, results, worker.log) is kept in {job.plan.folder}",
                      file=sys.stderr)
    except (BatchError, WorkerError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while starting up (argument parsing imports torch); the job handles its own
        print(f"\n{PROG}: cancelled; nothing was written", file=sys.stderr)
        return 130
    print(f"{PROG}: wrote {args.output} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    code = main()
    if inside_blender():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # Blender would otherwise exit 0 whatever the script returned
    sys.exit(code)
