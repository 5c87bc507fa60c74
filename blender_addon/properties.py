"""The add-on's data: the panel's settings (Scene.nst3d, saved with the file) and the running job's status
(WindowManager.nst3d: not saved, not touched by undo)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .option_schema import PANEL_OPTIONS

# Display names of the choices (the identifiers and their order come from option_schema.py).
CHOICE_NAMES = {
    "gram": ("Gram (Gatys)", "Match feature correlations: classic painterly texture"),
    "adain": ("Mean/Std (AdaIN)", "Match feature means and deviations: softer, faster to converge"),
    "nnfm": ("Nearest Neighbour (ARF)", "Match each feature to its nearest style feature: crisper strokes"),
    "none": ("Off", "Take the colours of the style"),
    "luminance": ("Luminance", "Transfer only brightness patterns; keep the object's colours"),
    "histogram": ("Histogram", "Recolour the style to the object's palette first"),
}


def panel_property(spec: dict):
    """The bpy property for one entry of option_schema.PANEL_OPTIONS. A number whose default is None (the
    backend's own) is 0 in the panel. A float with "unit": "length" (a size in world units, e.g. a stroke scale)
    is shown in the scene's units and stored in Blender units, which the GLB export keeps as its world units."""
    common = {"name": spec["label"], "description": spec["help"][:1].upper() + spec["help"][1:]}
    if "choices" in spec:
        items = tuple((c, *CHOICE_NAMES.get(c, (c.title(), ""))) for c in spec["choices"])
        return EnumProperty(items=items, default=spec["default"], **common)
    bounds = {key: spec[name] for key, name in (("min", "minimum"), ("max", "maximum"), ("soft_max", "soft_maximum"))
              if name in spec}
    if spec["kind"] == "int":
        if spec["default"] is None:
            bounds["min"] = 0
        bounds = {key: int(value) for key, value in bounds.items()}
        return IntProperty(default=spec["default"] or 0, **bounds, **common)
    if spec.get("unit") == "length":
        common.update(subtype="DISTANCE", unit="LENGTH")
    if spec["default"] is None:
        bounds["min"] = 0.0
    return FloatProperty(default=spec["default"] or 0.0, **bounds, **common)


class NST3D_StyleImage(bpy.types.PropertyGroup):
    path: StringProperty(name="Image", subtype="FILE_PATH", description="Style image (a painting, a texture)")
    weight: FloatProperty(name="Weight", default=1.0, min=0.0, soft_max=10.0,
                          description="Share of this style in the blend")


def _style_map_names(self, context, edit_text):
    """The selected objects' names and their materials' names: what a style map entry can name."""
    names = set()
    for ob in context.selected_objects:
        if ob.type == "MESH":
            names.add((ob.name, "object"))
            names.update((slot.material.name, "material") for slot in ob.material_slots if slot.material)
    return sorted((name, kind) for name, kind in names if edit_text.lower() in name.lower())


class NST3D_StyleMapEntry(bpy.types.PropertyGroup):
    target: StringProperty(name="Material or Object", search=_style_map_names,
                           description="A material (or a whole object) of the selection that gets its own style")
    path: StringProperty(name="Image", subtype="FILE_PATH",
                         description="The style image for it (instead of the Style Images above)")


class NST3D_Settings(bpy.types.PropertyGroup):
    styles: CollectionProperty(type=NST3D_StyleImage, name="Style Images")
    style_index: IntProperty(name="Active Style", default=0)
    style_map: CollectionProperty(type=NST3D_StyleMapEntry, name="Per-Material Styles")
    style_map_index: IntProperty(name="Active Per-Material Style", default=0)
    live_preview: BoolProperty(name="Live Preview", default=True,
                               description="Show a render of one view every few steps while stylizing")
    texture_folder: StringProperty(
        name="Save Textures To", subtype="DIR_PATH",
        description="Also write the stylized textures into this folder, named as the nst3d command names them "
                    "(<file>_styled_<material>.png; a file of that name is replaced). Empty: only pack them "
                    "into the .blend")


for _name, _spec in PANEL_OPTIONS.items():
    NST3D_Settings.__annotations__[_name] = panel_property(_spec)


class NST3D_Status(bpy.types.PropertyGroup):
    running: BoolProperty(name="Running", default=False)
    stage: StringProperty(name="Stage", default="")
    step: IntProperty(name="Step", default=0)
    total: IntProperty(name="Total", default=0)
    loss: FloatProperty(name="Loss", default=0.0)
    message: StringProperty(name="Last Result", default="")
    error: StringProperty(name="Last Error", default="")
    preview_step: IntProperty(name="Preview Step", default=0, description="The step the live preview shows")
    # The preferences' background tasks (tasks.py): Check and Set up nst3d.
    check_running: BoolProperty(name="Checking", default=False)
    check_fraction: FloatProperty(name="Check Progress", default=0.0, min=0.0, max=1.0)
    check_text: StringProperty(name="Check Stage", default="")
    setup_running: BoolProperty(name="Setting Up", default=False)
    setup_fraction: FloatProperty(name="Set-up Progress", default=0.0, min=0.0, max=1.0)
    setup_text: StringProperty(name="Set-up Stage", default="")
    setup_message: StringProperty(name="Set-up Result", default="")
    setup_error: StringProperty(name="Set-up Error", default="")


CLASSES = (NST3D_StyleImage, NST3D_StyleMapEntry, NST3D_Settings, NST3D_Status)


def register_properties() -> None:
    bpy.types.Scene.nst3d = PointerProperty(type=NST3D_Settings)
    bpy.types.WindowManager.nst3d = PointerProperty(type=NST3D_Status)


def unregister_properties() -> None:
    del bpy.types.WindowManager.nst3d
    del bpy.types.Scene.nst3d
