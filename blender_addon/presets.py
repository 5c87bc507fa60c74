"""Presets of the panel's options, with Blender's preset system: a menu, + to save the current options (every
panel option of option_schema.py, so new ones are included by themselves), - to remove the chosen preset.
The shipped presets (presets/*.py: Preview, Final) are copied into the user's presets folder
(`<user scripts>/presets/nst3d`) when the add-on registers, unless the user already has one of that name."""

from __future__ import annotations

import shutil
from pathlib import Path

import bpy
from bl_operators.presets import AddPresetBase

from .option_schema import PANEL_OPTIONS

SUBDIR = "nst3d"
SHIPPED = Path(__file__).resolve().parent / "presets"


class NST3D_MT_presets(bpy.types.Menu):
    bl_label = "Presets"
    preset_subdir = SUBDIR
    preset_operator = "script.execute_preset"
    draw = bpy.types.Menu.draw_preset


class NST3D_OT_preset_add(AddPresetBase, bpy.types.Operator):
    """Save the panel's options as a preset (or remove the chosen one)"""

    bl_idname = "nst3d.preset_add"
    bl_label = "Add Style Preset"
    preset_menu = "NST3D_MT_presets"
    preset_subdir = SUBDIR
    preset_defines = ["settings = bpy.context.scene.nst3d"]
    preset_values = [f"settings.{name}" for name in PANEL_OPTIONS]


def user_preset_folder() -> Path:
    return Path(bpy.utils.user_resource("SCRIPTS", path=f"presets/{SUBDIR}", create=True))


def install_shipped_presets() -> list[Path]:
    """Copy the shipped presets the user does not have yet; the files copied."""
    folder = user_preset_folder()
    copied = []
    for preset in sorted(SHIPPED.glob("*.py")):
        target = folder / preset.name
        if not target.exists():
            shutil.copyfile(preset, target)
            copied.append(target)
    return copied


CLASSES = (NST3D_MT_presets, NST3D_OT_preset_add)
