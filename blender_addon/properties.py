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

# Mirrors nst3d.losses.LOSS_KINDS and nst3d.color.PRESERVE_MODES (tests check they stay in sync).
LOSS_ITEMS = (
    ("gram", "Gram (Gatys)", "Match feature correlations: classic painterly texture"),
    ("adain", "Mean/Std (AdaIN)", "Match feature means and deviations: softer, faster to converge"),
    ("nnfm", "Nearest Neighbour (ARF)", "Match each feature to its nearest style feature: crisper strokes"),
)
PRESERVE_ITEMS = (
    ("none", "Off", "Take the colours of the style"),
    ("luminance", "Luminance", "Transfer only brightness patterns; keep the object's colours"),
    ("histogram", "Histogram", "Recolour the style to the object's palette first"),
)


class NST3D_StyleImage(bpy.types.PropertyGroup):
    path: StringProperty(name="Image", subtype="FILE_PATH", description="Style image (a painting, a texture)")
    weight: FloatProperty(name="Weight", default=1.0, min=0.0, soft_max=10.0,
                          description="Share of this style in the blend")


class NST3D_Settings(bpy.types.PropertyGroup):
    styles: CollectionProperty(type=NST3D_StyleImage, name="Style Images")
    style_index: IntProperty(name="Active Style", default=0)
    loss: EnumProperty(name="Loss", items=LOSS_ITEMS, default="gram", description="Style loss")
    strength: FloatProperty(name="Strength", default=1.0, min=0.0, soft_max=10.0,
                            description="Style weight multiplier: higher moves further from the original")
    steps: IntProperty(name="Steps", default=300, min=1, soft_max=2000, description="Optimisation steps")
    size: IntProperty(name="Resolution", default=256, min=32, max=4096, subtype="PIXEL",
                      description="Render resolution of each view during optimisation")
    views: IntProperty(name="Views", default=4, min=1, max=64, description="Views rendered per step")
    texture_size: IntProperty(name="Texture Size", default=0, min=0, max=16384, subtype="PIXEL",
                              description="Size of the new textures (longer side, 8 or more); 0 keeps each "
                                          "texture's own size")
    preserve_color: EnumProperty(name="Preserve Colour", items=PRESERVE_ITEMS, default="none",
                                 description="Keep the object's own colours")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed (runs are repeatable)")


class NST3D_Status(bpy.types.PropertyGroup):
    running: BoolProperty(name="Running", default=False)
    stage: StringProperty(name="Stage", default="")
    step: IntProperty(name="Step", default=0)
    total: IntProperty(name="Total", default=0)
    loss: FloatProperty(name="Loss", default=0.0)
    message: StringProperty(name="Last Result", default="")
    error: StringProperty(name="Last Error", default="")


CLASSES = (NST3D_StyleImage, NST3D_Settings, NST3D_Status)


def register_properties() -> None:
    bpy.types.Scene.nst3d = PointerProperty(type=NST3D_Settings)
    bpy.types.WindowManager.nst3d = PointerProperty(type=NST3D_Status)


def unregister_properties() -> None:
    del bpy.types.WindowManager.nst3d
    del bpy.types.Scene.nst3d
