"""Add-on preferences: the Python that runs the nst3d worker, the device, the weights, and a Check button."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

DEVICE_ITEMS = (
    ("auto", "Auto", "A CUDA GPU when the worker's torch sees one, else the CPU"),
    ("cpu", "CPU", "Always the CPU"),
    ("cuda", "CUDA GPU", "An NVIDIA GPU (fails if the worker's torch has no CUDA)"),
)


class NST3D_Preferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    python_path: StringProperty(
        name="Python", subtype="FILE_PATH",
        description="Python interpreter with nst3d installed (pip install 'nst3d[mesh]'). Empty: "
                    "$NST3D_PYTHON, Blender's own Python if it has nst3d, or the nst3d command on PATH")
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
        layout.prop(self, "python_path")
        layout.prop(self, "device")
        layout.prop(self, "weights_path")
        layout.prop(self, "keep_job_files")
        status = getattr(context.window_manager, "nst3d", None)
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


class _Defaults:
    """Preference values when the add-on was registered without being enabled (scripts, tests)."""

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
