"""The preferences' operators: Check (the worker's versions, device and weights), Set up nst3d (a private
environment: environment.py) and Cancel. They run in the background (tasks.py): Blender stays responsive while
torch imports or pip installs."""

from __future__ import annotations

import sys
from pathlib import Path

import bpy
from bpy.props import StringProperty

from . import environment, tasks
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
    python, how = find_interpreter(bpy.path.abspath(python_pref) if python_pref else "",
                                   environment.managed_python())
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


def setup_done(task: tasks.Task, root: Path) -> None:
    """Settle a finished set-up: the new environment in place and the check's text, or the reason it failed
    (the preferences are not changed either way; Check and Stylize find the environment by themselves)."""
    status = bpy.context.window_manager.nst3d
    step = task.step
    report = None
    if task.outcome == "ok":
        try:
            report = check_report(step.python, task.returncode or 0, list(task.lines), task.stderr_tail())
        except WorkerError as exc:
            task.outcome, task.error = "failed", str(exc)
    usable = report is not None and "torch" in report and report.get("mesh", False)
    if task.outcome == "ok" and not usable:
        task.outcome = "failed"
        task.error = "; ".join(report.get("problems", [])) if report else "the check gave no report"
    python = environment.finish_env(root, task.outcome == "ok")
    if python is not None:
        status.setup_message = f"nst3d is set up in {python.parent.parent}"
        status.setup_error = ""
        store_check_result(f"Python: {python} (set up by the add-on)\n{describe_check(report)}")
    elif task.outcome == "cancelled":
        status.setup_error, status.setup_message = "set-up cancelled; nothing was changed", ""
    else:
        reason = task.error or environment.pip_reason([*task.lines, *task.stderr_tail()])
        if task.outcome == "failed" and step.argv[1:4] == ["-m", "pip", "install"] and "--no-index" in step.argv:
            reason += "; the wheel folder must hold every package nst3d[mesh] needs, torch included"
        status.setup_error = f"{step.label} failed: {reason} (log: {root / 'setup.log'})"
        status.setup_message = ""


def start_setup(prefs) -> tasks.Task:
    """Start the set-up's commands in the background; ValueError / WorkerError when it cannot start."""
    if prefs.setup_source != "wheels" and not bpy.app.online_access:
        raise ValueError("Blender's online access is off (Preferences > System > Network): allow it to download, "
                         "or install from a Local Wheel Folder")
    base = bpy.path.abspath(prefs.setup_base_python) if prefs.setup_base_python else sys.executable
    wheels = bpy.path.abspath(prefs.setup_wheels) if prefs.setup_wheels else ""
    root, argvs = environment.setup_argvs(base, prefs.setup_source, wheels, prefs.setup_reuse, prefs.device)
    labels = ("Creating the environment", "Installing nst3d", "Installing torch and the other packages",
              "Checking the worker")
    weights, lines = (1.0, 0.5, 6.0, 1.0), (0, 0, 120, 0)
    pythons = (base, *[str(environment.env_python(root / "env.partial"))] * 3)
    steps = [tasks.Step(label, argv, python, weight, count)
             for label, argv, python, weight, count in zip(labels, argvs, pythons, weights, lines, strict=True)]
    log = root / "setup.log"
    log.write_text("", encoding="utf-8")
    status = bpy.context.window_manager.nst3d
    status.setup_message, status.setup_error = "", ""
    return tasks.start(tasks.Task("setup", steps, lambda task: setup_done(task, root), log_file=log))


class NST3D_OT_setup(bpy.types.Operator):
    """Create a private Python environment for the worker in the add-on's folder and install nst3d and torch
    into it, in the background (the manual Python path stays as the expert option)"""

    bl_idname = "nst3d.setup"
    bl_label = "Set up nst3d"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context):
        return "setup" not in tasks.RUNNING

    def execute(self, context):
        try:
            start_setup(get_preferences(context))
        except (ValueError, WorkerError, OSError) as exc:
            context.window_manager.nst3d.setup_error = str(exc)
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


CLASSES = (NST3D_OT_check_worker, NST3D_OT_setup, NST3D_OT_cancel_task)
