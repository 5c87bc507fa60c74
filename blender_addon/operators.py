"""Operators: Stylize Selected (modal: a timer drains the worker's events, Esc cancels), Cancel, the style
list, Revert to Originals. (The preferences' Check and Set up: prefs_operators.py.)"""

from __future__ import annotations

import os
import time

import bpy
from bpy.props import StringProperty

from . import jobs, live_preview
from .preferences import get_preferences

#: The one job that may run at a time (the Cancel button and the panel look here).
ACTIVE: dict = {}  # "job": the running StylizeJob; "assignment_after_last": _assignment() after the last result
TIMER_S = 0.2


def active_job() -> jobs.StylizeJob | None:
    return ACTIVE.get("job")


def _status(context):
    return context.window_manager.nst3d


def _redraw(context) -> None:
    wm = context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


# ----------------------------------------------------------------------------------------------------------
# A job's life, independent of how it is driven (modal timer in the UI, a blocking loop in scripts)


def begin(context) -> jobs.StylizeJob:
    """Validate, export and launch; raises JobError (the scene is unchanged)."""
    if active_job() is not None:
        raise jobs.JobError("a stylization is already running; cancel it first")
    status = _status(context)
    status.error = ""
    prefs = get_preferences(context)
    settings = context.scene.nst3d
    selected = list(context.selected_objects)
    objects = jobs.mesh_objects(selected)
    options = jobs.job_options(settings, prefs.device, prefs.weights_path)
    # offline: Blender's "Allow Online Access" is off (or --offline-mode): the worker must not download weights.
    # (The headless batch script, run by hand, keeps the worker's own rule: it downloads when none are set.)
    extra = {"style_map": jobs.panel_style_map(settings) or None, "offline": not bpy.app.online_access,
             "preview_every": live_preview.interval(settings.steps) if settings.live_preview else 0}
    job = jobs.start_job(objects, options, settings.texture_size or None, prefs.python_path, context, extra=extra)
    skipped = len(selected) - len(objects)
    job.skipped = skipped
    ACTIVE["job"] = job
    status.running, status.stage, status.step, status.loss = True, "starting", 0, 0.0
    status.preview_step = 0
    live_preview.clear()
    status.total = settings.steps
    status.message = f"stylizing {len(objects)} object(s)" + (f"; skipped {skipped}" if skipped else "")
    return job


def update(context, job: jobs.StylizeJob) -> bool:
    """Drain the worker's events into the status; True once the worker has ended."""
    job.tick()
    status = _status(context)
    status.stage = "cancelling" if job.cancelled and not job.finished else job.stage
    status.step, status.total, status.loss = job.step, job.total or status.total, job.loss
    if job.preview_step != status.preview_step and live_preview.show(job.preview_path, job.preview_step):
        status.preview_step = job.preview_step
    _redraw(context)
    return job.finished


def finish(context, job: jobs.StylizeJob) -> tuple[bool, str]:
    """Apply a successful result (one undo step), or record why not. (ok, message)."""
    status = _status(context)
    ACTIVE.pop("job", None)
    keep = get_preferences(context).keep_job_files
    ok = False
    try:
        if job.result is None:
            message = job.error or "the worker ended without a result"
        else:
            if ACTIVE.get("assignment_after_last") != _assignment():
                # The state before this result as a step of its own (a script's changes push none), unless our
                # previous result is still what the last step holds: then the push would be an undo that does
                # nothing, between this result and the last one.
                _undo_push("Before Stylize Selected")
            folder = context.scene.nst3d.texture_folder
            assigned = jobs.apply_result(job.plan, job.result, bpy.path.abspath(folder) if folder else "")
            _undo_push("Stylize Selected")
            ACTIVE["assignment_after_last"] = _assignment()
            ok = True
            materials = sorted({m for names in assigned.values() for m in names})
            message = (f"stylized {len(assigned)} object(s) into {', '.join(materials)}"
                       + (f"; skipped {job.skipped} that are not meshes" if job.skipped else "")
                       + (f"; textures saved in {bpy.path.abspath(folder)}" if folder else "")
                       + warning_suffix(job.result))
    except jobs.JobError as exc:
        message = str(exc)
    finally:
        if job.crashed:
            message += f" (log: {job.plan.folder / 'worker.log'})"
        job.cleanup(keep=keep or job.crashed)
    status.running = False
    status.stage = "done" if ok else ("cancelled" if job.cancelled else "failed")
    if ok:
        status.message, status.error = message, ""
    else:
        status.error = message
    _redraw(context)
    return ok, message


def warning_suffix(result: dict) -> str:
    """"; warning: <the first of the worker's warnings> (+N more)" or "" (the full list is in report.json)."""
    report = result.get("report")
    warnings = report.get("warnings") if isinstance(report, dict) else None
    if not warnings:
        return ""
    more = f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else ""
    return f"; warning: {warnings[0]}{more}"


def _assignment() -> tuple:
    """Every object's material slots, by name: what a stylization changes."""
    return tuple((ob.name, tuple(slot.material.name if slot.material else "" for slot in ob.material_slots))
                 for ob in bpy.data.objects)


def _undo_push(message: str) -> None:
    if bpy.ops.ed.undo_push.poll():
        bpy.ops.ed.undo_push(message=message)


def cancel_active() -> bool:
    job = active_job()
    if job is None:
        return False
    job.cancel()
    return True


# ----------------------------------------------------------------------------------------------------------


class NST3D_OT_stylize_selected(bpy.types.Operator):
    """Stylize the selected mesh objects with the style images (new _styled materials; originals kept)"""

    bl_idname = "nst3d.stylize_selected"
    bl_label = "Stylize Selected"
    bl_options = {"REGISTER"}

    _timer = None

    @classmethod
    def poll(cls, context):
        if active_job() is not None:
            cls.poll_message_set("a stylization is running")
            return False
        if context.mode != "OBJECT":
            cls.poll_message_set("switch to Object Mode")
            return False
        return True

    def _begin(self, context):
        try:
            return begin(context)
        except jobs.JobError as exc:
            _status(context).error = str(exc)
            _status(context).running = False
            self.report({"ERROR"}, str(exc))
            return None

    def invoke(self, context, event):
        if self._begin(context) is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = active_job()
        if job is None:  # cancelled from elsewhere (file load)
            self._stop_timer(context)
            return {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
            return {"RUNNING_MODAL"}
        if event.type == "TIMER" and update(context, job):
            self._stop_timer(context)
            return self._report(finish(context, job))
        return {"PASS_THROUGH"}

    def execute(self, context):
        """Blocking run, for scripts and background mode (no event loop to drive a modal timer)."""
        job = self._begin(context)
        if job is None:
            return {"CANCELLED"}
        while not update(context, job):
            time.sleep(0.05)
        return self._report(finish(context, job))

    def cancel(self, context):
        self._stop_timer(context)
        if (job := ACTIVE.pop("job", None)) is not None:
            job.cancel()
            job.cleanup()
            _status(context).running = False
            _status(context).error = "cancelled; the scene is unchanged"

    def _stop_timer(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None

    def _report(self, outcome):
        ok, message = outcome
        self.report({"INFO"} if ok else {"ERROR"}, message)
        return {"FINISHED"} if ok else {"CANCELLED"}


class NST3D_OT_cancel(bpy.types.Operator):
    """Stop the running stylization; the scene stays as it was"""

    bl_idname = "nst3d.cancel"
    bl_label = "Cancel"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context):
        return active_job() is not None

    def execute(self, context):
        cancel_active()
        _status(context).stage = "cancelling"
        return {"FINISHED"}


class NST3D_OT_style_add(bpy.types.Operator):
    """Add a style image"""

    bl_idname = "nst3d.style_add"
    bl_label = "Add Style Image"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if not os.path.isfile(bpy.path.abspath(self.filepath)):  # found now, not when Stylize is pressed
            self.report({"ERROR"}, f"not an image file: {self.filepath or '(nothing chosen)'}")
            return {"CANCELLED"}
        settings = context.scene.nst3d
        item = settings.styles.add()
        item.path = self.filepath
        settings.style_index = len(settings.styles) - 1
        _status(context).error = ""  # an earlier "no style image" no longer holds
        return {"FINISHED"}


def _remove_active(settings, collection: str, index: str) -> set[str]:
    """Remove the list's active row (settings.<collection>[settings.<index>]) and keep the index in range."""
    rows = getattr(settings, collection)
    rows.remove(getattr(settings, index))
    setattr(settings, index, max(0, min(getattr(settings, index), len(rows) - 1)))
    return {"FINISHED"}


class NST3D_OT_style_remove(bpy.types.Operator):
    """Remove the selected style image"""

    bl_idname = "nst3d.style_remove"
    bl_label = "Remove Style Image"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.nst3d.styles) > 0

    def execute(self, context):
        return _remove_active(context.scene.nst3d, "styles", "style_index")


class NST3D_OT_style_map_add(bpy.types.Operator):
    """Give a material (or object) of the selection its own style image: a new row for the active object's
    active material"""

    bl_idname = "nst3d.style_map_add"
    bl_label = "Add Per-Material Style"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        settings = context.scene.nst3d
        row = settings.style_map.add()
        ob = context.active_object
        material = ob.active_material if ob is not None else None
        row.target = material.name if material is not None else (ob.name if ob is not None else "")
        settings.style_map_index = len(settings.style_map) - 1
        return {"FINISHED"}


class NST3D_OT_style_map_remove(bpy.types.Operator):
    """Remove the selected per-material style"""

    bl_idname = "nst3d.style_map_remove"
    bl_label = "Remove Per-Material Style"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(context.scene.nst3d.style_map) > 0

    def execute(self, context):
        return _remove_active(context.scene.nst3d, "style_map", "style_map_index")


class NST3D_OT_revert_styled(bpy.types.Operator):
    """Assign the original materials again on the selected objects (the _styled ones stay in the file)"""

    bl_idname = "nst3d.revert_styled"
    bl_label = "Revert to Originals"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        count = jobs.revert_styled(context.selected_objects)
        status = _status(context)
        status.message, status.error = f"restored {count} material slot(s)", ""  # not the stale "stylized ..."
        self.report({"INFO"}, status.message)
        return {"FINISHED"} if count else {"CANCELLED"}


CLASSES = (NST3D_OT_stylize_selected, NST3D_OT_cancel, NST3D_OT_style_add, NST3D_OT_style_remove,
           NST3D_OT_style_map_add, NST3D_OT_style_map_remove, NST3D_OT_revert_styled)
