"""The Blender side of a stylization job (bpy + standard library; never torch, never nst3d).

1. `start_job`: check the selection, export PRIVATE COPIES of the selected meshes, modifiers applied, to a job
   folder as GLB (export.py), write job.json and launch the worker. The scene itself is not modified.
2. `StylizeJob.tick()` (main thread, on a timer): drain the worker's events, track progress.
3. `apply_result`: on success, load the stylized textures as NEW images, make NEW `_styled` materials,
   add the new UV maps, and assign them. The original materials and images stay in the file.

The add-on's operator and scripts/batch_stylize.py both drive jobs through this module.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import bpy

from .environment import managed_python
from .export import export_job
from .materials import KEY_PREFIX, JobError, Plan, Target
from .materials import SOURCE_KEY as SOURCE_KEY  # noqa: F401
from .materials import UV_MAP_NAME as UV_MAP_NAME  # noqa: F401 - scripts/batch_stylize.py reads it here
from .materials import apply_result as apply_result  # noqa: F401 - the operators' and batch script's entry
from .materials import revert_styled as revert_styled  # noqa: F401
from .option_schema import PANEL_OPTIONS
from .worker_process import Event, WorkerError, WorkerProcess, explain_exit, find_interpreter

JOB_VERSION = 1


def _release_typing_caches() -> None:
    """Work around a bpy 4.5 *module* shutdown hang: when something (here: typing's generic-alias cache,
    filled by torch and the glTF exporter) keeps `bpy` alive through interpreter teardown, bpy's sound
    thread is never stopped and its C++ static destructor blocks forever in pthread_cond_destroy.
    Clearing typing's caches at exit lets bpy shut down normally. Not needed inside Blender itself."""
    import typing

    for clear in getattr(typing, "_cleanups", ()):
        clear()


if not bpy.app.binary_path:  # the `bpy` module (pip install bpy), not the Blender executable
    import atexit

    atexit.register(_release_typing_caches)


# ----------------------------------------------------------------------------------------------------------
# Selection and options


def mesh_objects(objects) -> list[bpy.types.Object]:
    """The mesh objects among `objects` that have faces; raises JobError when there are none."""
    objects = list(objects)
    if not objects:
        raise JobError("nothing is selected: select one or more mesh objects")
    meshes = [ob for ob in objects if ob.type == "MESH" and len(ob.data.polygons) > 0]
    if not meshes:
        kinds = sorted({ob.type.lower() for ob in objects})
        raise JobError(f"no mesh with faces among the {len(objects)} selected object(s) "
                       f"({', '.join(kinds)}); select mesh objects")
    return meshes


def panel_values(settings, group: str) -> dict[str, Any]:
    """The panel's values of one option_schema group ("options" or "mesh"), as the worker's JSON spells them
    (an integer option shown as 0 for "the backend's own" is None)."""
    values = {}
    for name, spec in PANEL_OPTIONS.items():
        if spec["group"] != group:
            continue
        value = getattr(settings, name)
        kind = {"int": int, "float": float}.get(spec["kind"], str)
        values[name] = None if spec["default"] is None and not value else kind(value)
    return values


def job_options(settings, prefs_device: str = "auto", prefs_weights: str = "") -> dict[str, Any]:
    """The job's "options" (nst3d.options.StyleOptions fields) from the panel settings; raises JobError."""
    styles, weights = [], []
    for item in settings.styles:
        path = bpy.path.abspath(item.path) if item.path else ""
        if not path:
            continue
        if not os.path.isfile(path):
            raise JobError(f"style image not found: {path}")
        styles.append(os.path.abspath(path))
        weights.append(float(item.weight))
    if not styles:
        raise JobError("no style image: add one under Style Images")
    if sum(weights) <= 0:
        raise JobError("the style image weights are all zero: give at least one a positive weight")
    options = {"styles": styles, "style_weights": weights if len(styles) > 1 else None, "device": prefs_device,
               **panel_values(settings, "options")}
    if prefs_weights:
        weights_path = bpy.path.abspath(prefs_weights)
        if not os.path.isfile(weights_path):
            raise JobError(f"VGG-19 weights file not found: {weights_path}; fix it in the add-on preferences")
        options["weights"] = weights_path
    return options


def panel_style_map(settings) -> dict[str, list[str]]:
    """The panel's per-material styles as a job's style map {material or object name: [image paths]} (several
    rows for one name blend their images); raises JobError for a row without a name or an image."""
    style_map: dict[str, list[str]] = {}
    for row in settings.style_map:
        path = bpy.path.abspath(row.path) if row.path else ""
        if not row.target:
            raise JobError("a per-material style names no material or object: choose one, or remove the row")
        if not path or not os.path.isfile(path):
            raise JobError(f"the per-material style image for {row.target} is not found: {path or '(none)'}")
        style_map.setdefault(row.target, []).append(os.path.abspath(path))
    return style_map


# ----------------------------------------------------------------------------------------------------------
# The job


def write_job_file(folder: Path, options: dict[str, Any], texture_size: int | None,
                   extra: dict[str, Any] | None = None) -> Path:
    """folder/job.json for the worker (format: nst3d.worker); `extra`: more job fields (style_map, shading)."""
    # keep_uv_layouts: the textures come back onto the objects' own UV maps, so the worker must not re-atlas.
    job = {"nst3d_job": JOB_VERSION, "kind": "mesh", "input": "input.glb", "output_dir": "out",
           "options": options, "texture_size": texture_size or None, "export_format": "glb",
           "keep_uv_layouts": True, **(extra or {})}
    path = folder / "job.json"
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


def exported_style_map(style_map: dict[str, list[str]], objects: list[str], targets: list[Target]
                       ) -> dict[str, list[str]]:
    """A style map by the scene's material or object names -> by the names they have in the exported GLB
    (nst3d_m<i>, nst3d_o<i>), which the worker matches; raises JobError for a name that is neither."""
    out: dict[str, list[str]] = {}
    for name, paths in style_map.items():
        keys = [t.key for t in targets if t.source == name]
        keys += [f"{KEY_PREFIX}o{i}" for i, object_name in enumerate(objects) if object_name == name]
        if not keys:
            known = sorted({t.source for t in targets if t.source} | set(objects))
            raise JobError(f"--style-map names '{name}', which is no material or object of the selection; "
                           f"known names: {', '.join(known)}")
        for key in keys:
            out.setdefault(key, []).extend(paths)
    return out


def prepare_job(objects, options: dict[str, Any], texture_size: int | None = None, context=None,
                folder: Path | None = None, extra: dict[str, Any] | None = None) -> Plan:
    """Export the selection and write the job file; the scene is unchanged. Raises JobError."""
    objects = mesh_objects(objects)
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="nst3d_job_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        targets, unwraps = export_job(objects, folder, context)
        if extra and extra.get("style_map"):
            extra = {**extra, "style_map": exported_style_map(extra["style_map"], [ob.name for ob in objects],
                                                              targets)}
        job_file = write_job_file(folder, options, texture_size, extra)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Plan(folder=folder, job_file=job_file, objects=[ob.name for ob in objects], targets=targets,
                unwraps=unwraps)


class StylizeJob:
    """A launched worker and what it has reported so far. Drive it with tick() on the main thread."""

    def __init__(self, plan: Plan, python: str):
        self.plan = plan
        self.python = python
        self.skipped = 0  # selected objects that are not meshes (for the final message)
        self.step = 0
        self.total = 0
        self.loss = 0.0
        self.stage = "starting"
        self.result: Event | None = None
        self.error = ""
        self.cancelled = False
        self.crashed = False  # ended without a reason of its own: keep worker.log for the user
        self.finished = False
        self.preview_path, self.preview_step = "", 0  # the worker's latest "preview" event
        self.process = WorkerProcess(python, plan.job_file, plan.folder / "worker.log")

    def tick(self) -> list[Event]:
        """Drain events; once the worker has ended, settle `result` / `error` / `cancelled`."""
        events = self.process.drain()
        for event in events:
            self._handle(event)
        if not self.finished and (code := self.process.poll()) is not None:
            for event in self.process.drain():
                self._handle(event)
                events.append(event)
            self.finished = True
            self.process.close()
            if self.process.cancelling or self.cancelled:
                self.cancelled, self.result = True, None
                self.error = self.error or "cancelled; the scene is unchanged"
            elif self.result is None or code != 0:
                self.result = None
                if not self.error:
                    self.crashed = True
                    self.error = explain_exit(self.python, code, list(self.process.stderr_tail))
        return events

    def _handle(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.step, self.total = int(event.get("step", 0)), int(event.get("total", 0))
            self.loss = float(event.get("loss", 0.0))
            self.stage = str(event.get("stage", "stylizing"))
        elif kind == "preview":
            self.preview_path, self.preview_step = str(event.get("path", "")), int(event.get("step", 0))
        elif kind == "start":
            self.stage = "loading"
        elif kind == "done":
            self.result = event
            self.stage = "done"
        elif kind == "error":
            self.error = str(event.get("message", "the worker reported an error"))
            self.crashed = event.get("kind") == "crash"
        elif kind == "cancelled":
            self.cancelled = True
            self.error = "cancelled; the scene is unchanged"

    def cancel(self) -> None:
        self.cancelled = True
        self.process.cancel()

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    def cleanup(self, keep: bool = False) -> None:
        """Stop the worker if needed; remove the job folder unless asked to keep it (it holds worker.log)."""
        self.process.close()
        if not keep:
            shutil.rmtree(self.plan.folder, ignore_errors=True)


def start_job(objects, options: dict[str, Any], texture_size: int | None = None, python_pref: str = "",
              context=None, extra: dict[str, Any] | None = None) -> StylizeJob:
    """Find the worker's Python, export the selection, launch the worker; JobError: scene unchanged."""
    try:
        python, _how = find_interpreter(bpy.path.abspath(python_pref) if python_pref else "", managed_python())
    except WorkerError as exc:
        raise JobError(str(exc)) from None
    plan = prepare_job(objects, options, texture_size, context, extra=extra)
    try:
        return StylizeJob(plan, python)
    except WorkerError as exc:
        shutil.rmtree(plan.folder, ignore_errors=True)
        raise JobError(str(exc)) from None
