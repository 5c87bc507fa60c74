"""The Blender side of a stylization job (bpy + standard library; never torch, never nst3d).

1. `start_job`: check the selection, export PRIVATE COPIES of the selected meshes to a job folder as GLB
   (each material renamed to a job key; meshes without UVs get a Smart UV Project into a new UV map on the
   copy), write job.json and launch the worker. The scene itself is not modified.
2. `StylizeJob.tick()` (main thread, on a timer): drain the worker's events, track progress.
3. `apply_result`: on success, load the stylized textures as NEW images, make NEW `_styled` materials,
   add the new UV maps, and assign them. The original materials and images stay in the file.

The add-on's operator and scripts/batch_stylize.py both drive jobs through this module.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from .worker_process import Event, WorkerError, WorkerProcess, explain_exit, find_interpreter

UV_MAP_NAME = "nst3d_UV"
STYLED_SUFFIX = "_styled"
SOURCE_KEY = "nst3d_source"  # custom property on styled materials/images: the original's name
ADDED_SLOT_KEY = "nst3d_added_slot"  # custom property on a mesh: the material slot Stylize added to it
KEY_PREFIX = "nst3d_"
JOB_VERSION = 1


def _release_typing_caches() -> None:
    """Work around a bpy 4.5 *module* shutdown hang: when something (here: typing's generic-alias cache,
    filled by torch and the glTF exporter) keeps `bpy` alive through interpreter teardown, bpy's sound
    thread is never stopped and its C++ static destructor blocks forever in pthread_cond_destroy.
    Clearing typing's caches at exit lets bpy shut down normally. Not needed inside Blender itself."""
    import typing

    for clear in getattr(typing, "_cleanups", ()):
        clear()


if not bpy.app.binary_path:  # the `bpy` module (pip install bpy), not the Blender executable
    import atexit

    atexit.register(_release_typing_caches)


class JobError(WorkerError):
    """Why a job could not start or finish, in one line (shown in the panel)."""


@dataclass
class Target:
    """One stylized texture: the material slots that will share it."""

    key: str                                # material name in the exported GLB ("nst3d_m0")
    source: str                             # original material name ("" for an empty slot)
    image: str                              # original base-colour image name ("" if untextured)
    uv_map: str                             # UV map the texture is laid out in
    styled_name: str                        # name for the new material
    slots: list[tuple[str, int]] = field(default_factory=list)  # (object name, slot index; == count: append)


@dataclass
class Unwrap:
    """A UV map computed on an object's private copy, to add to the real mesh on success."""

    object: str
    mesh: str
    loops: int
    uvs: array.array  # [loops * 2]


@dataclass
class Plan:
    """What was exported, and how to map the results back onto the scene."""

    folder: Path
    job_file: Path
    objects: list[str]
    targets: list[Target]
    unwraps: list[Unwrap]


# ----------------------------------------------------------------------------------------------------------
# Selection and options


def mesh_objects(objects) -> list[bpy.types.Object]:
    """The mesh objects among `objects` that have faces; raises JobError when there are none."""
    objects = list(objects)
    if not objects:
        raise JobError("nothing is selected: select one or more mesh objects")
    meshes = [ob for ob in objects if ob.type == "MESH" and len(ob.data.polygons) > 0]
    if not meshes:
        kinds = sorted({ob.type.lower() for ob in objects})
        raise JobError(f"no mesh with faces among the {len(objects)} selected object(s) "
                       f"({', '.join(kinds)}); select mesh objects")
    return meshes


def job_options(settings, prefs_device: str = "auto", prefs_weights: str = "") -> dict[str, Any]:
    """The job's "options" (nst3d.options.StyleOptions fields) from the panel settings; raises JobError."""
    styles, weights = [], []
    for item in settings.styles:
        path = bpy.path.abspath(item.path) if item.path else ""
        if not path:
            continue
        if not os.path.isfile(path):
            raise JobError(f"style image not found: {path}")
        styles.append(os.path.abspath(path))
        weights.append(float(item.weight))
    if not styles:
        raise JobError("no style image: add one under Style Images")
    if sum(weights) <= 0:
        raise JobError("the style image weights are all zero: give at least one a positive weight")
    options = {"styles": styles, "style_weights": weights if len(styles) > 1 else None,
               "loss": settings.loss, "strength": float(settings.strength), "steps": int(settings.steps),
               "size": int(settings.size), "views": int(settings.views),
               "preserve_color": settings.preserve_color, "seed": int(settings.seed), "device": prefs_device}
    if prefs_weights:
        weights_path = bpy.path.abspath(prefs_weights)
        if not os.path.isfile(weights_path):
            raise JobError(f"VGG-19 weights file not found: {weights_path}; fix it in the add-on preferences")
        options["weights"] = weights_path
    return options


# ----------------------------------------------------------------------------------------------------------
# Materials


def base_color_image_node(material) -> bpy.types.Node | None:
    """The Image Texture node (with an image) wired straight into a Principled BSDF's Base Color, if any."""
    if material is None or not material.use_nodes or material.node_tree is None:
        return None
    for node in material.node_tree.nodes:
        if node.type != "BSDF_PRINCIPLED":
            continue
        socket = node.inputs.get("Base Color")
        if socket is None or not socket.is_linked:
            continue
        source = socket.links[0].from_node
        while source.type == "REROUTE" and source.inputs[0].is_linked:
            source = source.inputs[0].links[0].from_node
        if source.type == "TEX_IMAGE" and source.image is not None:
            return source
    return None


def _principled(material) -> bpy.types.Node | None:
    if material is None or not material.use_nodes or material.node_tree is None:
        return None
    return next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)


def _base_color(material) -> tuple[float, float, float, float]:
    node = _principled(material)
    if node is not None and not node.inputs["Base Color"].is_linked:
        return tuple(node.inputs["Base Color"].default_value)
    if material is not None:
        return tuple(material.diffuse_color)
    return (0.8, 0.8, 0.8, 1.0)


def _node_uv_map(node) -> str:
    """The UV map an Image Texture node reads ("" = the mesh's active render map)."""
    vector = node.inputs.get("Vector")
    if vector is not None and vector.is_linked and vector.links[0].from_node.type == "UVMAP":
        return vector.links[0].from_node.uv_map
    return ""


def _render_uv_map(mesh) -> str:
    for layer in mesh.uv_layers:
        if layer.active_render:
            return layer.name
    return mesh.uv_layers[0].name if len(mesh.uv_layers) else ""


def export_material(target: Target, source) -> bpy.types.Material:
    """The temporary material exported for `target`: a copy of a textured original, else plain base colour."""
    if target.image and source is not None:
        material = source.copy()
    else:
        material = bpy.data.materials.new(target.key)
        material.use_nodes = True
        _principled(material).inputs["Base Color"].default_value = _base_color(source)
    material.name = target.key
    return material


# ----------------------------------------------------------------------------------------------------------
# Export


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
    """Export private copies of `objects` to folder/input.glb; the scene is left exactly as it was."""
    context = context or bpy.context
    view_layer = context.view_layer
    view_layer.update()  # world matrices of objects moved since the last depsgraph evaluation
    selection = {ob.name: ob.select_get() for ob in view_layer.objects}
    active = view_layer.objects.active.name if view_layer.objects.active else None
    collection = bpy.data.collections.new(f"{KEY_PREFIX}export")
    context.scene.collection.children.link(collection)
    made_objects, made_meshes, made_materials = [], [], []
    try:
        copies = {}
        for i, ob in enumerate(objects):
            mesh = ob.data.copy()
            made_meshes.append(mesh)
            copy = bpy.data.objects.new(f"{KEY_PREFIX}o{i}", mesh)
            made_objects.append(copy)
            copy.matrix_world = ob.matrix_world.copy()
            collection.objects.link(copy)
            copies[ob.name] = copy
        unwraps = _unwrap_copies(objects, copies, view_layer)
        unwrapped = {u.object for u in unwraps}
        for ob in objects:
            _keep_only_uv_map(copies[ob.name].data, object_uv_map(ob, unwrapped))
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
        for copy in made_objects:
            copy.select_set(True)
        view_layer.objects.active = made_objects[0]
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


def _unwrap_copies(objects, copies, view_layer) -> list[Unwrap]:
    """Smart UV Project each copy that has no UV map into a new one; the UVs to add on success."""
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


# ----------------------------------------------------------------------------------------------------------
# The job


def write_job_file(folder: Path, options: dict[str, Any], texture_size: int | None,
                   extra: dict[str, Any] | None = None) -> Path:
    """folder/job.json for the worker (format: nst3d.worker); `extra`: more job fields (style_map, shading)."""
    # keep_uv_layouts: the textures come back onto the objects' own UV maps, so the worker must not re-atlas.
    job = {"nst3d_job": JOB_VERSION, "kind": "mesh", "input": "input.glb", "output_dir": "out",
           "options": options, "texture_size": texture_size or None, "export_format": "glb",
           "keep_uv_layouts": True, **(extra or {})}
    path = folder / "job.json"
    path.write_text(json.dumps(job, indent=2), encoding="utf-8")
    return path


def exported_style_map(style_map: dict[str, list[str]], objects: list[str], targets: list[Target]
                       ) -> dict[str, list[str]]:
    """A style map by the scene's material or object names -> by the names they have in the exported GLB
    (nst3d_m<i>, nst3d_o<i>), which the worker matches; raises JobError for a name that is neither."""
    out: dict[str, list[str]] = {}
    for name, paths in style_map.items():
        keys = [t.key for t in targets if t.source == name]
        keys += [f"{KEY_PREFIX}o{i}" for i, object_name in enumerate(objects) if object_name == name]
        if not keys:
            known = sorted({t.source for t in targets if t.source} | set(objects))
            raise JobError(f"--style-map names '{name}', which is no material or object of the selection; "
                           f"known names: {', '.join(known)}")
        for key in keys:
            out.setdefault(key, []).extend(paths)
    return out


def prepare_job(objects, options: dict[str, Any], texture_size: int | None = None, context=None,
                folder: Path | None = None, extra: dict[str, Any] | None = None) -> Plan:
    """Export the selection and write the job file; the scene is unchanged. Raises JobError."""
    objects = mesh_objects(objects)
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="nst3d_job_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        targets, unwraps = export_job(objects, folder, context)
        if extra and extra.get("style_map"):
            extra = {**extra, "style_map": exported_style_map(extra["style_map"], [ob.name for ob in objects],
                                                              targets)}
        job_file = write_job_file(folder, options, texture_size, extra)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Plan(folder=folder, job_file=job_file, objects=[ob.name for ob in objects], targets=targets,
                unwraps=unwraps)


class StylizeJob:
    """A launched worker and what it has reported so far. Drive it with tick() on the main thread."""

    def __init__(self, plan: Plan, python: str):
        self.plan = plan
        self.python = python
        self.skipped = 0  # selected objects that are not meshes (for the final message)
        self.step = 0
        self.total = 0
        self.loss = 0.0
        self.stage = "starting"
        self.result: Event | None = None
        self.error = ""
        self.cancelled = False
        self.crashed = False  # ended without a reason of its own: keep worker.log for the user
        self.finished = False
        self.process = WorkerProcess(python, plan.job_file, plan.folder / "worker.log")

    def tick(self) -> list[Event]:
        """Drain events; once the worker has ended, settle `result` / `error` / `cancelled`."""
        events = self.process.drain()
        for event in events:
            self._handle(event)
        if not self.finished and (code := self.process.poll()) is not None:
            for event in self.process.drain():
                self._handle(event)
                events.append(event)
            self.finished = True
            self.process.close()
            if self.process.cancelling or self.cancelled:
                self.cancelled, self.result = True, None
                self.error = self.error or "cancelled; the scene is unchanged"
            elif self.result is None or code != 0:
                self.result = None
                if not self.error:
                    self.crashed = True
                    self.error = explain_exit(self.python, code, list(self.process.stderr_tail))
        return events

    def _handle(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.step, self.total = int(event.get("step", 0)), int(event.get("total", 0))
            self.loss = float(event.get("loss", 0.0))
            self.stage = str(event.get("stage", "stylizing"))
        elif kind == "start":
            self.stage = "loading"
        elif kind == "done":
            self.result = event
            self.stage = "done"
        elif kind == "error":
            self.error = str(event.get("message", "the worker reported an error"))
            self.crashed = event.get("kind") == "crash"
        elif kind == "cancelled":
            self.cancelled = True
            self.error = "cancelled; the scene is unchanged"

    def cancel(self) -> None:
        self.cancelled = True
        self.process.cancel()

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    def cleanup(self, keep: bool = False) -> None:
        """Stop the worker if needed; remove the job folder unless asked to keep it (it holds worker.log)."""
        self.process.close()
        if not keep:
            shutil.rmtree(self.plan.folder, ignore_errors=True)


def start_job(objects, options: dict[str, Any], texture_size: int | None = None, python_pref: str = "",
              context=None, extra: dict[str, Any] | None = None) -> StylizeJob:
    """Find the worker's Python, export the selection, launch the worker; JobError: scene unchanged."""
    try:
        python, _how = find_interpreter(bpy.path.abspath(python_pref) if python_pref else "")
    except WorkerError as exc:
        raise JobError(str(exc)) from None
    plan = prepare_job(objects, options, texture_size, context, extra=extra)
    try:
        return StylizeJob(plan, python)
    except WorkerError as exc:
        shutil.rmtree(plan.folder, ignore_errors=True)
        raise JobError(str(exc)) from None


# ----------------------------------------------------------------------------------------------------------
# Applying the result


def apply_result(plan: Plan, result: Event) -> dict[str, list[str]]:
    """Add the stylized textures as new images/materials and assign them; returns {object: [new materials]}.

    Everything is checked and loaded before the first assignment, so a failure leaves the scene unchanged.
    """
    files = {t["material"]: t for t in result.get("textures", [])}
    missing = [t.key for t in plan.targets if t.key not in files]
    if missing:
        raise JobError(f"the worker returned no texture for {len(missing)} of {len(plan.targets)} materials "
                       f"({', '.join(missing[:3])}); see {plan.folder / 'worker.log'}")
    for unwrap in plan.unwraps:
        ob = bpy.data.objects.get(unwrap.object)
        if ob is None or ob.type != "MESH" or len(ob.data.loops) != unwrap.loops:
            raise JobError(f"object {unwrap.object} was deleted or edited while it was being stylized; "
                           "run again")
    images = []
    try:
        for target in plan.targets:
            images.append(_load_image(target, files[target.key]["path"]))
    except Exception:
        for image in images:
            bpy.data.images.remove(image)
        raise
    for unwrap in plan.unwraps:
        mesh = bpy.data.objects[unwrap.object].data
        layer = mesh.uv_layers.new(name=UV_MAP_NAME)
        layer.data.foreach_set("uv", unwrap.uvs)
    assigned: dict[str, list[str]] = {}
    for target, image in zip(plan.targets, images, strict=True):
        material = styled_material(target, image)
        if (source := bpy.data.materials.get(target.source) if target.source else None) is not None:
            source.use_fake_user = True  # unassigned, it would be dropped when the file is saved
        for object_name, index in target.slots:
            ob = bpy.data.objects.get(object_name)
            if ob is None:
                continue
            if index < len(ob.material_slots):
                ob.material_slots[index].material = material
            else:  # it had no slot: Revert takes this one away again
                ob.data.materials.append(material)
                ob.data[ADDED_SLOT_KEY] = len(ob.data.materials) - 1
            assigned.setdefault(object_name, []).append(material.name)
    return assigned


def _load_image(target: Target, path: str) -> bpy.types.Image:
    try:
        image = bpy.data.images.load(path, check_existing=False)
    except RuntimeError as exc:
        raise JobError(f"cannot load the stylized texture {path}: {exc}") from None
    image.name = f"{target.image or target.styled_name.removesuffix(STYLED_SUFFIX)}{STYLED_SUFFIX}"
    image.colorspace_settings.name = "sRGB"
    image.pack()  # the job folder is temporary: keep the pixels in the .blend
    image[SOURCE_KEY] = target.image
    return image


def styled_material(target: Target, image) -> bpy.types.Material:
    """A NEW material for `target` showing `image`: a copy of the original with its base-colour image
    swapped, or (untextured originals) a copy with an Image Texture wired into Base Color."""
    source = bpy.data.materials.get(target.source) if target.source else None
    if source is not None:
        material = source.copy()
    else:
        material = bpy.data.materials.new(target.styled_name)
        material.use_nodes = True
    material.name = target.styled_name
    material[SOURCE_KEY] = target.source
    node = base_color_image_node(material) if target.image else None
    if node is not None:
        node.image = image
        return material
    principled = _principled(material)
    if principled is None:
        material.use_nodes = True
        tree = material.node_tree
        tree.nodes.clear()
        output = tree.nodes.new("ShaderNodeOutputMaterial")
        principled = tree.nodes.new("ShaderNodeBsdfPrincipled")
        principled.location = (-300, 0)
        tree.links.new(principled.outputs["BSDF"], output.inputs["Surface"])
    tree = material.node_tree
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.name = texture.label = f"{KEY_PREFIX}texture"
    texture.image = image
    texture.location = principled.location.x - 400, principled.location.y
    uv = tree.nodes.new("ShaderNodeUVMap")
    uv.uv_map = target.uv_map
    uv.location = texture.location.x - 250, texture.location.y - 100
    tree.links.new(uv.outputs["UV"], texture.inputs["Vector"])
    tree.links.new(texture.outputs["Color"], principled.inputs["Base Color"])
    return material


def revert_styled(objects) -> int:
    """Put the original materials back on `objects` where a `_styled` one is assigned; the count swapped."""
    count = 0
    for ob in objects:
        for slot in getattr(ob, "material_slots", []):
            material = slot.material
            if material is not None and SOURCE_KEY in material:
                source = material[SOURCE_KEY]
                slot.material = bpy.data.materials.get(source) if source else None
                count += 1
        added = ob.data.get(ADDED_SLOT_KEY) if ob.type == "MESH" else None
        if added is not None and added < len(ob.material_slots) and ob.material_slots[added].material is None:
            # The slot Stylize added to an object that had none. (Mesh.materials.pop leaves the object's slot
            # count behind in Blender 4.5; the operator keeps both in step.)
            ob.active_material_index = added
            with bpy.context.temp_override(object=ob, active_object=ob):
                bpy.ops.object.material_slot_remove()
            del ob.data[ADDED_SLOT_KEY]
    return count
