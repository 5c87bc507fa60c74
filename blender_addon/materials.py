"""Materials: reading a material's base colour for the job's export, and applying the stylized textures to the
scene afterwards as NEW materials and images (the originals stay; Revert restores them).

Target, Unwrap and Plan describe what a job exported (nst3d's job folder) and how results map back.
"""

from __future__ import annotations

import array
import re
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .worker_process import Event, WorkerError

UV_MAP_NAME = "nst3d_UV"
STYLED_SUFFIX = "_styled"
SOURCE_KEY = "nst3d_source"  # custom property on styled materials/images: the original's name
ADDED_SLOT_KEY = "nst3d_added_slot"  # custom property on a mesh: the material slot Stylize added to it
KEY_PREFIX = "nst3d_"
#: Blender 5.0 materials always use nodes; reading or setting Material.use_nodes there is deprecated.
ALWAYS_NODES = bpy.app.version >= (5, 0, 0)


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
# Materials


def node_tree(material) -> bpy.types.NodeTree | None:
    """The material's shader nodes when it renders with them (always in Blender 5), else None."""
    if material is None or material.node_tree is None or not (ALWAYS_NODES or material.use_nodes):
        return None
    return material.node_tree


def use_nodes(material) -> None:
    """Make `material` render with its node tree (Blender 4; nothing to do in 5)."""
    if not ALWAYS_NODES:
        material.use_nodes = True


def base_color_image_node(material) -> bpy.types.Node | None:
    """The Image Texture node (with an image) wired straight into a Principled BSDF's Base Color, if any."""
    if (tree := node_tree(material)) is None:
        return None
    for node in tree.nodes:
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
    if (tree := node_tree(material)) is None:
        return None
    return next((n for n in tree.nodes if n.type == "BSDF_PRINCIPLED"), None)


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
        use_nodes(material)
        _principled(material).inputs["Base Color"].default_value = _base_color(source)
    material.name = target.key
    return material


# ----------------------------------------------------------------------------------------------------------
# Applying the result


def apply_result(plan: Plan, result: Event, save_to: str = "") -> dict[str, list[str]]:
    """Add the stylized textures as new images/materials and assign them; returns {object: [new materials]}.
    With `save_to` (a folder), the textures are also written there, as the CLI names them (texture_file_name).

    Everything is checked, loaded and saved before the first assignment, so a failure leaves the scene unchanged.
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
        if save_to:
            save_textures(plan.targets, images, Path(save_to), blend_stem())
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


def safe_name(name: str) -> str:
    """nst3d's file-name rule (nst3d.backends.mesh.export.safe_name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "texture"


def blend_stem() -> str:
    """The name the CLI would give the input: the .blend file's stem ("untitled" before it is saved)."""
    return Path(bpy.data.filepath).stem if bpy.data.filepath else "untitled"


def texture_file_name(stem: str, target: Target, suffix: str) -> str:
    """<stem>_styled_<material><suffix>, as `nst3d mesh` names a texture of <stem>.glb (its output is
    <stem>_styled.glb, each texture <output stem>_<material>.png); an untextured slot is <object>_<material>."""
    return f"{stem}{STYLED_SUFFIX}_{safe_name(target.styled_name.removesuffix(STYLED_SUFFIX))}{suffix}"


def save_textures(targets: list[Target], images: list, folder: Path, stem: str) -> list[Path]:
    """Write each packed stylized image's own bytes into `folder` (made if needed; each file written under a
    temporary name, then renamed). On failure, the files written so far are removed and JobError says why."""
    written, tmp = [], None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for target, image in zip(targets, images, strict=True):
            path = folder / texture_file_name(stem, target, Path(image.filepath_raw).suffix or ".png")
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(image.packed_file.data)
            tmp.replace(path)
            written.append(path)
    except OSError as exc:
        for path in [*written, *([tmp] if tmp else [])]:
            path.unlink(missing_ok=True)
        raise JobError(f"cannot save the textures in {folder}: {exc.strerror or exc}; choose another folder") \
            from None
    return written


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
        use_nodes(material)
    material.name = target.styled_name
    material[SOURCE_KEY] = target.source
    node = base_color_image_node(material) if target.image else None
    if node is not None:
        node.image = image
        return material
    principled = _principled(material)
    if principled is None:
        use_nodes(material)
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
