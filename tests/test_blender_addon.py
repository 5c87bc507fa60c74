"""The Blender add-on against the real `bpy` module (4.5 LTS) and the real nst3d worker.

Background mode has no event loop, so the modal operator's timer cannot fire here: the end-to-end tests call
the operator's blocking `execute` path (or the same begin/update/finish functions the modal timer calls).
Undo does work in background mode with the bpy module, and is exercised for real.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

# Blender's user folders (presets, extensions) in a private temporary folder, never the tester's own: read when
# bpy starts, so set before the import.
if "BLENDER_USER_RESOURCES" not in os.environ:
    os.environ["BLENDER_USER_RESOURCES"] = tempfile.mkdtemp(prefix="nst3d-blender-user-")
    atexit.register(shutil.rmtree, os.environ["BLENDER_USER_RESOURCES"], True)
bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402 - only exists once bpy is importable

REPO = Path(__file__).resolve().parents[1]
ADDON = "blender_addon"
pytestmark = pytest.mark.blender


# ----------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    """The add-on enabled from the repository as a classic add-on (the extension path is tested below)."""
    os.environ.setdefault("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module = addon_utils.enable(ADDON, default_set=True, handle_error=_raise)
    assert module is not None
    yield module
    addon_utils.disable(ADDON, default_set=True, handle_error=_raise)


def _raise(exc):
    raise exc


@pytest.fixture
def prefs(addon):
    """The add-on preferences, reset after each test."""
    preferences = bpy.context.preferences.addons[ADDON].preferences
    yield preferences
    preferences.python_path = ""
    preferences.weights_path = ""
    preferences.device = "auto"
    preferences.keep_job_files = False
    preferences.check_result = ""
    preferences.setup_source, preferences.setup_wheels = "cpu", ""
    preferences.setup_base_python, preferences.setup_reuse = "", False
    status = bpy.context.window_manager.nst3d
    status.setup_error = status.setup_message = ""
    from blender_addon import tasks

    tasks.cancel_all()


@pytest.fixture
def empty_file(addon):
    """A fresh empty file (the add-on stays enabled) and a cleared job status."""
    bpy.ops.wm.read_homefile(use_empty=True)
    status = bpy.context.window_manager.nst3d
    status.error = status.message = ""
    status.running = False
    yield
    from blender_addon import operators

    job = operators.ACTIVE.pop("job", None)
    if job is not None:
        job.cancel()
        job.cleanup()


@pytest.fixture(scope="module")
def style_image(tmp_path_factory) -> Path:
    """A small, strongly patterned style image (blue/yellow diagonal stripes)."""
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    stripes = ((x + y) // 6) % 2 == 0
    rgb = np.where(stripes[..., None], [20, 40, 200], [240, 220, 30]).astype(np.uint8)
    path = tmp_path_factory.mktemp("style") / "stripes.png"
    Image.fromarray(rgb).save(path)
    return path


def use_nodes(material) -> None:
    if bpy.app.version < (5, 0, 0):  # always on, and deprecated, in Blender 5
        material.use_nodes = True


@pytest.fixture(autouse=True)
def no_deprecated_api_in_the_addon():
    """Every test fails when the add-on's own code touches an API its Blender version deprecates."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        yield
    ours = [f"{Path(w.filename).name}:{w.lineno}: {w.message}" for w in caught
            if issubclass(w.category, DeprecationWarning) and str(REPO / ADDON) in w.filename]
    assert not ours, ours


def build_scene():
    """A textured cube (own UVs, a packed checker image) and an untextured red icosphere without UVs."""
    import bmesh

    scene = bpy.context.scene
    mesh = bpy.data.meshes.new("Box")
    bm = bmesh.new()
    uv = bm.loops.layers.uv.new("UVMap")
    bmesh.ops.create_cube(bm, size=2.0)
    for face in bm.faces:  # each face shows the whole texture
        for loop, corner in zip(face.loops, ((0, 0), (1, 0), (1, 1), (0, 1)), strict=True):
            loop[uv].uv = corner
    bm.to_mesh(mesh)
    bm.free()
    cube = bpy.data.objects.new("Textured", mesh)
    scene.collection.objects.link(cube)
    cube.location = (-1.5, 0.0, 0.0)
    image = bpy.data.images.new("Checker", 32, 32)
    y, x = np.mgrid[0:32, 0:32]
    value = np.where(((x // 8) + (y // 8)) % 2 == 1, 0.9, 0.25)
    pixels = np.stack([value, value * 0.6, np.full_like(value, 0.3), np.ones_like(value)], axis=-1)
    image.pixels.foreach_set(pixels.astype(np.float32).ravel())
    image.pack()
    material = bpy.data.materials.new("Painted")
    use_nodes(material)
    tree = material.node_tree
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.image = image
    tree.links.new(texture.outputs["Color"], tree.nodes["Principled BSDF"].inputs["Base Color"])
    mesh.materials.append(material)

    ball_mesh = bpy.data.meshes.new("Ball")
    bm = bmesh.new()
    bmesh.ops.create_icosphere(bm, subdivisions=2, radius=1.0)
    bm.to_mesh(ball_mesh)
    bm.free()
    ball = bpy.data.objects.new("Plain", ball_mesh)
    scene.collection.objects.link(ball)
    ball.location = (1.5, 0.0, 0.0)
    red = bpy.data.materials.new("Red")
    use_nodes(red)
    red.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.8, 0.1, 0.1, 1.0)
    ball_mesh.materials.append(red)
    for ob in (cube, ball):
        ob.select_set(True)
    bpy.context.view_layer.objects.active = cube
    return cube, ball


def fingerprint() -> dict:
    """Everything a failed job must leave as it was."""
    def slots(ob):
        return tuple(s.material.name if s.material else "" for s in ob.material_slots)

    return {
        "objects": sorted((ob.name, ob.type, slots(ob), tuple(layer.name for layer in ob.data.uv_layers)
                           if ob.type == "MESH" else ()) for ob in bpy.data.objects),
        "materials": sorted(m.name for m in bpy.data.materials),
        "images": sorted(i.name for i in bpy.data.images),
        "meshes": sorted(m.name for m in bpy.data.meshes),
        "collections": sorted(c.name for c in bpy.data.collections),
        "selected": sorted(ob.name for ob in bpy.context.selected_objects),
    }


def set_style(settings, style: Path, steps: int = 3) -> None:
    settings.styles.clear()
    item = settings.styles.add()
    item.path = str(style)
    settings.steps, settings.size, settings.views, settings.texture_size = steps, 32, 1, 32


def pixels(image) -> np.ndarray:
    data = np.empty(len(image.pixels), dtype=np.float32)
    image.pixels.foreach_get(data)
    return data.reshape(image.size[1], image.size[0], 4)


# ----------------------------------------------------------------------------------------------------------
# Registration


def test_register_unregister_cleanly(addon):
    assert hasattr(bpy.types, "NST3D_PT_style")
    assert bpy.types.NST3D_PT_style.bl_category == "Style"
    assert bpy.ops.nst3d.stylize_selected.get_rna_type().name == "Stylize Selected"
    assert hasattr(bpy.types.Scene, "nst3d") and hasattr(bpy.types.WindowManager, "nst3d")
    assert bpy.context.preferences.addons[ADDON].preferences.device == "auto"

    addon_utils.disable(ADDON, default_set=True, handle_error=_raise)
    try:
        assert not hasattr(bpy.types, "NST3D_PT_style")
        assert not hasattr(bpy.types, "NST3D_OT_stylize_selected")
        assert not hasattr(bpy.types.Scene, "nst3d") and not hasattr(bpy.types.WindowManager, "nst3d")
        assert ADDON not in bpy.context.preferences.addons
        from blender_addon import _cancel_on_load

        assert _cancel_on_load not in bpy.app.handlers.load_pre
    finally:
        assert addon_utils.enable(ADDON, default_set=True, handle_error=_raise) is not None
    assert hasattr(bpy.types, "NST3D_PT_style") and hasattr(bpy.types.Scene, "nst3d")


def test_panel_properties_agree_with_the_schema(addon):
    """The panel's properties, as Blender registered them, have the schema's defaults, choices and bounds (the
    mesh backend's defaults where the schema says "the backend's"); the device menu has the schema's devices."""
    from blender_addon.preferences import DEVICE_ITEMS
    from nst3d.schema import DEFAULTS, DEVICES, MeshOptions, StyleOptions, default_of, specs

    rna = bpy.types.Scene.bl_rna.properties["nst3d"].fixed_type.properties
    panel = [(name, spec, cls) for cls in (StyleOptions, MeshOptions) for name, spec in specs(cls).items()
             if spec.panel]
    assert len(panel) >= 8
    for name, spec, cls in panel:
        prop = rna[name]
        default = default_of(cls, name)
        default = getattr(DEFAULTS["mesh"], name, None) if default is None else default
        if spec.choices:
            assert tuple(item.identifier for item in prop.enum_items) == spec.choices, name
            assert prop.default == default, name
            continue
        assert prop.default == (0 if default is None else default), name
        low = (1 if spec.kind is int else 0.0) if spec.positive else spec.minimum  # Blender has no "> 0"
        assert prop.hard_min == (0 if default is None else low if low is not None else prop.hard_min), name
        if spec.maximum is not None:
            assert prop.hard_max == spec.maximum, name
        if spec.soft_maximum is not None:
            assert prop.soft_max == spec.soft_maximum, name
    assert tuple(item[0] for item in DEVICE_ITEMS) == DEVICES


def test_a_length_option_is_shown_in_scene_units(addon):
    """An option the schema marks as a length (a stroke scale in world units) uses the scene's length unit."""
    from blender_addon.properties import panel_property

    spec = {"label": "Stroke Scale", "help": "stroke size in world units", "kind": "float", "default": 0.1,
            "group": "options", "minimum": 0.0, "unit": "length"}

    class Probe(bpy.types.PropertyGroup):
        __annotations__ = {"value": panel_property(spec)}

    bpy.utils.register_class(Probe)
    try:
        prop = Probe.bl_rna.properties["value"]
        assert (prop.subtype, prop.unit, prop.default) == ("DISTANCE", "LENGTH", pytest.approx(0.1))
    finally:
        bpy.utils.unregister_class(Probe)


def test_addon_never_imports_torch_or_nst3d():
    """Blender's side is bpy + stdlib: no module of the add-on imports torch, numpy or nst3d."""
    import ast

    for path in (REPO / ADDON).glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                  and node.level == 0]
        heavy = [n for n in names if n.split(".")[0] in ("torch", "numpy", "nst3d", "trimesh")]
        assert not heavy, f"{path.name} imports {heavy}"


def test_style_list_operators(empty_file, style_image):
    settings = bpy.context.scene.nst3d
    bpy.ops.nst3d.style_add(filepath=str(style_image))
    bpy.ops.nst3d.style_add(filepath=str(style_image))
    assert [s.path for s in settings.styles] == [str(style_image)] * 2 and settings.style_index == 1
    bpy.ops.nst3d.style_remove()
    assert len(settings.styles) == 1 and settings.style_index == 0
    for bad in (style_image.parent / "missing.png", style_image.parent):  # found when added, not at Stylize
        with pytest.raises(RuntimeError, match="not an image file"):
            bpy.ops.nst3d.style_add(filepath=str(bad))
    assert len(settings.styles) == 1


def _preset_values(path: Path) -> dict:
    """The settings a preset file sets: {name: value}."""
    import ast

    values = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            values[node.targets[0].attr] = ast.literal_eval(node.value)
    return values


def test_presets_shipped_applied_saved_and_removed(empty_file):
    """Preview and Final are installed into the user's presets folder; choosing one sets the panel; + saves every
    panel option as a new preset, - removes the chosen one."""
    from blender_addon.option_schema import PANEL_OPTIONS
    from blender_addon.presets import user_preset_folder

    folder = user_preset_folder()
    assert str(folder).startswith(os.environ["BLENDER_USER_RESOURCES"])
    assert {"Preview.py", "Final.py"} <= {p.name for p in folder.iterdir()}
    preview, final = _preset_values(folder / "Preview.py"), _preset_values(folder / "Final.py")
    assert preview["steps"] < final["steps"] and preview["size"] < final["size"]  # small and fast
    settings = bpy.context.scene.nst3d
    for name, values in (("Preview", preview), ("Final", final)):
        bpy.ops.script.execute_preset(filepath=str(folder / f"{name}.py"), menu_idname="NST3D_MT_presets")
        assert {key: getattr(settings, key) for key in values} == values
        assert bpy.types.NST3D_MT_presets.bl_label == name

    settings.steps, settings.loss, settings.strength = 42, "adain", 3.5
    assert bpy.ops.nst3d.preset_add(name="Mine") == {"FINISHED"}
    mine = _preset_values(folder / "Mine.py")
    assert mine.keys() == PANEL_OPTIONS.keys() and (mine["steps"], mine["loss"]) == (42, "adain")
    bpy.ops.script.execute_preset(filepath=str(folder / "Final.py"), menu_idname="NST3D_MT_presets")
    assert settings.steps == final["steps"]
    bpy.ops.script.execute_preset(filepath=str(folder / "Mine.py"), menu_idname="NST3D_MT_presets")
    assert (settings.steps, settings.loss, settings.strength) == (42, "adain", 3.5)
    assert bpy.ops.nst3d.preset_add(remove_active=True) == {"FINISHED"}
    assert not (folder / "Mine.py").exists() and (folder / "Final.py").exists()


def test_per_material_styles_from_the_panel(empty_file, prefs, style_image, tmp_path):
    """Rows of the panel's per-material list become the job's style map (by the exported names); a row without
    an image stops the run before anything is exported."""
    from blender_addon import operators

    build_scene()
    settings = bpy.context.scene.nst3d
    set_style(settings, style_image)
    bpy.context.view_layer.objects.active = bpy.data.objects["Plain"]
    assert bpy.ops.nst3d.style_map_add() == {"FINISHED"}
    row = settings.style_map[0]
    assert row.target == "Red"  # the active object's active material
    _stylize_fails("per-material style image for Red is not found")
    other = tmp_path / "other.png"
    shutil.copyfile(style_image, other)
    row.path = str(other)
    bpy.ops.nst3d.style_map_add()
    settings.style_map[1].target, settings.style_map[1].path = "Textured", str(style_image)  # an object
    from blender_addon.properties import _style_map_names

    offered = _style_map_names(row, bpy.context, "")  # the name field's search: the selection's names
    assert {("Red", "material"), ("Painted", "material"), ("Textured", "object"), ("Plain", "object")} == set(offered)
    prefs.python_path = sys.executable
    job = operators.begin(bpy.context)
    try:
        style_map = json.loads(job.plan.job_file.read_text())["style_map"]
    finally:
        operators.cancel_active()
        while not operators.update(bpy.context, job):
            time.sleep(0.05)
        operators.finish(bpy.context, job)
    red = next(t.key for t in job.plan.targets if t.source == "Red")
    textured = job.plan.objects.index("Textured")
    assert style_map == {red: [str(other)], f"nst3d_o{textured}": [str(style_image)]}
    bpy.ops.nst3d.style_map_remove()
    assert [r.target for r in settings.style_map] == ["Red"]
    assert "NST3D_UL_style_map" in dir(bpy.types)


class LayoutRecorder:
    """Stands in for UILayout, which needs a window to exist (none in background mode). It checks what the
    real one would: every property drawn exists on its data, every operator is registered."""

    def __init__(self):
        self.props, self.operators, self.labels, self.progress_text, self.enabled = [], [], [], None, True
        self.icons = []

    def row(self, **_kw):
        return self

    column = box = row

    def prop(self, data, name, **_kw):
        assert name in data.bl_rna.properties, name
        self.props.append(name)

    def operator(self, idname, **_kw):
        from types import SimpleNamespace

        module, name = idname.split(".")
        assert getattr(getattr(bpy.ops, module), name).get_rna_type() is not None
        self.operators.append(idname)
        return SimpleNamespace()  # the operator's properties, set by the panel

    def template_icon(self, icon_value=0, scale=1.0):
        self.icons.append(icon_value)

    def menu(self, menu, **_kw):
        assert hasattr(bpy.types, menu)

    def label(self, text="", **_kw):
        self.labels.append(text)

    def template_list(self, list_type, _list_id, data, propname, active_data, active_propname, **_kw):
        assert hasattr(bpy.types, list_type)
        assert propname in data.bl_rna.properties and active_propname in active_data.bl_rna.properties

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0
        self.progress_text = text


def _draw_panel() -> LayoutRecorder:
    from types import SimpleNamespace

    layout = LayoutRecorder()
    bpy.types.NST3D_PT_style.draw(SimpleNamespace(layout=layout), bpy.context)
    return layout


def test_panel_draws_every_state(empty_file):
    from blender_addon import operators

    idle = _draw_panel()
    assert {"loss", "strength", "steps", "size", "views", "texture_size", "preserve_color"} <= set(idle.props)
    assert "nst3d.stylize_selected" in idle.operators and idle.progress_text is None

    status = bpy.context.window_manager.nst3d
    status.error = "the worker stopped unexpectedly (exit status 139): Segmentation fault (core dumped)"
    failed = _draw_panel()
    assert " ".join(failed.labels[2:]) == status.error  # wrapped over lines, nothing lost (after 2 headings)

    operators.ACTIVE["job"] = "running"
    try:
        status.error, status.stage, status.step, status.total, status.loss = "", "stylizing", 30, 300, 0.25
        running = _draw_panel()
    finally:
        operators.ACTIVE.pop("job")
    assert running.progress_text == "stylizing: step 30/300, loss 0.25"
    assert "nst3d.cancel" in running.operators and "nst3d.stylize_selected" not in running.operators


def test_preferences_draw(prefs):
    prefs.check_result = "Python: x\nProblem: torch cannot be imported"
    layout = _draw_preferences(prefs)
    assert layout.props == ["setup_source", "setup_base_python", "setup_reuse", "python_path", "device",
                            "weights_path", "keep_job_files"]
    assert "nst3d.setup" in layout.operators
    assert layout.operators[-1] == "nst3d.check_worker" and "Problem: torch cannot be imported" in layout.labels


# ----------------------------------------------------------------------------------------------------------
# Failures leave the scene unchanged, with the reason in the panel


def _stylize_fails(match: str) -> str:
    before = fingerprint()
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.nst3d.stylize_selected()
    assert fingerprint() == before
    status = bpy.context.window_manager.nst3d
    assert not status.running and status.error
    return status.error


def test_empty_selection(empty_file, style_image):
    build_scene()
    set_style(bpy.context.scene.nst3d, style_image)
    for ob in bpy.data.objects:
        ob.select_set(False)
    assert "nothing is selected" in _stylize_fails("nothing is selected")


def test_non_mesh_selection(empty_file, style_image):
    build_scene()
    set_style(bpy.context.scene.nst3d, style_image)
    for ob in bpy.data.objects:
        ob.select_set(False)
    camera = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    bpy.context.scene.collection.objects.link(camera)
    camera.select_set(True)
    assert "no mesh" in _stylize_fails("no mesh")


def test_no_style_image(empty_file):
    build_scene()
    bpy.context.scene.nst3d.styles.clear()
    _stylize_fails("no style image")


def test_missing_interpreter(empty_file, prefs, style_image, tmp_path):
    build_scene()
    set_style(bpy.context.scene.nst3d, style_image)
    prefs.python_path = str(tmp_path / "no" / "python")
    assert "Python interpreter not found" in _stylize_fails("interpreter not found")


def test_crashing_worker(empty_file, prefs, style_image, tmp_path):
    """An interpreter that dies at once: the panel shows its exit status and last stderr line."""
    build_scene()
    set_style(bpy.context.scene.nst3d, style_image)
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    fake.chmod(0o755)
    prefs.python_path = str(fake)
    error = _stylize_fails("stopped unexpectedly")
    assert "exit status 139" in error and "Segmentation fault" in error
    log = Path(error.split("(log: ")[1].rstrip(")"))  # a crash keeps the job folder for the user
    assert "Segmentation fault" in log.read_text()
    shutil.rmtree(log.parent)


def test_worker_error_is_shown(empty_file, prefs, real_weights, tmp_path):
    """The real worker rejects the job (the style image is not an image): its one-line message is shown."""
    build_scene()
    bad = tmp_path / "style.png"
    bad.write_text("not an image")
    set_style(bpy.context.scene.nst3d, bad)
    prefs.python_path = sys.executable
    prefs.weights_path = str(real_weights)
    error = _stylize_fails("cannot read style image")
    assert "Traceback" not in error and "\n" not in error


def test_offline_blender_never_downloads_weights(empty_file, prefs, style_image, tmp_path):
    """Blender's online access is off (the bpy module's default): the job tells the worker to stay offline,
    and with no weights set or cached the panel says where to put them (the hub cache is empty here)."""
    assert not bpy.app.online_access
    build_scene()
    set_style(bpy.context.scene.nst3d, style_image)
    prefs.python_path = sys.executable
    error = _stylize_fails("online access is off")
    hub = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    assert f"put vgg19-dcbb9e9d.pth in {hub}" in error and "\n" not in error
    assert not hub.exists()  # nothing was downloaded, not even a partial file


def test_the_manifest_asks_for_network_access():
    import tomllib

    manifest = tomllib.loads((REPO / ADDON / "blender_manifest.toml").read_text())
    assert {"files", "network"} <= set(manifest["permissions"])


# ----------------------------------------------------------------------------------------------------------
# The real thing


@pytest.mark.slow
def test_jobs_ask_the_worker_to_keep_the_uv_layouts(addon, tmp_path):
    """The add-on puts the textures back on the objects' own UV maps: the worker must not re-atlas them."""
    from blender_addon.jobs import write_job_file
    from nst3d.worker import load_job

    job = load_job(write_job_file(tmp_path, {"styles": [str(tmp_path / "s.png")]}, None))
    assert job.keep_uv_layouts and not job.offline and job.preview_every == 0


@pytest.mark.slow
def test_the_worker_checks_the_add_ons_job_fields(addon, tmp_path):
    """offline and preview_every, as the panel writes them, and what the worker refuses."""
    from blender_addon.jobs import write_job_file
    from nst3d.errors import UserError
    from nst3d.worker import load_job

    styles = {"styles": [str(tmp_path / "s.png")]}
    job = load_job(write_job_file(tmp_path, styles, None, {"offline": True, "preview_every": 3}))
    assert job.offline and job.preview_every == 3 and job.preview_dir == tmp_path.resolve() / "previews"
    for extra, message in (({"offline": "yes"}, "offline must be true or false"),
                           ({"preview_every": -1}, "preview_every must be a whole number"),
                           ({"preview_every": 2.5}, "preview_every must be a whole number")):
        with pytest.raises(UserError, match=message):
            load_job(write_job_file(tmp_path, styles, None, extra))


def test_a_style_map_by_scene_names_reaches_the_worker_by_export_names(empty_file, style_image, tmp_path):
    """The exported GLB calls materials nst3d_m<i> and objects nst3d_o<i>: a style map by the names the user
    sees in Blender is translated, and a name that is in neither says which names there are."""
    from blender_addon.jobs import JobError, prepare_job

    build_scene()
    objects = [bpy.data.objects["Textured"], bpy.data.objects["Plain"]]
    style = str(style_image)
    plan = prepare_job(objects, {"styles": [style]}, folder=tmp_path / "job",
                       extra={"style_map": {"Painted": [style], "Plain": [style, style]}})
    style_map = json.loads(plan.job_file.read_text())["style_map"]
    painted = next(t.key for t in plan.targets if t.source == "Painted")
    assert style_map == {painted: [style], "nst3d_o1": [style, style]}
    with pytest.raises(JobError, match="'Wood', which is no material or object.*known names: Painted, Plain, Red"):
        prepare_job(objects, {"styles": [style]}, folder=tmp_path / "bad", extra={"style_map": {"Wood": [style]}})
    assert not (tmp_path / "bad").exists()


def test_worker_warnings_reach_the_panel_message(addon):
    from blender_addon.operators import warning_suffix

    assert warning_suffix({"report": {"warnings": []}}) == ""
    assert warning_suffix({"report": {"warnings": ["a palette", "b"]}}) == "; warning: a palette (+1 more)"


def test_stylize_selected_end_to_end_and_undo(empty_file, prefs, style_image, real_weights, tmp_path):
    cube, ball = build_scene()
    set_style(bpy.context.scene.nst3d, style_image, steps=4)
    prefs.weights_path = str(real_weights)
    prefs.device = "cpu"
    checker = pixels(bpy.data.images["Checker"]).copy()
    lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))  # selected too, not a mesh
    bpy.context.scene.collection.objects.link(lamp)
    lamp.select_set(True)
    bare = bpy.data.objects.new("Bare", ball.data.copy())  # a mesh without any material slot
    bare.data.materials.clear()
    bare.location = (0.0, 2.5, 0.0)
    bpy.context.scene.collection.objects.link(bare)
    bare.select_set(True)

    bpy.context.scene.nst3d.texture_folder = str(tmp_path / "textures")
    row = bpy.context.scene.nst3d.style_map.add()  # a per-material style: the worker takes the panel's map
    row.target, row.path = "Red", str(style_image)
    assert bpy.ops.nst3d.stylize_selected() == {"FINISHED"}

    status = bpy.context.window_manager.nst3d
    assert status.error == "" and "stylized 3 object(s)" in status.message
    assert f"textures saved in {tmp_path / 'textures'}" in status.message
    # the saved files: named as `nst3d mesh untitled.glb` names its textures, the packed images' very bytes
    saved = {p.name: p.read_bytes() for p in (tmp_path / "textures").iterdir()}
    packed = {name: bpy.data.images[image].packed_file.data for name, image in (
        ("untitled_styled_Painted.png", "Checker_styled"), ("untitled_styled_Plain_Red.png", "Plain_Red_styled"),
        ("untitled_styled_Bare_Material.png", "Bare_Material_styled"))}
    assert saved.keys() == packed.keys() and all(saved[name] == packed[name] for name in saved)
    assert all(data.startswith(b"\x89PNG") for data in saved.values())
    assert "skipped 1 that are not meshes" in status.message  # the note survives to the final message
    assert len(bpy.data.objects["Bare"].material_slots) == 1  # given a slot for its stylized texture
    assert status.step == status.total == 4
    cube, ball = bpy.data.objects["Textured"], bpy.data.objects["Plain"]
    assert cube.material_slots[0].material.name == "Painted_styled"
    assert ball.material_slots[0].material.name == "Plain_Red_styled"
    # the originals are still in the file, untouched (a fake user keeps them when the file is saved)
    assert bpy.data.materials["Painted"].node_tree.nodes["Image Texture"].image.name == "Checker"
    assert bpy.data.materials["Painted"].use_fake_user and bpy.data.materials["Red"].use_fake_user
    np.testing.assert_array_equal(pixels(bpy.data.images["Checker"]), checker)
    # the new images exist, are packed, and differ from the originals
    styled = bpy.data.images["Checker_styled"]
    assert styled.packed_file is not None and tuple(styled.size) == (32, 32)
    assert np.abs(pixels(styled)[..., :3] - checker[..., :3]).mean() > 0.01  # 4 tiny steps: a small change
    ball_image = bpy.data.images["Plain_Red_styled"]
    ball_rgb = pixels(ball_image)[..., :3]
    assert ball_rgb.std(axis=(0, 1)).max() > 0.005  # was one flat red (std 0)
    assert ball.data.uv_layers.keys() == ["nst3d_UV"]  # Smart UV Project into a new map
    assert cube.data.uv_layers.keys() == ["UVMap"]
    assert bpy.data.materials["Plain_Red_styled"].node_tree.nodes["nst3d_texture"].image == ball_image

    # Ctrl+Z: one step back restores the previous assignment (the _styled data goes away with it)
    bpy.ops.ed.undo()
    cube, ball = bpy.data.objects["Textured"], bpy.data.objects["Plain"]
    assert cube.material_slots[0].material.name == "Painted"
    assert ball.material_slots[0].material.name == "Red"
    assert len(ball.data.uv_layers) == 0
    assert not bpy.data.materials["Painted"].use_fake_user
    assert "Painted_styled" not in bpy.data.materials and "Checker_styled" not in bpy.data.images
    bpy.ops.ed.redo()
    assert bpy.data.objects["Textured"].material_slots[0].material.name == "Painted_styled"

    # Revert to Originals: the original materials back, the _styled ones kept in the file
    for ob in bpy.data.objects:
        ob.select_set(True)
    assert bpy.ops.nst3d.revert_styled() == {"FINISHED"}
    assert bpy.data.objects["Textured"].material_slots[0].material.name == "Painted"
    assert bpy.data.objects["Plain"].material_slots[0].material.name == "Red"
    assert len(bpy.data.objects["Bare"].material_slots) == 0  # the slot Stylize added is gone, not left empty
    assert "Painted_styled" in bpy.data.materials


def test_saving_textures_into_an_unusable_folder_says_so(addon, tmp_path):
    from blender_addon.materials import JobError, Target, save_textures

    image = bpy.data.images.new("Saved", 4, 4)
    image.filepath_raw = str(tmp_path / "x.png")
    image.file_format = "PNG"
    image.save()
    image.pack()
    target = Target(key="nst3d_m0", source="Wood", image="", uv_map="UVMap", styled_name="Wood_styled")
    assert [p.name for p in save_textures([target], [image], tmp_path / "out", "chair")] == ["chair_styled_Wood.png"]
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder")
    with pytest.raises(JobError, match=f"cannot save the textures in {blocked}"):
        save_textures([target], [image], blocked / "sub", "chair")
    bpy.data.images.remove(image)


def test_each_of_two_stylizations_is_one_undo(empty_file, prefs, style_image, real_weights):
    """A second Stylize pushed a 'before' step equal to the first result's: an undo that did nothing between them."""
    build_scene()
    set_style(bpy.context.scene.nst3d, style_image, steps=2)
    prefs.weights_path, prefs.device = str(real_weights), "cpu"
    painted = (lambda: bpy.data.objects["Textured"].material_slots[0].material.name)
    assert bpy.ops.nst3d.stylize_selected() == {"FINISHED"}
    first = painted()
    assert bpy.ops.nst3d.stylize_selected() == {"FINISHED"}
    assert painted() not in (first, "Painted")
    bpy.ops.ed.undo()
    assert painted() == first
    bpy.ops.ed.undo()
    assert painted() == "Painted"


def _glb_bounds(path: Path) -> np.ndarray:
    """[2, 3] min and max corner of a GLB's vertices, in Blender's axes (glTF is Y-up: x, -z, y)."""
    import trimesh

    scene = trimesh.load(path, force="scene")
    points = np.concatenate([geometry.vertices for geometry in scene.dump()])
    blender = np.stack([points[:, 0], -points[:, 2], points[:, 1]], axis=1)
    return np.stack([blender.min(axis=0), blender.max(axis=0)])


def test_modifiers_are_stylized_and_textures_go_back_on_the_base_uvs(empty_file, prefs, style_image,
                                                                      real_weights, tmp_path):
    """A cube half (x >= 0) with a Mirror modifier, and a plain ball without UVs with an Array: the job sees the
    evaluated meshes; the textures come back onto the base meshes' UV maps (the modifiers stay)."""
    from blender_addon.jobs import prepare_job

    cube, ball = build_scene()
    cube.location = ball.location = (0.0, 0.0, 0.0)
    ball.location.y = 4.0
    for vertex in cube.data.vertices:  # the cube becomes the x >= 0 half of a 4 x 2 x 2 box
        vertex.co.x = (vertex.co.x + 1.0)
    cube.modifiers.new("Mirror", "MIRROR")
    array = ball.modifiers.new("Array", "ARRAY")
    array.count, array.relative_offset_displace = 2, (0.0, 1.0, 0.0)  # a second ball beyond y = 5
    loops = (len(cube.data.loops), len(ball.data.loops))
    assert not export_warnings()

    plan = prepare_job([cube, ball], {"styles": [str(style_image)]}, folder=tmp_path / "job")
    low, high = _glb_bounds(plan.folder / "input.glb")
    assert (low[0], high[0]) == pytest.approx((-2.0, 2.0), abs=1e-4)  # the mirrored half is there
    assert high[1] > 6.5  # and the Array's second ball (the first one ends at y = 5)
    assert [u.loops for u in plan.unwraps] == [loops[1]]  # unwrapped on the base mesh, before the Array

    set_style(bpy.context.scene.nst3d, style_image, steps=2)
    prefs.weights_path, prefs.device = str(real_weights), "cpu"
    assert bpy.ops.nst3d.stylize_selected() == {"FINISHED"}
    cube, ball = bpy.data.objects["Textured"], bpy.data.objects["Plain"]
    assert cube.material_slots[0].material.name == "Painted_styled"
    node = cube.material_slots[0].material.node_tree.nodes["Image Texture"]
    assert node.image.name == "Checker_styled" and not node.inputs["Vector"].is_linked  # the render UV map
    assert cube.data.uv_layers.keys() == ["UVMap"] and ball.data.uv_layers.keys() == ["nst3d_UV"]
    assert (len(cube.data.loops), len(ball.data.loops)) == loops
    assert [m.type for m in cube.modifiers] == ["MIRROR"] and [m.type for m in ball.modifiers] == ["ARRAY"]
    uv = bpy.data.materials["Plain_Red_styled"].node_tree.nodes["nst3d_texture"].inputs["Vector"].links[0]
    assert uv.from_node.uv_map == "nst3d_UV"


def export_warnings() -> list[str]:
    from blender_addon.export import modifier_warnings

    return modifier_warnings(bpy.context.selected_objects)


def test_a_modifier_that_drops_the_uvs_is_named(empty_file, style_image, tmp_path):
    """Remesh rebuilds the mesh without UVs: the panel warns before the run, the job says what to do."""
    from blender_addon.jobs import JobError, prepare_job

    cube, _ball = build_scene()
    cube.modifiers.new("Rebuild", "REMESH")
    warnings = export_warnings()
    assert len(warnings) == 1 and warnings[0].startswith("Textured: modifier Rebuild changes the UVs")
    set_style(bpy.context.scene.nst3d, style_image)
    assert "Textured: modifier Rebuild changes the UVs" in " ".join(_draw_panel().labels)
    before = fingerprint()
    with pytest.raises(JobError, match=r"modifiers of Textured \(Rebuild\) drop its UV map 'UVMap': apply it"):
        prepare_job([cube], {"styles": [str(style_image)]}, folder=tmp_path / "job")
    assert fingerprint() == before and not (tmp_path / "job").exists()


def test_live_preview_reaches_the_panel_before_the_run_ends(empty_file, prefs, style_image, real_weights):
    """The worker renders one held-out view every few steps; the panel shows the latest while the run goes on."""
    from blender_addon import live_preview, operators

    build_scene()
    settings = bpy.context.scene.nst3d
    set_style(settings, style_image, steps=4)
    prefs.weights_path, prefs.device = str(real_weights), "cpu"
    assert settings.live_preview  # on by default
    job = operators.begin(bpy.context)
    assert json.loads(job.plan.job_file.read_text())["preview_every"] == live_preview.interval(4)
    status, seen = bpy.context.window_manager.nst3d, []
    deadline = time.monotonic() + 300
    while not operators.update(bpy.context, job) and time.monotonic() < deadline:
        if status.preview_step and not seen:
            image = live_preview.current()
            drawn = _draw_panel()
            seen.append((status.preview_step, tuple(image.image_size), drawn.labels, drawn.icons))
        time.sleep(0.02)
    ok, message = operators.finish(bpy.context, job)
    assert ok, message
    assert seen, "no preview reached the panel before the run ended"
    step, size, labels, icons = seen[0]
    assert 1 <= step <= 4 and 0 < max(size) <= 160 and len(icons) == 1  # a small image, drawn once
    assert f"preview at step {step}" in labels
    assert status.preview_step == 4  # the last step's preview came too (the panel stops showing it when done)


@pytest.mark.slow
def test_cancel_leaves_scene_unchanged(empty_file, prefs, style_image, real_weights):
    """The Cancel button while the worker is optimising: it exits as cancelled and nothing changes."""
    from blender_addon import operators

    build_scene()
    set_style(bpy.context.scene.nst3d, style_image, steps=5000)
    prefs.weights_path = str(real_weights)
    before = fingerprint()
    job = operators.begin(bpy.context)
    assert bpy.context.window_manager.nst3d.running
    deadline = time.monotonic() + 120
    while job.step < 1 and not job.finished and time.monotonic() < deadline:
        operators.update(bpy.context, job)
        time.sleep(0.05)
    assert job.step >= 1, job.error
    assert bpy.ops.nst3d.cancel() == {"FINISHED"}
    while not operators.update(bpy.context, job):
        time.sleep(0.05)
    ok, message = operators.finish(bpy.context, job)
    assert not ok and "cancelled" in message
    assert job.process.proc.returncode == 130  # the worker's own clean exit, not a kill
    assert fingerprint() == before
    assert not job.plan.folder.exists()
    assert not bpy.context.window_manager.nst3d.running


# ----------------------------------------------------------------------------------------------------------
# Preferences: Check


def _draw_preferences(prefs) -> LayoutRecorder:
    layout = LayoutRecorder()

    class Drawn:
        def __getattr__(self, name):
            return layout if name == "layout" else getattr(prefs, name)

    type(prefs).draw(Drawn(), bpy.context)
    return layout


def test_check_reports_versions(empty_file, prefs, real_weights):
    """Check returns at once (the worker imports torch in the background), shows progress, then the report."""
    from blender_addon import tasks

    prefs.python_path = sys.executable
    prefs.weights_path = str(real_weights)
    prefs.device = "cpu"
    started = time.monotonic()
    assert bpy.ops.nst3d.check_worker() == {"FINISHED"}
    assert time.monotonic() - started < 1.0 and "check" in tasks.RUNNING
    assert bpy.context.window_manager.nst3d.check_running and prefs.check_result.startswith("Checking ")
    drawn = _draw_preferences(prefs)
    assert "nst3d.cancel_task" in drawn.operators and "nst3d.check_worker" not in drawn.operators
    assert drawn.progress_text.startswith("Checking the worker")
    tasks.wait(timeout=120)
    text = prefs.check_result
    assert "nst3d 0.1.0" in text and "torch " in text and "device cpu" in text and real_weights.name in text
    assert not bpy.context.window_manager.nst3d.check_running and not tasks.RUNNING


def test_check_reports_the_problem(empty_file, prefs, tmp_path):
    from blender_addon import tasks

    prefs.python_path = str(tmp_path / "missing-python")
    with pytest.raises(RuntimeError, match="interpreter not found"):
        bpy.ops.nst3d.check_worker()
    assert prefs.check_result.startswith("Error: Python interpreter not found")
    prefs.python_path = sys.executable
    prefs.weights_path = str(tmp_path / "nope.pth")
    bpy.ops.nst3d.check_worker()
    tasks.wait(timeout=120)
    assert "Problem: VGG-19 weights file not found" in prefs.check_result


def test_check_never_blocks_and_cancels(empty_file, prefs, tmp_path):
    """An interpreter that hangs: Check returns at once, Cancel stops the process, the box says so."""
    from blender_addon import tasks

    hanging = tmp_path / "python"
    hanging.write_text("#!/bin/sh\nexec sleep 60\n")
    hanging.chmod(0o755)
    prefs.python_path = str(hanging)
    started = time.monotonic()
    bpy.ops.nst3d.check_worker()
    assert time.monotonic() - started < 1.0
    task = tasks.RUNNING["check"]
    assert tasks.tick() and task.process.proc.poll() is None  # still running
    assert bpy.ops.nst3d.cancel_task(kind="check") == {"FINISHED"}
    tasks.wait(timeout=20)
    assert time.monotonic() - started < 15 and task.process.proc.returncode < 0
    assert prefs.check_result == "Error: the check was cancelled" and not tasks.RUNNING


def test_interpreter_auto_detection(monkeypatch, tmp_path):
    from blender_addon.worker_process import WorkerError, find_interpreter

    monkeypatch.delenv("NST3D_PYTHON", raising=False)
    assert find_interpreter("") == (sys.executable, "Blender's own Python")  # nst3d imports here
    monkeypatch.setenv("NST3D_PYTHON", sys.executable)
    assert find_interpreter("")[1] == "$NST3D_PYTHON"
    with pytest.raises(WorkerError, match="not found"):
        find_interpreter(str(tmp_path / "python"))


# ----------------------------------------------------------------------------------------------------------
# Packaging: the built extension installs and registers


@pytest.fixture(scope="module")
def built_extension(tmp_path_factory) -> Path:
    """The extension zip scripts/build_addon.py makes from this checkout (with nst3d's own wheel inside)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build_addon.py"), "-o", str(out)],
                            capture_output=True, text=True, check=True)
    return Path(result.stdout.strip().splitlines()[-1])


def test_built_extension_installs(built_extension, tmp_path):
    import zipfile

    package = built_extension
    assert package.name == "nst3d-0.1.0.zip"
    assert "wheels/nst3d-0.1.0-py3-none-any.whl" in zipfile.ZipFile(package).namelist()
    script = f"""
import bpy
bpy.ops.extensions.package_install_files(filepath={str(package)!r}, repo="user_default", enable_on_install=True)
print("ENABLED", "bl_ext.user_default.nst3d" in bpy.context.preferences.addons)
print("PANEL", hasattr(bpy.types, "NST3D_PT_style"), hasattr(bpy.types.Scene, "nst3d"))
prefs = bpy.context.preferences.addons["bl_ext.user_default.nst3d"].preferences
print("PREFS", prefs.device)
from bl_ext.user_default.nst3d import environment
print("ROOT", environment.env_root())
print("WHEELS", *sorted(p.name for p in environment.BUNDLED_WHEELS.iterdir()))
"""
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user"), "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "ENABLED True" in out.stdout, out.stdout + out.stderr
    assert "PANEL True True" in out.stdout and "PREFS auto" in out.stdout
    assert (tmp_path / "user" / "extensions" / "user_default" / "nst3d" / "blender_manifest.toml").is_file()
    # the set-up's environment goes to the extension's own user folder; the wheel it installs came in the zip
    root = Path(out.stdout.split("ROOT ")[1].splitlines()[0])
    assert root.is_dir() and root.is_relative_to(tmp_path / "user" / "extensions") and "nst3d" in root.parts
    assert "WHEELS nst3d-0.1.0-py3-none-any.whl" in out.stdout
    assert {"Preview.py", "Final.py"} <= {p.name for p in (tmp_path / "user" / "scripts" / "presets" / "nst3d")
                                         .iterdir()}


def _wheel_folder(built_extension: Path, folder: Path) -> Path:
    """A local wheel folder holding nst3d's wheel (the one in the extension zip, built from this checkout)."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(built_extension) as archive:
        for name in archive.namelist():
            if name.startswith("wheels/"):
                (folder / Path(name).name).write_bytes(archive.read(name))
    return folder


PREFERENCE_NAMES = ("setup_source", "setup_wheels", "setup_base_python", "setup_reuse", "python_path", "device",
                    "weights_path", "keep_job_files", "check_result")


@pytest.mark.slow
def test_setup_from_a_local_wheel_folder(empty_file, prefs, built_extension, tmp_path, monkeypatch):
    """Set up nst3d, offline: a wheel folder with nst3d's wheel, and this Python's installed packages reused (its
    torch, numpy, trimesh...). It runs in the background; afterwards Check finds the environment with no path
    typed and reports nst3d, torch and the device; the worker imports nst3d from the environment itself."""
    from blender_addon import environment, tasks

    monkeypatch.delenv("PYTHONPATH", raising=False)  # nst3d must come from the environment, not this checkout
    monkeypatch.delenv("NST3D_PYTHON", raising=False)
    prefs.setup_source, prefs.setup_wheels = "wheels", str(_wheel_folder(built_extension, tmp_path / "wheels"))
    prefs.setup_base_python, prefs.setup_reuse, prefs.device = sys.executable, True, "cpu"
    status = bpy.context.window_manager.nst3d
    root = environment.env_root()
    try:
        started = time.monotonic()
        assert bpy.ops.nst3d.setup() == {"FINISHED"}
        assert time.monotonic() - started < 1.0 and status.setup_running
        drawn = _draw_preferences(prefs)
        assert "nst3d.cancel_task" in drawn.operators and drawn.progress_text.startswith("Creating the environment")
        tasks.wait(timeout=600)
        assert status.setup_error == "" and status.setup_message == f"nst3d is set up in {root / 'env'}"
        assert "Installing nst3d" in (root / "setup.log").read_text()
        python = environment.managed_python()
        assert python == str(environment.env_python(root / "env")) and not (root / "env.partial").exists()
        where = subprocess.run([python, "-c", "import nst3d; print(nst3d.__file__)"], capture_output=True,
                               text=True, timeout=120)
        assert Path(where.stdout.strip()).is_relative_to(root / "env"), where.stdout + where.stderr

        prefs.check_result = ""
        assert prefs.python_path == ""  # nothing typed: Check finds the environment by itself
        bpy.ops.nst3d.check_worker()
        tasks.wait(timeout=120)
        text = prefs.check_result
        assert text.startswith(f"Python: {python} (set up by the add-on)"), text
        assert "nst3d 0.1.0" in text and "torch " in text and "device cpu" in text and "Problem" not in text
    finally:
        shutil.rmtree(root / "env", ignore_errors=True)


@pytest.mark.slow
def test_a_failed_setup_changes_nothing_and_says_why(empty_file, prefs, built_extension, tmp_path, monkeypatch):
    """A wheel folder without torch and a base Python without torch: the install fails; the preferences and an
    environment set up before are as they were; the reason is pip's own last error."""
    from blender_addon import environment, tasks

    base = getattr(sys, "_base_executable", sys.executable)
    if subprocess.run([base, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"the base Python {base} has torch")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    prefs.setup_source, prefs.setup_wheels = "wheels", str(_wheel_folder(built_extension, tmp_path / "wheels"))
    prefs.setup_base_python, prefs.setup_reuse = base, False
    root = environment.env_root()
    earlier = root / "env" / "earlier.txt"  # an environment from an earlier set-up must survive
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_text("kept")
    before = {name: getattr(prefs, name) for name in PREFERENCE_NAMES}
    try:
        bpy.ops.nst3d.setup()
        tasks.wait(timeout=600)
        error = bpy.context.window_manager.nst3d.setup_error
        assert error.startswith("Installing torch and the other packages failed: "), error
        log = (root / "setup.log").read_text().split("# Installing torch and the other packages")[1]
        pip_error = next(line for line in log.splitlines() if line.startswith("ERROR: ")).removeprefix("ERROR: ")
        assert pip_error in error and "the wheel folder must hold every package" in error
        assert error.endswith(f"(log: {root / 'setup.log'})")
        assert {name: getattr(prefs, name) for name in PREFERENCE_NAMES} == before
        assert earlier.read_text() == "kept" and not (root / "env.partial").exists()
    finally:
        shutil.rmtree(root / "env", ignore_errors=True)


def test_setup_cancels(empty_file, prefs, built_extension, tmp_path):
    """Cancel while the environment is being made: the processes stop, nothing is left, it says so."""
    from blender_addon import environment, tasks

    prefs.setup_source, prefs.setup_wheels = "wheels", str(_wheel_folder(built_extension, tmp_path / "wheels"))
    bpy.ops.nst3d.setup()
    task = tasks.RUNNING["setup"]
    time.sleep(0.5)
    assert tasks.tick() and task.index == 0  # still creating the environment
    assert bpy.ops.nst3d.cancel_task(kind="setup") == {"FINISHED"}
    tasks.wait(timeout=30)
    assert bpy.context.window_manager.nst3d.setup_error == "set-up cancelled; nothing was changed"
    assert task.process.proc.returncode < 0 and not (environment.env_root() / "env.partial").exists()
    assert environment.managed_python() == ""


def test_setup_commands_are_argument_lists(addon, tmp_path):
    """The download choices add PyTorch's CPU or CUDA index; a wheel folder installs with no index at all."""
    from blender_addon.environment import TORCH_INDEXES, pip_argv

    for source, index in TORCH_INDEXES.items():
        argv = pip_argv("/env/bin/python", source)
        assert argv[:4] == ["/env/bin/python", "-m", "pip", "install"] and argv[-1] == "nst3d[mesh]"
        assert argv[argv.index("--extra-index-url") + 1] == index and "--no-index" not in argv
    argv = pip_argv("/env/bin/python", "wheels", str(tmp_path))
    assert "--no-index" in argv and argv[argv.index("--no-index") + 2] == str(tmp_path)
    assert "--extra-index-url" not in argv


def test_setup_refuses_a_missing_wheel_folder_and_downloads_while_offline(empty_file, prefs, tmp_path):
    from blender_addon import tasks

    prefs.setup_source, prefs.setup_wheels = "wheels", str(tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match="the wheel folder does not exist"):
        bpy.ops.nst3d.setup()
    assert "wheel folder does not exist" in bpy.context.window_manager.nst3d.setup_error
    assert not bpy.app.online_access  # the bpy module's default
    for source in ("cpu", "cuda"):
        prefs.setup_source = source
        with pytest.raises(RuntimeError, match="online access is off"):
            bpy.ops.nst3d.setup()
    assert not tasks.RUNNING


# ----------------------------------------------------------------------------------------------------------
# The headless batch script


@pytest.mark.slow
def test_batch_script_on_a_saved_blend(empty_file, style_image, real_weights, tmp_path):
    build_scene()
    scene = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(scene))
    scene_bytes = scene.read_bytes()
    out = tmp_path / "out" / "styled.blend"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, str(REPO / "scripts" / "batch_stylize.py"), str(scene), "--style", str(style_image),
           "--weights", str(real_weights), "--steps", "2", "--size", "32", "--views", "1", "--texture-size", "32",
           "--device", "cpu", "--objects", "Text*", "--style-map", f"Painted={style_image}", "-o", str(out),
           "--report", str(tmp_path / "reports" / "run.json")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "reports" / "run.json").read_text())  # --report was accepted and ignored
    assert set(report["evaluation"]["style_distance"]) == {"before", "after"} and report["details"]["style_map"]
    assert "Textured: Painted -> Painted_styled 32x32; own UVs" in result.stderr
    assert scene.read_bytes() == scene_bytes  # the input is never touched

    bpy.ops.wm.open_mainfile(filepath=str(out))
    assert bpy.data.objects["Textured"].material_slots[0].material.name == "Painted_styled"
    assert bpy.data.objects["Plain"].material_slots[0].material.name == "Red"  # not matched by --objects
    assert "Painted" in bpy.data.materials and "Checker" in bpy.data.images
    styled = bpy.data.images["Checker_styled"]
    assert styled.packed_file is not None and pixels(styled).shape == (32, 32, 4)


def test_batch_script_errors(style_image, tmp_path, addon):
    bpy.ops.wm.read_homefile(use_empty=True)
    build_scene()
    scene = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(scene))
    script = str(REPO / "scripts" / "batch_stylize.py")
    out = tmp_path / "out.blend"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    nothing = subprocess.run([sys.executable, script, str(scene), "--style", str(style_image), "--objects", "Nope*",
                              "-o", str(tmp_path / "new" / "out.blend")], capture_output=True, text=True, env=env,
                             timeout=300)
    assert nothing.returncode == 2 and "no mesh objects matching Nope*" in nothing.stderr
    assert not (tmp_path / "new").exists()  # the output folder was only proved writable, not left behind
    same = subprocess.run([sys.executable, script, str(scene), "--style", str(style_image), "-o", str(scene)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert same.returncode == 2 and "never overwritten" in same.stderr
    damaged = tmp_path / "damaged.blend"
    damaged.write_bytes(b"not a blend file")
    unreadable = subprocess.run([sys.executable, script, str(damaged), "--style", str(style_image), "-o", str(out)],
                                capture_output=True, text=True, env=env, timeout=300)
    assert unreadable.returncode == 2 and "Traceback" not in unreadable.stderr
    assert unreadable.stderr.strip().splitlines()[-1].startswith(f"batch_stylize: error: cannot open {damaged}")
    assert not out.exists()
    if os.path.isdir("/proc"):  # passes a permission check, takes no file: found before the run, not at the save
        proc = subprocess.run([sys.executable, script, str(scene), "--style", str(style_image), "-o", "/proc/x.blend"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2 and "cannot write to /proc" in proc.stderr and "stylizing" not in proc.stderr
    no_style = subprocess.run([sys.executable, script, str(scene), "--style", str(tmp_path / "nope.png"), "-o",
                               str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert no_style.returncode == 2 and "style image not found" in no_style.stderr, no_style.stderr
    assert "stylizing" not in no_style.stderr  # said before the scene loads
    early = subprocess.Popen([sys.executable, script, str(scene), "--style", str(style_image), "-o", str(out)],
                             stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(0.8)  # while the options are parsed (torch imports)
    early.send_signal(signal.SIGINT)
    _, err = early.communicate(timeout=300)
    assert early.returncode == 130 and "Traceback" not in err and "cancelled" in err, err[-2000:]
    assert not out.exists()


def test_batch_options_parse_the_same_without_nst3d(monkeypatch, style_image, addon):
    """Inside a Blender Python without nst3d the worker parses the options: same result as in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("batch_stylize", REPO / "scripts" / "batch_stylize.py")
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    argv = ["scene.blend", "--style", str(style_image), "--steps", "7", "--objects", "Chair*", "-o", "out.blend",
            "--texture-size", "64", "--style-map", f"Wood={style_image}", "--loss", "adain"]
    args, fields = batch.parse(argv)
    monkeypatch.setattr(batch, "nst3d_here", lambda: False)
    args2, fields2 = batch.parse(argv)
    assert fields2 == fields
    assert (args2.scene, args2.output, args2.objects) == (args.scene, args.output, args.objects) \
        == (Path("scene.blend"), Path("out.blend"), ["Chair*"])
    assert fields["options"]["steps"] == 7 and fields["options"]["loss"] == "adain"
    assert fields["texture_size"] == 64 and fields["style_map"] == {"Wood": [str(style_image.resolve())]}
    with pytest.raises(batch.BatchError, match="steps"):
        batch.parse(["scene.blend", "--style", str(style_image), "--steps", "x", "-o", "o.blend"])
