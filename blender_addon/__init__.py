"""nst3d for Blender: stylize the selected objects' textures with neural style transfer.

The heavy work runs in the nst3d worker (a separate Python with torch); this add-on only uses bpy and the
standard library. Works as a Blender 4.2+ extension (blender_manifest.toml) and as a classic add-on folder.
"""

bl_info = {  # read only when installed as a classic add-on; extensions use blender_manifest.toml
    "name": "nst3d Style Transfer",
    "author": "nst3d contributors",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "3D Viewport > Sidebar > Style",
    "description": "Neural style transfer for the textures of the selected objects",
    "category": "Material",
}

import bpy  # noqa: E402

from . import live_preview, operators, panel, preferences, prefs_operators, presets, properties, tasks  # noqa: E402

CLASSES = (*properties.CLASSES, *preferences.CLASSES, *operators.CLASSES, *prefs_operators.CLASSES,
           *presets.CLASSES, *panel.CLASSES)


@bpy.app.handlers.persistent
def _cancel_on_load(*_args) -> None:
    """A new file is being loaded: the running job's objects are going away, so stop it."""
    job = operators.ACTIVE.pop("job", None)
    if job is not None:
        job.cancel()
        job.cleanup()


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register_properties()
    bpy.app.handlers.load_pre.append(_cancel_on_load)
    try:
        presets.install_shipped_presets()
    except OSError as exc:  # a read-only user folder: the add-on works, without the shipped presets
        print(f"nst3d: the Preview and Final presets could not be installed: {exc}")


def unregister() -> None:
    if _cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_load)
    _cancel_on_load()
    tasks.cancel_all()
    live_preview.release()
    properties.unregister_properties()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
