"""Loading meshes into texture slots: real trimesh/open3d on small files the tests write."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from nst3d.backends.mesh.load import load_mesh
from nst3d.backends.mesh.raster import rasterize_uv
from nst3d.backends.mesh.regions import match_style_map
from nst3d.backends.mesh.uv import bake_texture, make_atlas, uv_layout_ok
from nst3d.errors import UserError
from nst3d.files import save_image
from tests.mesh_data import (
    PALETTE,
    checker,
    icosphere,
    palette_sphere_glb,
    textured_obj,
    textured_quad_glb,
    two_object_glb,
    write_glb,
)


def test_glb_texture_becomes_a_slot_with_its_uvs_and_resolution(tmp_path):
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb", size=16))
    assert len(asset.slots) == 1 and not asset.slots[0].generated
    slot = asset.slots[0]
    assert slot.texture.shape == (3, 16, 16)
    assert torch.allclose(slot.texture, torch.from_numpy(checker(16)).permute(2, 0, 1).float() / 255)
    assert np.allclose(asset.primitives[0].uv, [[0, 0], [1, 0], [1, 1], [0, 1]])
    assert slot.coverage.all()


def test_texture_size_resamples(tmp_path):
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb", size=16), texture_size=8)
    assert asset.slots[0].texture.shape == (3, 8, 8)


def test_obj_mtl_texture_keeps_orientation(tmp_path):
    asset = load_mesh(textured_obj(tmp_path / "obj"))
    slot = asset.slots[0]
    assert not slot.generated and slot.name == "Paint"
    prim = asset.primitives[0]
    # The vertex at the top-left corner (-0.5, 0.5) maps to the texture's top-left texel (green cell).
    corner = np.argmin(np.linalg.norm(prim.positions - [-0.5, 0.5, 0], axis=1))
    u, v = prim.uv[corner]
    row, col = min(int(v * 16), 15), min(int(u * 16), 15)
    assert slot.texture[:, row, col].tolist() == pytest.approx([30 / 255, 200 / 255, 30 / 255], abs=1e-3)


def test_uvless_objects_get_an_atlas_and_their_base_colour(tmp_path):
    asset = load_mesh(two_object_glb(tmp_path / "two.glb"))
    names = {s.name: s for s in asset.slots}
    ball = names["Ball"]
    assert ball.generated and "BallMat" in ball.aliases
    prim = next(p for p in asset.primitives if p.name == "Ball")
    assert prim.vertex_map is not None and len(prim.uv) == len(prim.positions) >= 42
    assert uv_layout_ok(prim.uv, prim.faces)
    # Geometry is unchanged: every atlas vertex is one of the original positions.
    sphere = np.asarray(icosphere(1).vertices) * 0.4
    assert np.allclose(prim.positions, sphere[prim.vertex_map], atol=1e-6)
    # The texture starts from the base colour (0.2, 0.6, 0.3 linear -> sRGB).
    colour = ball.texture[:, 0, 0]
    assert colour.tolist() == pytest.approx([0.4845, 0.7969, 0.5838], abs=2e-3)
    assert 0.2 < ball.coverage.float().mean() < 1


def test_ply_without_uvs_and_stl_load(tmp_path):
    sphere = icosphere(1)
    sphere.export(tmp_path / "ball.ply")
    sphere.export(tmp_path / "ball.stl")
    for name in ("ball.ply", "ball.stl"):
        asset = load_mesh(tmp_path / name)
        assert asset.face_count == len(sphere.faces)
        assert asset.slots[0].generated
        # Named after the file without its suffix (texture ball_styled_ball.png), and --style-map takes either.
        assert asset.slots[0].name == "ball" and {"ball", name} <= asset.slots[0].aliases


def test_overlapping_uvs_are_replaced_by_an_atlas(tmp_path):
    sphere = icosphere(1)
    uv = np.zeros((len(sphere.vertices), 2)) + 0.5  # collapsed: every vertex on one texel
    write_glb(tmp_path / "bad_uv.glb", [{"name": "Ball", "positions": np.asarray(sphere.vertices),
                                         "faces": np.asarray(sphere.faces), "uv": uv, "color": (1, 1, 1, 1)}])
    asset = load_mesh(tmp_path / "bad_uv.glb")
    assert asset.primitives[0].vertex_map is not None


def test_a_palette_texture_is_baked_into_a_new_atlas_that_can_carry_strokes(tmp_path):
    asset = load_mesh(palette_sphere_glb(tmp_path / "gem.glb"), texture_size=64)
    assert any("colour palette" in w for w in asset.warnings)
    slot, prim = asset.slots[0], asset.primitives[0]
    assert slot.generated and slot.texture.shape == (3, 64, 64) and "GemMat" in slot.aliases
    assert prim.vertex_map is not None and uv_layout_ok(prim.uv, prim.faces)
    # Every texel a triangle covers shows that triangle's swatch (the atlas keeps the triangle order).
    face, _ = rasterize_uv(prim.uv, prim.faces, 64, 64)
    covered = face >= 0
    assert covered.mean() > 0.3
    expected = torch.from_numpy(PALETTE[0][face[covered] % 4]).float().T / 255
    assert torch.allclose(slot.texture[:, torch.from_numpy(covered)], expected, atol=1e-6)


def test_bake_samples_the_edge_swatch_at_uv_one_and_wraps_outside():
    palette = torch.from_numpy(PALETTE).permute(2, 0, 1).float() / 255  # [3, 1, 4]
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for u, swatch in ((1.0, 3), (1.3, 1), (-0.1, 3)):
        baked = bake_texture(uv, np.array([[0, 1, 2]]), np.full((3, 2), [u, 0.5]), palette, 8)
        assert torch.allclose(baked[:, 0, 0], palette[:, 0, swatch])


def test_keep_uv_layouts_leaves_palettes_and_overlapping_uvs_in_place(tmp_path):
    asset = load_mesh(palette_sphere_glb(tmp_path / "gem.glb"), keep_uv_layouts=True)
    assert not asset.slots[0].generated and asset.slots[0].texture.shape == (3, 1, 4)
    assert asset.primitives[0].vertex_map is None
    assert any("only its colours can change" in w for w in asset.warnings)
    sphere = icosphere(1)
    collapsed = np.full((len(sphere.vertices), 2), 0.5)
    write_glb(tmp_path / "bad_uv.glb", [{"name": "Ball", "positions": np.asarray(sphere.vertices),
                                         "faces": np.asarray(sphere.faces), "uv": collapsed, "color": (1, 1, 1, 1)}])
    assert load_mesh(tmp_path / "bad_uv.glb", keep_uv_layouts=True).primitives[0].vertex_map is None


def test_an_atlas_charts_a_non_manifold_mesh_and_is_the_same_on_every_run():
    sphere = icosphere(1)
    faces = np.asarray(sphere.faces)
    fin = np.array([[faces[0, 0], faces[0, 1], len(sphere.vertices)]])  # a third triangle on one edge
    faces = np.concatenate([faces, fin])
    positions = np.concatenate([np.asarray(sphere.vertices), [[0.0, 0.0, 3.0]]])
    notes: list[str] = []
    vertex_map, new_faces, uv = make_atlas(positions, faces, 256, notes, "Fin")
    assert not notes  # charted, not the one-cell-per-triangle fallback
    assert len(new_faces) == len(faces) and uv_layout_ok(uv, new_faces)
    corners = uv[new_faces]  # [f, 3, 2]
    e1, e2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]  # np.cross of 2-vectors fails on numpy 2
    area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) / 2
    assert (area > 0).all()  # the fin too
    np.testing.assert_array_equal(positions[vertex_map][new_faces], positions[faces])
    again = make_atlas(positions, faces, 256, [], "Fin")
    for first, second in zip((vertex_map, new_faces, uv), again, strict=True):
        np.testing.assert_array_equal(first, second)  # --seed reproduces a run on an atlased mesh


def test_rasterize_uv_finds_the_covering_triangle():
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    face, bary = rasterize_uv(uv, np.array([[0, 1, 2]]), 8, 8)
    assert face[0, 0] == 0 and face[7, 7] == -1
    assert bary.shape == (8, 8, 2)


def test_missing_texture_warns_and_uses_the_base_colour(tmp_path):
    asset = load_mesh(textured_obj(tmp_path / "obj", write_texture=False))
    assert any("not found" in w for w in asset.warnings)
    assert asset.slots[0].generated


def test_an_obj_with_uvs_and_no_material_library_says_how_to_give_its_texture(tmp_path):
    path = tmp_path / "quad.obj"  # like Spot's OBJ: its texture lives beside it, named nowhere
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                    "f 1/1 2/2 3/3\nf 1/1 3/3 4/4\n")
    assert any("names no material library" in w and "--texture IMAGE" in w for w in load_mesh(path).warnings)
    image = tmp_path / "t.png"
    save_image(torch.rand(3, 8, 8), image)
    assert load_mesh(path, texture=image).warnings == []
    plain = tmp_path / "plain.obj"
    plain.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 3\n")  # no UVs: nothing to say
    assert load_mesh(plain).warnings == []


def test_missing_gltf_image_file_warns(tmp_path):
    path = textured_quad_glb(tmp_path / "quad.glb")
    from nst3d.backends.mesh import gltf as G

    gltf = G.read_gltf(path)
    gltf.json["images"][0] = {"uri": "missing.png"}
    G.write_glb(gltf, tmp_path / "broken.glb")
    asset = load_mesh(tmp_path / "broken.glb")
    assert any("missing.png" in w for w in asset.warnings)
    assert asset.slots[0].generated


@pytest.mark.parametrize("content,message", [
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "zero faces"),
    ("v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n", "non-finite"),
])
def test_bad_meshes_are_one_line_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.obj"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_mesh(path)


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "model.fbx").write_bytes(b"not really")
    with pytest.raises(UserError, match="unsupported mesh format"):
        load_mesh(tmp_path / "model.fbx")
    with pytest.raises(UserError, match="not found"):
        load_mesh(tmp_path / "nothing.glb")
    (tmp_path / "junk.glb").write_bytes(b"garbage that is not a glb")
    with pytest.raises(UserError):
        load_mesh(tmp_path / "junk.glb")


def test_truncated_glb_files_are_one_line_user_errors(tmp_path):
    raw = two_object_glb(tmp_path / "two.glb").read_bytes()
    for name, cut in (("json_cut.glb", 40), ("bin_cut.glb", len(raw) - 16)):
        (tmp_path / name).write_bytes(raw[:cut])
        with pytest.raises(UserError, match=f"{name} is a truncated GLB file"):
            load_mesh(tmp_path / name)
    text = b'{"asset": {"version": "2.0"'  # a whole chunk, but its JSON is cut short
    (tmp_path / "bad_json.glb").write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text))
                                            + struct.pack("<II", len(text), 0x4E4F534A) + text)
    with pytest.raises(UserError, match="JSON chunk does not parse"):
        load_mesh(tmp_path / "bad_json.glb")


def test_style_map_names_must_exist(tmp_path):
    asset = load_mesh(two_object_glb(tmp_path / "two.glb"))
    aliases = [s.aliases for s in asset.slots]
    groups = match_style_map(["Ball"], aliases)
    assert sorted(groups) == [0, 1]
    with pytest.raises(UserError, match="no material or object"):
        match_style_map(["Nothing"], aliases)


def test_sample_scene_is_deterministic_and_mixes_textured_and_uvless_objects(tmp_path):
    from nst3d.sample_scene import write_sample_scene

    first = write_sample_scene(tmp_path / "a.glb").read_bytes()
    assert first == write_sample_scene(tmp_path / "b.glb").read_bytes()
    asset = load_mesh(tmp_path / "a.glb", texture_size=64)
    kinds = {s.name: s.generated for s in asset.slots}
    assert len(asset.instances) == 6
    assert [kinds[n] for n in ("BallPaint", "CratePaint", "PedestalPaint")] == [False, False, False]
    assert [kinds[n] for n in ("Ring", "Gem", "Cone")] == [True, True, True]
