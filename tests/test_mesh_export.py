"""Exported files reload with the same geometry and UVs and the new textures (real trimesh + our reader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nst3d.backends.mesh import gltf as G
from nst3d.backends.mesh.export import export_asset
from nst3d.backends.mesh.load import load_mesh
from tests.mesh_data import checker, palette_sphere_glb, textured_obj, textured_quad_glb, two_object_glb


def inverted(asset) -> list[torch.Tensor]:
    return [1 - s.texture for s in asset.slots]


def world_triangles(asset) -> np.ndarray:
    """Sorted world-space triangle corner positions: geometry independent of vertex order/splitting."""
    w = asset.world()
    tri = np.round(w.vertices[w.faces], 5)  # [F, 3, 3]
    return tri[np.lexsort(tri.reshape(len(tri), -1).T)]


def test_glb_round_trip_keeps_geometry_and_uvs_with_new_textures(tmp_path):
    source = textured_quad_glb(tmp_path / "quad.glb")
    asset = load_mesh(source)
    written = export_asset(asset, inverted(asset), tmp_path / "out", "quad_styled")
    again = load_mesh(written["asset"])
    assert np.allclose(world_triangles(again), world_triangles(asset))
    assert np.allclose(again.primitives[0].uv, asset.primitives[0].uv)
    expected = 1 - torch.from_numpy(checker(16)).permute(2, 0, 1).float() / 255
    assert torch.allclose(again.slots[0].texture, expected, atol=1 / 255)
    assert written["textures"][0].is_file()
    # trimesh (another reader) agrees.
    import trimesh

    scene = trimesh.load(written["asset"], force="scene")
    mesh = next(iter(scene.geometry.values()))
    assert len(mesh.faces) == 2 and mesh.visual.material.baseColorTexture.size == (16, 16)


def test_atlased_objects_get_new_uvs_and_material_keeping_everything_else(tmp_path):
    source = two_object_glb(tmp_path / "two.glb")
    gltf = G.read_gltf(source)
    gltf.json["extras"] = {"author": "test"}
    gltf.json["nodes"].append({"name": "Parent", "children": [0]})
    gltf.json["scenes"][0]["nodes"] = [1, 2]
    G.write_glb(gltf, tmp_path / "hier.glb")
    asset = load_mesh(tmp_path / "hier.glb")
    written = export_asset(asset, inverted(asset), tmp_path / "out", "hier_styled")
    doc = G.read_gltf(written["asset"]).json
    assert doc["extras"] == {"author": "test"} and doc["nodes"][2]["children"] == [0]
    ball = next(m for m in doc["meshes"] if m["name"] == "Ball")["primitives"][0]
    assert "TEXCOORD_0" in ball["attributes"] and doc["materials"][ball["material"]]["name"] == "Ball_nst3d"
    again = load_mesh(written["asset"])
    assert np.allclose(world_triangles(again), world_triangles(asset))
    ball_slot = next(s for s in again.slots if "Ball" in s.aliases)
    assert not ball_slot.generated  # it has a texture of its own now
    assert torch.allclose(ball_slot.texture, 1 - next(s for s in asset.slots if s.name == "Ball").texture,
                          atol=1 / 255)


def test_a_palette_asset_exports_its_new_atlas_beside_the_original_uvs(tmp_path):
    asset = load_mesh(palette_sphere_glb(tmp_path / "gem.glb"), texture_size=64)
    written = export_asset(asset, inverted(asset), tmp_path / "out", "gem_styled")
    prim = G.read_gltf(written["asset"]).json["meshes"][0]["primitives"][0]
    assert {"TEXCOORD_0", "TEXCOORD_1"} <= set(prim["attributes"])  # the palette UVs stay for other maps
    again = load_mesh(written["asset"])
    assert np.allclose(world_triangles(again), world_triangles(asset))
    assert not again.slots[0].generated and not any("palette" in w for w in again.warnings)
    assert torch.allclose(again.slots[0].texture, 1 - asset.slots[0].texture, atol=1 / 255)


def test_obj_export_writes_mtl_and_pngs_that_trimesh_reads(tmp_path):
    asset = load_mesh(textured_obj(tmp_path / "obj"))
    written = export_asset(asset, inverted(asset), tmp_path / "out", "quad_styled", fmt="obj")
    assert written["asset"].suffix == ".obj" and written["material_library"].is_file()
    again = load_mesh(written["asset"])
    assert np.allclose(world_triangles(again), world_triangles(asset))
    assert torch.allclose(again.slots[0].texture, 1 - asset.slots[0].texture, atol=1 / 255)


def test_non_gltf_input_exports_a_fresh_glb(tmp_path):
    asset = load_mesh(textured_obj(tmp_path / "obj"))
    written = export_asset(asset, inverted(asset), tmp_path / "out", "quad_styled")
    again = load_mesh(written["asset"])
    assert np.allclose(world_triangles(again), world_triangles(asset))
    corner = np.argmin(np.linalg.norm(again.primitives[0].positions - [-0.5, 0.5, 0], axis=1))
    assert np.allclose(again.primitives[0].uv[corner], [0, 0], atol=1e-6)


def test_unknown_format_is_refused(tmp_path):
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb"))
    with pytest.raises(ValueError):
        export_asset(asset, inverted(asset), tmp_path / "out", "x", fmt="fbx")
