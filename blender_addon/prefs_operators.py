"""The preferences' operators: Check (the worker's versions, device and weights) and Cancel of a background
task. Both run in the background (tasks.py): Blender stays responsive while torch imports."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty

from . import tasks
from .preferences import get_preferences
from .worker_process import WorkerError, check_argv, check_report, describe_check, find_interpreter


def store_check_result(text: str) -> None:
    """The Check box's text, in the preferences (or the stand-in when the add-on is not enabled)."""
    prefs = get_preferences()
    if hasattr(prefs, "bl_rna"):
        prefs.check_result = text
    else:
        type(prefs).check_result = text


def check_text(task: tasks.Task, python: str, how: str) -> str:
    """What a finished check task says: versions and device, the problems, or why there is no report."""
    if task.outcome == "cancelled":
        return "Error: the check was cancelled"
    if task.error:
        return f"Error: {task.error}"
    try:
        report = check_report(python, task.returncode or 0, list(task.lines), task.stderr_tail())
    except WorkerError as exc:
        return f"Error: {exc}"
    return f"Python: {python} ({how})\n{describe_check(report)}"


def start_check(python_pref: str, device: str, weights: str) -> tasks.Task:
    """Find the interpreter and start its `--check` in the background; WorkerError when there is none."""
    python, how = find_interpreter(bpy.path.abspath(python_pref) if python_pref else "")
    store_check_result(f"Checking {python} ...")
    weights = bpy.path.abspath(weights) if weights else ""
    step = tasks.Step("Checking the worker (importing torch)", check_argv(python, device, weights), python)
    return tasks.start(tasks.Task("check", [step], lambda task: store_check_result(check_text(task, python, how))))


class NST3D_OT_check_worker(bpy.types.Operator):
    """Run the nst3d worker's check in the background: versions, device and weights, or the exact problem"""

    bl_idname = "nst3d.check_worker"
    bl_label = "Check"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context):
        return "check" not in tasks.RUNNING

    def execute(self, context):
        prefs = get_preferences(context)
        try:
            start_check(prefs.python_path, prefs.device, prefs.weights_path)
        except WorkerError as exc:
            store_check_result(f"Error: {exc}")
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class NST3D_OT_cancel_task(bpy.types.Operator):
    """Stop the running check or set-up (nothing is changed)"""

    bl_idname = "nst3d.cancel_task"
    bl_label = "Cancel"
    bl_options = {"REGISTER", "INTERNAL"}

    kind: StringProperty(name="Task", default="check", options={"SKIP_SAVE"})

    def execute(self, context):
        return {"FINISHED"} if tasks.cancel(self.kind) else {"CANCELLED"}


CLASSES = (NST3D_OT_check_worker, NST3D_OT_cancel_task)
