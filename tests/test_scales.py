"""Scales in world units (nst3d.scales), close-up held-out views and the mesh backend's multi-scale pool, on
real meshes through the real ray caster."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nst3d.backends.mesh.backend import MeshBackend, close_shares
from nst3d.backends.mesh.gbuffer import Rasterizer
from nst3d.backends.mesh.load import load_mesh
from nst3d.backends.mesh.surface import area_sample, centre_depth, visible_surface_views
from nst3d.cameras import Cameras, intrinsics, look_at
from nst3d.held_out import close_up_views
from nst3d.scales import WHOLE_FRACTION, octave_heights, surface_cameras, world_style_levels, zoomed
from tests.mesh_data import write_glb


def project(cameras: Cameras, points: torch.Tensor) -> torch.Tensor:
    """[V, 2] pixel positions of one point per camera (points [V, 3])."""
    cam = torch.einsum("vij,vj->vi", cameras.world_to_cam[:, :3, :3], points) + cameras.world_to_cam[:, :3, 3]
    pixel = torch.einsum("vij,vj->vi", cameras.K, cam)
    return pixel[:, :2] / pixel[:, 2:]


def test_octaves_halve_from_below_the_whole_object_down_to_the_stroke_scale():
    assert octave_heights(0.1, 2.0) == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert all(h < WHOLE_FRACTION * 2.0 for h in octave_heights(0.1, 2.0))
    assert octave_heights(5.0, 2.0) == [5.0]  # a stroke scale as large as the object still gets its octave


def test_surface_cameras_look_at_the_point_and_cover_the_view_height():
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    normals = torch.tensor([[0.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    cameras = surface_cameras(points, normals, 0.5, 64, 48)
    assert torch.allclose(project(cameras, points), torch.tensor([[32.0, 24.0]] * 2), atol=1e-3)
    down = cameras.cam_to_world[:, :3, 1]  # OpenCV y: image down, in world space
    top, bottom = project(cameras, points - 0.25 * down), project(cameras, points + 0.25 * down)
    assert torch.allclose(bottom[:, 1] - top[:, 1], torch.tensor([48.0, 48.0]), atol=0.05)  # 0.5 units = height
    eyes = cameras.centers
    assert torch.allclose(torch.nn.functional.normalize(eyes - points, dim=-1),
                          torch.nn.functional.normalize(normals, dim=-1), atol=1e-5)


def test_zoom_magnifies_about_the_chosen_pixel():
    K = intrinsics(40, 40, 40.0)[None]
    cameras = Cameras(look_at(torch.tensor([[0.0, 0.0, 5.0]]), torch.zeros(3)), K, 40, 40)
    point = torch.tensor([[0.3, -0.2, 0.0]])
    pixel = project(cameras, point)
    crop = zoomed(cameras, 4.0, pixel)
    assert torch.allclose(project(crop, point), torch.tensor([[20.0, 20.0]]), atol=1e-3)
    offset = torch.tensor([[0.05, 0.0, 0.0]])
    assert torch.allclose(project(crop, point + offset) - project(crop, point),
                          4 * (project(cameras, point + offset) - pixel), atol=1e-3)


def test_close_up_partners_turn_about_the_surface_point():
    points, normals = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    held = close_up_views(points, normals, 0.4, 32, 32)
    assert held.view_height == 0.4
    for cameras in (held.anchors, held.short, held.long):
        assert torch.allclose(project(cameras, points), torch.tensor([[16.0, 16.0]]), atol=1e-3)
    anchor_dir = held.anchors.centers - points
    long_dir = held.long.centers - points
    cos = float(torch.nn.functional.cosine_similarity(anchor_dir, long_dir))
    assert math.degrees(math.acos(cos)) == pytest.approx(45.0, abs=0.1)
    assert float(long_dir.norm()) == pytest.approx(float(anchor_dir.norm()))


def sphere_and_plate(path):
    """A unit sphere at the origin and a plate in front of its +z half (it hides that half from close views)."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    plate = trimesh.creation.box(extents=(3.0, 3.0, 0.05))
    plate.apply_translation((0, 0, 1.3))
    return write_glb(path, [{"name": "Ball", "positions": sphere.vertices, "faces": sphere.faces, "uv": None},
                            {"name": "Plate", "positions": plate.vertices, "faces": plate.faces, "uv": None}])


def test_area_sampling_is_uniform_over_the_surface(tmp_path):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    path = write_glb(tmp_path / "s.glb", [{"name": "S", "positions": sphere.vertices, "faces": sphere.faces,
                                           "uv": None}])
    mesh = load_mesh(path).world()
    points, normals = area_sample(mesh, 4000, torch.Generator().manual_seed(0))
    assert torch.allclose(points.norm(dim=1), torch.ones(4000), atol=0.02)
    assert float((points * normals).sum(1).min()) > 0.95  # outward normals
    upper = float((points[:, 1] > 0).float().mean())  # half the area lies above the equator
    assert upper == pytest.approx(0.5, abs=0.04)


def test_close_views_see_their_point_and_skip_hidden_ones(tmp_path):
    asset = load_mesh(sphere_and_plate(tmp_path / "sp.glb"))
    rasterizer = Rasterizer(asset.world())
    points, directions = visible_surface_views(rasterizer, 200, 0.3, 32, torch.Generator().manual_seed(1))
    assert len(points) > 50
    cameras = surface_cameras(points, directions, 0.3, 32, 32)
    distance = 0.15 / math.tan(math.radians(20))
    assert torch.allclose(centre_depth(rasterizer, cameras), torch.full((len(points),), distance), rtol=0.011)
    on_sphere = (points.norm(dim=1) - 1).abs() < 0.02
    # A camera 0.41 out along the normal of a sphere point with z > 0.91 would be behind the plate (z 1.275):
    # the plate hides those points, which are never chosen; points nearer the equator are seen from between.
    assert not bool(((points[:, 2] > 0.92) & on_sphere).any())
    assert bool(((points[:, 2] > 0.5) & on_sphere).any())
    assert bool(((points[:, 2] < -0.5) & on_sphere).any())


def test_the_pool_has_every_scale_and_the_residual_follows_the_finest(tmp_path):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3)
    uv = np.stack([np.arctan2(sphere.vertices[:, 0], sphere.vertices[:, 2]) / (2 * np.pi) + 0.5,
                   np.arccos(np.clip(sphere.vertices[:, 1], -1, 1)) / np.pi], axis=1)
    texture = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    path = write_glb(tmp_path / "t.glb", [{"name": "T", "positions": sphere.vertices, "faces": sphere.faces,
                                           "uv": uv, "texture": texture}])
    asset = load_mesh(path)
    whole = MeshBackend(asset, size=32, views_per_step=5, pool_size=15, multi_scale=False)
    fine = MeshBackend(asset, size=32, views_per_step=5, pool_size=15, stroke_scale=0.25)
    assert set(whole.view_heights.tolist()) == {0.0}
    heights = sorted(set(fine.view_heights.tolist()))
    assert heights == pytest.approx([0.0, 0.25, 0.5, 1.0, 2.0])  # octaves below 0.6 x the diagonal (3.46)
    counts = [int((fine.view_heights == h).sum()) for h in heights]  # whole, then finest to coarsest
    assert counts[0] == 6 and counts[1] == max(counts[1:]) and sum(counts) == 15  # 40% whole; finest the most
    for batch in fine.batches:  # every batch mixes whole-object and close views
        heights_in_batch = fine.view_heights[batch.key * 5:(batch.key + 1) * 5]
        assert bool((heights_in_batch == 0).any()) and bool((heights_in_batch > 0).any())
    # A view 0.25 units high at 32 px needs about 4x the texels of a whole-object view (~1.1 units high).
    assert fine.residual_sides[0] >= 2 * whole.residual_sides[0]


def test_close_octaves_share_the_pool_by_the_views_they_need():
    assert close_shares(20, [0.25, 0.5], area=4.0) == [10, 2]  # 8 whole; 64 vs 16 tiles -> 9.6 : 2.4
    assert close_shares(20, [0.1, 0.2, 0.4, 0.8], area=4.0) == [8, 2, 1, 1]  # every octave gets a view
    assert close_shares(20, [], area=4.0) == []
    assert sum(close_shares(48, [0.1, 0.2, 0.4], area=1.0)) == 48 - round(48 * 0.4)


def test_a_texture_too_small_for_the_stroke_scale_is_raised_with_a_warning(tmp_path):
    from tests.mesh_data import textured_quad_glb

    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb", size=16))
    raised = MeshBackend(asset, size=32, views_per_step=2, pool_size=4, stroke_scale=0.2, largest_side=128)
    side = raised.residual_sides[0]
    assert side > 16 and raised.pyramids[0].base.shape[-1] == min(side, 128)
    assert any("raised from 16" in note for note in raised.notes)
    assert raised.stylized_textures()[0].shape[-1] == min(side, 128)  # the export carries the finer texture
    kept = MeshBackend(asset, size=32, views_per_step=2, pool_size=4, stroke_scale=0.2, raise_textures=False)
    assert kept.pyramids[0].base.shape[-1] == 16 and any("--texture-size" in note for note in kept.notes)


def test_world_sizing_asks_each_view_for_the_style_at_the_stroke_scales_size(tmp_path):
    heights = torch.tensor([0.0, 0.25, 0.5, 0.25, 1.0, 0.0])
    assert world_style_levels(heights, 0.25).tolist() == [0.125, 1.0, 0.5, 1.0, 0.25, 0.125]
    assert world_style_levels(torch.zeros(3), 0.25).tolist() == [0.5] * 3  # no close views: one octave up
    odd = 0.0499123  # not a float32: the levels must still be exact powers of two (they name the targets)
    assert world_style_levels(torch.tensor([odd, 2 * odd, 0.0]), odd).tolist() == [1.0, 0.5, 0.25]
    from tests.mesh_data import textured_quad_glb

    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb", size=16))
    world = MeshBackend(asset, size=32, views_per_step=3, pool_size=9, stroke_scale=0.25, stroke_sizing="world")
    want = world_style_levels(world.view_heights, 0.25)
    assert world.style_levels == tuple(sorted(set(want.tolist()))) and len(world.style_levels) >= 2
    for batch in world.batches:
        assert torch.equal(batch.style_levels, want[batch.key * 3:(batch.key + 1) * 3])
        assert torch.equal(world.render(batch).style_levels, batch.style_levels)
    view = MeshBackend(asset, size=32, views_per_step=3, pool_size=9, stroke_scale=0.25)
    assert view.style_levels == (1.0,) and view.render(view.batches[0]).style_levels is None
    with pytest.raises(ValueError, match="stroke sizing"):
        MeshBackend(asset, size=32, views_per_step=3, pool_size=3, stroke_sizing="screen")


def test_world_sizing_is_refused_where_it_is_not_built(tmp_path, random_weights_file, capsys):
    from nst3d.cli import main
    from nst3d.files import save_image

    save_image(torch.rand(3, 16, 16), tmp_path / "c.png")
    code = main(["image", str(tmp_path / "c.png"), "--style", str(tmp_path / "c.png"), "-o", str(tmp_path / "o.png"),
                 "--weights", str(random_weights_file), "--stroke-sizing", "world", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "--stroke-sizing world is built for meshes" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_the_residual_holds_a_texel_per_pixel_of_the_finest_views(tmp_path):
    """The unit quad seen 0.35 units high at 32 px: ~91 pixels per unit along the normal (~80 at the median with
    the views' tilt). Rounding the need to the nearest power of two gave 64 texels (1.4 pixels a texel);
    rounding up gives 128."""
    from tests.mesh_data import textured_quad_glb

    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb", size=16))
    backend = MeshBackend(asset, size=32, views_per_step=2, pool_size=6, stroke_scale=0.35)
    side = backend.residual_sides[0]
    assert side >= 32 / 0.35 * 0.85 and side & (side - 1) == 0  # >= the median need, a power of two
    assert side < 2 * 32 / 0.35  # and not a power of two more than that


def test_the_residual_may_grow_with_the_view_size(tmp_path):
    """A stroke scale far below the texture's texel size asks for more texels than any cap: the cap is 1024 up to
    256 px views and 4 texels per view pixel row above, so larger renders do not magnify the residual."""
    from tests.mesh_data import textured_quad_glb

    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb", size=16))
    small = MeshBackend(asset, size=32, views_per_step=2, pool_size=2, stroke_scale=0.01)
    large = MeshBackend(asset, size=300, views_per_step=2, pool_size=2, stroke_scale=0.01, supersample=1)
    assert small.residual_sides == [1024] and large.residual_sides == [1200]
    assert large.pyramids[0].base.shape[-1] == 1200 and any("capped" in note for note in large.notes)


def test_the_stroke_scale_reaches_the_worker_the_batch_and_the_blender_panel(tmp_path):
    import argparse
    import importlib.util

    from nst3d.batch.jobs import row_to_job
    from nst3d.cli import build_parser
    from nst3d.worker import options_from_dict

    assert options_from_dict({"styles": ["s.png"], "stroke_scale": 0.05}, tmp_path).stroke_scale == 0.05
    with pytest.raises(Exception, match="stroke_scale"):
        options_from_dict({"styles": ["s.png"], "stroke_scale": -1}, tmp_path)
    (tmp_path / "a.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "s.png").write_bytes(b"")
    parser: argparse.ArgumentParser = build_parser()
    job = row_to_job(2, {"input": "a.obj", "style": "s.png", "stroke_scale": "0.25"}, tmp_path, [], parser)
    assert job.args[-2:] == ["--stroke-scale", "0.25"]
    spec = importlib.util.spec_from_file_location("option_schema", Path(__file__).parents[1] / "blender_addon" /
                                                  "option_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "stroke_scale" in str(module.__dict__)
