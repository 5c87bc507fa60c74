"""The live preview: the worker's latest "preview" PNG (one held-out view, every few steps) as a UI image.
A `bpy.utils.previews` collection: not saved in the .blend and not touched by undo, unlike an Image datablock."""

from __future__ import annotations

import bpy
import bpy.utils.previews

#: Shown in the panel: about this many previews over a run.
PREVIEWS_PER_RUN = 12

_STATE: dict = {}  # "collection": the ImagePreviewCollection, "name": the key of the image shown


def interval(steps: int) -> int:
    """Steps between two previews for a run of `steps`."""
    return max(1, round(steps / PREVIEWS_PER_RUN))


def show(path: str, step: int):
    """Load the PNG at `path` as the image to show (its pixels are read now: the job folder that holds the
    file goes away when the job ends); the ImagePreview."""
    collection = _STATE.get("collection")
    if collection is None:
        collection = _STATE["collection"] = bpy.utils.previews.new()
    collection.clear()
    name = f"step{step}"
    image = collection.load(name, path, "IMAGE")
    if tuple(image.image_size) == (0, 0):  # reading the size loads the pixels
        collection.clear()
        return None
    _STATE["name"] = name
    return image


def current():
    """The ImagePreview to show, or None."""
    collection, name = _STATE.get("collection"), _STATE.get("name")
    return collection.get(name) if collection is not None and name else None


def clear() -> None:
    _STATE.pop("name", None)
    if (collection := _STATE.get("collection")) is not None:
        collection.clear()


def release() -> None:
    """Free the collection (the add-on is being disabled)."""
    _STATE.pop("name", None)
    if (collection := _STATE.pop("collection", None)) is not None:
        bpy.utils.previews.remove(collection)
