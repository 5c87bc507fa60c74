"""Add-on preferences: "Set up nst3d" (a private environment for the worker), or the Python that runs it (the
expert option), the device, the weights, and a Check button."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from .environment import SOURCE_ITEMS

DEVICE_ITEMS = (
    ("auto", "Auto", "A CUDA GPU when the worker's torch sees one, else the CPU"),
    ("cpu", "CPU", "Always the CPU"),
    ("cuda", "CUDA GPU", "An NVIDIA GPU (fails if the worker's torch has no CUDA)"),
)


class NST3D_Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    setup_source: EnumProperty(name="Install From", items=SOURCE_ITEMS, default="cpu")
    setup_wheels: StringProperty(name="Wheel Folder", subtype="DIR_PATH",
                                 description="A folder of wheels: nst3d's and everything it needs, torch included")
    setup_base_python: StringProperty(
        name="Base Python", subtype="FILE_PATH",
        description="Expert: the Python 3.11+ the environment is made from; empty: Blender's own")
    setup_reuse: BoolProperty(
        name="Reuse Its Packages", default=False,
        description="Expert: let the environment see the base Python's installed packages (e.g. a studio's torch) "
                    "instead of installing them again")
    python_path: StringProperty(
        name="Python", subtype="FILE_PATH",
        description="Expert: a Python interpreter with nst3d installed (pip install 'nst3d[mesh]'). Empty: "
                    "$NST3D_PYTHON, the environment Set up made, Blender's own Python if it has nst3d, or the "
                    "nst3d command on PATH")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto")
    weights_path: StringProperty(
        name="VGG-19 Weights", subtype="FILE_PATH",
        description="Local VGG-19 weights file; empty: torchvision's checkpoint (downloaded once)")
    keep_job_files: BoolProperty(
        name="Keep Job Folders", default=False,
        description="Keep each job's folder (exported GLB, results, worker.log) in the temporary directory")
    check_result: StringProperty(name="Check Result", default="")

    def draw(self, context):
        layout = self.layout
        status = getattr(context.window_manager, "nst3d", None)
        self.draw_setup(layout.box(), status)
        layout.prop(self, "python_path")
        layout.prop(self, "device")
        layout.prop(self, "weights_path")
        layout.prop(self, "keep_job_files")
        if status is not None and status.check_running:
            row = layout.row()
            row.progress(factor=status.check_fraction, type="BAR", text=status.check_text)
            row.operator("nst3d.cancel_task", icon="CANCEL").kind = "check"
        else:
            layout.operator("nst3d.check_worker", icon="CHECKMARK")
        if self.check_result:
            box = layout.box()
            for line in self.check_result.splitlines():
                box.label(text=line, icon="ERROR" if line.startswith(("Problem", "Error")) else "NONE")


    def draw_setup(self, box, status) -> None:
        box.label(text="Worker Environment", icon="CONSOLE")
        box.prop(self, "setup_source")
        if self.setup_source == "wheels":
            box.prop(self, "setup_wheels")
        box.prop(self, "setup_base_python")
        box.prop(self, "setup_reuse")
        if status is not None and status.setup_running:
            row = box.row()
            row.progress(factor=status.setup_fraction, type="BAR", text=status.setup_text)
            row.operator("nst3d.cancel_task", icon="CANCEL").kind = "setup"
        else:
            box.operator("nst3d.setup", icon="IMPORT")
        if status is not None and (status.setup_error or status.setup_message):
            box.label(text=status.setup_error or status.setup_message,
                      icon="ERROR" if status.setup_error else "CHECKMARK")


class _Defaults:
    """Preference values when the add-on was registered without being enabled (scripts, tests)."""

    setup_source, setup_wheels, setup_base_python, setup_reuse = "cpu", "", "", False
    python_path = ""
    device = "auto"
    weights_path = ""
    keep_job_files = False
    check_result = ""


def get_preferences(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None and addon.preferences is not None else _Defaults()


CLASSES = (NST3D_Preferences,)
