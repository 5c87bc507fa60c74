"""Exporting a job's input: PRIVATE COPIES of the selected meshes, with their modifiers applied (what the artist
sees), as one GLB; the scene is left exactly as it was.

Each object is copied with its modifiers and a copy of its base mesh; a mesh without UVs gets a Smart UV Project
into a new UV map on that base copy (so the map goes through the modifiers, and the same UVs are added to the
real mesh on success). The evaluated copy (Mirror, Array, Subdivision... applied) is what the worker renders.
The stylized textures go back onto the base mesh's UV maps: that holds while the modifiers carry the UV map
through; `uv_changing_modifiers` names those that regenerate or drop it.
"""

from __future__ import annotations

import array
from pathlib import Path

import bpy

from .materials import (
    KEY_PREFIX,
    STYLED_SUFFIX,
    UV_MAP_NAME,
    JobError,
    Target,
    Unwrap,
    _node_uv_map,
    _render_uv_map,
    base_color_image_node,
    export_material,
)

#: Modifier types that regenerate, replace or may drop the UVs: the texture laid out in the evaluated mesh's UVs
#: would then not fit the base mesh's UV map.
UV_CHANGING_MODIFIERS = {"UV_PROJECT": "UV Project", "UV_WARP": "UV Warp", "REMESH": "Remesh",
                         "NODES": "Geometry Nodes", "DECIMATE": "Decimate"}
WHAT_TO_DO = "apply it, or stylize an evaluated copy as a new object (Object > Convert > Mesh, Keep Original)"


def uv_changing_modifiers(ob) -> list[str]:
    """Names of `ob`'s enabled viewport modifiers that change the UVs (see UV_CHANGING_MODIFIERS)."""
    return [m.name for m in getattr(ob, "modifiers", ()) if m.type in UV_CHANGING_MODIFIERS and m.show_viewport]


def modifier_warnings(objects) -> list[str]:
    """One line per object whose modifiers change its UVs (for the panel)."""
    lines = []
    for ob in objects:
        if ob.type == "MESH" and (names := uv_changing_modifiers(ob)):
            lines.append(f"{ob.name}: modifier {', '.join(names)} changes the UVs, so the texture will not fit "
                         f"the base mesh; {WHAT_TO_DO}")
    return lines


def object_uv_map(ob, unwrapped: set[str]) -> str:
    """The one UV map an object's textures are laid out in: the new one for unwrapped objects, else the
    map its first textured material reads (the active render map unless a UV Map node says otherwise)."""
    if ob.name in unwrapped:
        return UV_MAP_NAME
    for slot in ob.material_slots:
        node = base_color_image_node(slot.material)
        if node is not None and (name := _node_uv_map(node)) and name in ob.data.uv_layers:
            return name
    return _render_uv_map(ob.data)


def plan_targets(objects: list[bpy.types.Object], unwrapped: set[str]) -> list[Target]:
    """Group the objects' material slots into textures.

    A textured material on UVs the object already had keeps one shared texture (as in the original); an
    untextured material or an empty slot gets a texture per mesh and slot (so two objects with the same
    plain colour each get their own texture in their own UV layout).
    """
    targets: dict[tuple, Target] = {}
    for ob in objects:
        uv_map = object_uv_map(ob, unwrapped)
        slots = list(ob.material_slots) or [None]
        for index, slot in enumerate(slots):
            material = slot.material if slot is not None else None
            node = base_color_image_node(material)
            textured = node is not None and ob.name not in unwrapped
            key = ("material", material.name, uv_map) if textured else ("mesh", ob.data.name, index)
            if key not in targets:
                stem = material.name if textured else f"{ob.name}_{material.name if material else 'Material'}"
                targets[key] = Target(key=f"{KEY_PREFIX}m{len(targets)}",
                                      source=material.name if material else "",
                                      image=node.image.name if textured else "", uv_map=uv_map,
                                      styled_name=f"{stem}{STYLED_SUFFIX}")
            targets[key].slots.append((ob.name, index))
    return list(targets.values())


def export_job(objects: list[bpy.types.Object], folder: Path,
               context=None) -> tuple[list[Target], list[Unwrap]]:
    """Export evaluated private copies of `objects` to folder/input.glb; the scene is left exactly as it was.
    Raises JobError when a modifier drops the UV map the textures are laid out in."""
    context = context or bpy.context
    view_layer = context.view_layer
    view_layer.update()  # world matrices of objects moved since the last depsgraph evaluation
    selection = {ob.name: ob.select_get() for ob in view_layer.objects}
    active = view_layer.objects.active.name if view_layer.objects.active else None
    collection = bpy.data.collections.new(f"{KEY_PREFIX}export")
    context.scene.collection.children.link(collection)
    made_objects, made_meshes, made_materials = [], [], []
    try:
        bases = {}
        for i, ob in enumerate(objects):
            base = ob.copy()  # same modifiers, on a private copy of the base mesh
            base.data = ob.data.copy()
            base.name = f"{KEY_PREFIX}b{i}"
            made_objects.append(base)
            made_meshes.append(base.data)
            collection.objects.link(base)
            bases[ob.name] = base
        unwraps = _unwrap_copies(objects, bases, view_layer)
        unwrapped = {u.object for u in unwraps}
        copies = _evaluated_copies(objects, bases, unwrapped, context, collection, made_objects, made_meshes)
        targets = plan_targets(objects, unwrapped)
        for target in targets:
            source = bpy.data.materials.get(target.source) if target.source else None
            material = export_material(target, source)
            made_materials.append(material)
            for object_name, index in target.slots:
                copy = copies[object_name]
                if index < len(copy.material_slots):
                    copy.material_slots[index].link = "DATA"
                    copy.data.materials[index] = material
                else:
                    copy.data.materials.append(material)
        for ob in view_layer.objects:
            ob.select_set(False)
        for copy in copies.values():
            copy.select_set(True)
        view_layer.objects.active = next(iter(copies.values()))
        _export_glb(folder / "input.glb")
        return targets, unwraps
    finally:
        for ob in made_objects:
            bpy.data.objects.remove(ob)
        for mesh in made_meshes:
            bpy.data.meshes.remove(mesh)
        for material in made_materials:
            bpy.data.materials.remove(material)
        bpy.data.collections.remove(collection)
        for name, was_selected in selection.items():
            bpy.data.objects[name].select_set(was_selected)
        view_layer.objects.active = bpy.data.objects.get(active) if active else None


def _evaluated_copies(objects, bases, unwrapped, context, collection, made_objects, made_meshes) -> dict:
    """{object name: a modifier-free object holding the evaluated mesh of its base copy, with one UV map}."""
    context.view_layer.update()
    depsgraph = context.evaluated_depsgraph_get()
    copies = {}
    for i, ob in enumerate(objects):
        evaluated = bases[ob.name].evaluated_get(depsgraph)
        mesh = bpy.data.meshes.new_from_object(evaluated, preserve_all_data_layers=True, depsgraph=depsgraph)
        made_meshes.append(mesh)
        uv_map = object_uv_map(ob, unwrapped)
        if uv_map and uv_map not in mesh.uv_layers:
            names = ", ".join(m.name for m in ob.modifiers if m.show_viewport) or "a modifier"
            raise JobError(f"the modifiers of {ob.name} ({names}) drop its UV map '{uv_map}': {WHAT_TO_DO}")
        _keep_only_uv_map(mesh, uv_map)
        copy = bpy.data.objects.new(f"{KEY_PREFIX}o{i}", mesh)
        made_objects.append(copy)
        copy.matrix_world = ob.matrix_world.copy()
        collection.objects.link(copy)
        copies[ob.name] = copy
    return copies


def _unwrap_copies(objects, copies, view_layer) -> list[Unwrap]:
    """Smart UV Project each base copy that has no UV map into a new one; the UVs to add on success."""
    unwraps = []
    for ob in objects:
        copy = copies[ob.name]
        if len(copy.data.uv_layers):
            continue
        copy.data.uv_layers.new(name=UV_MAP_NAME)
        for other in view_layer.objects:
            other.select_set(False)
        copy.select_set(True)
        view_layer.objects.active = copy
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(angle_limit=1.15192, island_margin=0.02, area_weight=0.0,
                                     correct_aspect=True, scale_to_bounds=False)
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
        uvs = array.array("f", [0.0]) * (2 * len(copy.data.loops))
        copy.data.uv_layers[UV_MAP_NAME].data.foreach_get("uv", uvs)
        unwraps.append(Unwrap(object=ob.name, mesh=ob.data.name, loops=len(copy.data.loops), uvs=uvs))
    return unwraps


def _keep_only_uv_map(mesh, name: str) -> None:
    """Leave one UV map on an export copy, so that it is the GLB's TEXCOORD_0."""
    for layer in list(mesh.uv_layers):
        if layer.name != name:
            mesh.uv_layers.remove(layer)
    if len(mesh.uv_layers):
        mesh.uv_layers.active = mesh.uv_layers[0]
        mesh.uv_layers[0].active_render = True


def _export_glb(path: Path) -> None:
    result = bpy.ops.export_scene.gltf(
        filepath=str(path), export_format="GLB", use_selection=True, export_apply=False,
        export_materials="EXPORT", export_image_format="AUTO", export_texcoords=True, export_normals=True,
        export_animations=False, export_skins=False, export_morph=False, export_cameras=False,
        export_lights=False, export_extras=False, export_yup=True)
    if "FINISHED" not in result or not path.is_file():
        raise JobError(f"the glTF export of the selection failed ({result})")
