"""The sidebar panel in the 3D viewport (tab "Style")."""

from __future__ import annotations

import textwrap

import bpy

from . import live_preview
from .export import modifier_warnings
from .operators import active_job
from .option_schema import PANEL_OPTIONS
from .presets import NST3D_MT_presets


class NST3D_UL_styles(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.prop(item, "path", text="", emboss=False, icon="IMAGE_DATA")
        row.prop(item, "weight", text="")


class NST3D_UL_style_map(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.prop(item, "target", text="", icon="MATERIAL")
        row.prop(item, "path", text="", icon="IMAGE_DATA")


def _wrapped(layout, text: str, width_px: float, icon: str = "NONE") -> None:
    """Labels for `text`, wrapped to the panel's width (Blender labels do not wrap)."""
    chars = max(20, int(width_px / 7))
    for i, line in enumerate(textwrap.wrap(text, chars) or [""]):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


class NST3D_PT_style(bpy.types.Panel):
    bl_idname = "NST3D_PT_style"
    bl_label = "Neural Style Transfer"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Style"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.nst3d
        status = context.window_manager.nst3d
        running = active_job() is not None

        layout.label(text="Style Images")
        row = layout.row()
        row.template_list("NST3D_UL_styles", "", settings, "styles", settings, "style_index", rows=2)
        col = row.column(align=True)
        col.operator("nst3d.style_add", icon="ADD", text="")
        col.operator("nst3d.style_remove", icon="REMOVE", text="")

        layout.label(text="Per-Material Styles")
        row = layout.row()
        row.template_list("NST3D_UL_style_map", "", settings, "style_map", settings, "style_map_index", rows=1)
        col = row.column(align=True)
        col.operator("nst3d.style_map_add", icon="ADD", text="")
        col.operator("nst3d.style_map_remove", icon="REMOVE", text="")

        row = layout.row(align=True)
        row.enabled = not running
        row.menu("NST3D_MT_presets", text=NST3D_MT_presets.bl_label)
        row.operator("nst3d.preset_add", text="", icon="ADD")
        row.operator("nst3d.preset_add", text="", icon="REMOVE").remove_active = True
        col = layout.column(align=True)
        col.enabled = not running
        for name in PANEL_OPTIONS:
            col.prop(settings, name)
        col.prop(settings, "texture_folder")
        col.prop(settings, "live_preview")

        width = context.region.width if context.region else 300
        if running:
            fraction = status.step / status.total if status.total else 0.0
            text = (f"{status.stage}: step {status.step}/{status.total}, loss {status.loss:.4g}"
                    if status.step else f"{status.stage}...")
            layout.progress(factor=fraction, type="BAR", text=text)
            if status.preview_step and (image := live_preview.current()) is not None:
                box = layout.box()
                box.template_icon(icon_value=image.icon_id, scale=8.0)
                box.label(text=f"preview at step {status.preview_step}")
            layout.operator("nst3d.cancel", icon="CANCEL", text="Cancel (Esc)")
        else:
            layout.operator("nst3d.stylize_selected", icon="BRUSH_DATA")
            styled = (ob.active_material for ob in context.selected_objects)
            if any(m is not None and "nst3d_source" in m for m in styled):
                layout.operator("nst3d.revert_styled", icon="LOOP_BACK")
            for warning in modifier_warnings(context.selected_objects):
                _wrapped(layout.box(), warning, width, icon="ERROR")
        if status.error:
            box = layout.box()
            _wrapped(box, status.error, width, icon="ERROR")
        elif status.message:
            _wrapped(layout.box(), status.message, width, icon="INFO")


CLASSES = (NST3D_UL_styles, NST3D_UL_style_map, NST3D_PT_style)
