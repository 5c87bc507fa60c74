"""The G-buffer (real open3d ray casting), texture sampling, framing and the backend's gradients."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from nst3d.backends.mesh.backend import MeshBackend
from nst3d.backends.mesh.gbuffer import Rasterizer, mip_chain, sample_trilinear
from nst3d.backends.mesh.load import load_mesh
from nst3d.backends.mesh.render import frame_on_silhouette, turntable_cameras
from nst3d.backends.mesh.texture import TexturePyramid, dilate, enlarge
from nst3d.cameras import Cameras, intrinsics, look_at
from tests.mesh_data import textured_quad_glb, two_object_glb


def front_camera(distance: float = 2.0, size: int = 32, fov: float = 40.0) -> Cameras:
    eye = torch.tensor([[0.0, 0.0, distance]])
    return Cameras(look_at(eye, torch.zeros(3)), intrinsics(size, size, fov)[None], size, size)


def test_gbuffer_of_a_quad_facing_the_camera(tmp_path):
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb"))
    raster = Rasterizer(asset.world())
    gbuf = raster.cast(front_camera())
    centre = (0, 16, 16)
    assert gbuf.face[centre] >= 0 and gbuf.face[0, 0, 0] == -1
    assert math.isclose(float(gbuf.depth[centre]), 2.0, rel_tol=1e-5)
    # The pixel just right of and below the centre sees uv a little right of and below (0.5, 0.5).
    u, v = gbuf.uv[centre].tolist()
    assert 0.5 < u < 0.55 and 0.5 < v < 0.55
    assert torch.allclose(gbuf.normal[centre], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    assert gbuf.slot[centre] == 0 and gbuf.slot[0, 0, 0] == -1
    # Barycentrics reproduce the hit point.
    f = asset.world().faces[int(gbuf.face[centre])]
    b1, b2 = gbuf.bary[centre].tolist()
    p = asset.world().vertices[f]
    point = (1 - b1 - b2) * p[0] + b1 * p[1] + b2 * p[2]
    assert abs(point[2]) < 1e-6 and np.abs(point[:2]).max() < 0.05


def test_level_of_detail_grows_by_one_per_doubling_of_distance(tmp_path):
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb"))
    raster = Rasterizer(asset.world())
    near = raster.cast(front_camera(2.0)).lod[0, 16, 16]
    far = raster.cast(front_camera(4.0)).lod[0, 16, 16]
    assert math.isclose(float(far - near), 1.0, abs_tol=1e-4)


def test_level_of_detail_follows_the_footprints_longer_side_on_a_slanted_surface(tmp_path):
    """Seen 60 degrees off its normal, the quad's pixel footprint is twice as long along the slope: the level
    is one higher than face-on at the same depth (the footprint's area would give half a level, and the texture
    would be undersampled along the slope)."""
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb"))
    raster = Rasterizer(asset.world())
    angle = math.radians(60.0)
    eye = torch.tensor([[2.0 * math.sin(angle), 0.0, 2.0 * math.cos(angle)]])
    slanted = Cameras(look_at(eye, torch.zeros(3)), intrinsics(32, 32, 40.0)[None], 32, 32)
    face_on, tilted = raster.cast(front_camera(2.0)), raster.cast(slanted)
    # At a pixel near the centre: its own depth and slant (|cos| between its ray and the quad's normal +z).
    depth = float(tilted.depth[0, 16, 16])
    slant = float(torch.nn.functional.normalize(slanted.rays()[1][0, 16, 16], dim=0)[2].abs())
    assert 0.45 < slant < 0.55
    longer_side = math.log2(depth / float(face_on.depth[0, 16, 16])) - math.log2(slant)
    assert math.isclose(float(tilted.lod[0, 16, 16] - face_on.lod[0, 16, 16]), longer_side, abs_tol=1e-3)
    assert longer_side > 0.9  # the area's side would be about half that
    # lod - stretch is the footprint's mean side (the residual's texel need is measured on it).
    mean_side = math.log2(depth / float(face_on.depth[0, 16, 16])) - 0.5 * math.log2(slant)
    assert math.isclose(float((tilted.lod - tilted.stretch)[0, 16, 16] - face_on.lod[0, 16, 16]), mean_side,
                        abs_tol=1e-3)
    assert abs(float(face_on.stretch[0, 16, 16])) < 1e-3  # facing the camera: none


def test_supersampling_gives_fractional_coverage_on_edges(tmp_path):
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb"))
    base, fine = Rasterizer(asset.world()).rasterize(front_camera(2.3), supersample=2)
    assert fine.face.shape == (1, 64, 64) and base.face.shape == (1, 32, 32)
    cover = base.coverage
    assert cover.max() == 1 and cover.min() == 0
    assert ((cover > 0) & (cover < 1)).any()


def test_trilinear_sampling_filters_with_distance():
    texture = torch.zeros(1, 3, 8, 8)
    texture[:, :, ::2, ::2] = 1.0  # texel-sized dots: mean 0.25
    mips = mip_chain(texture)
    uv = torch.tensor([[0.3125, 0.3125]])
    sharp = sample_trilinear(mips, uv, torch.tensor([-3.0 - 1]))  # magnified: level 0
    blurred = sample_trilinear(mips, uv, torch.tensor([0.0]))  # one pixel covers the whole texture
    assert sharp[0, 0] > 0.9
    assert abs(float(blurred[0, 0]) - 0.25) < 1e-5


def test_silhouette_framing_fills_the_frame():
    points = torch.tensor([[x, y, z] for x in (-4.0, 4.0) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    side = torch.tensor([[0.0, 0.0, 1.0]])
    cams = frame_on_silhouette(points, side, 64, 64)
    projected = (cams.K[0] @ (cams.world_to_cam[0, :3, :3] @ points.T + cams.world_to_cam[0, :3, 3:]))
    xy = projected[:2] / projected[2:]
    assert xy.min() >= -1e-3 and xy.max() <= 64 + 1e-3
    assert float(xy[0].max() - xy[0].min()) > 0.85 * 64  # the long side fills the width


def test_turntable_holds_the_object_in_every_frame():
    """Looking down at the bounding-box centre, an object's near bottom edge projects lower than a centred
    framing allows for: the ring's distance must count it (a cube reached 68 px of 64, Spot's legs were cut)."""
    for length in (1.0, 2.0, 6.0):
        points = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-length / 2, length / 2)])
        cams = turntable_cameras(points, 12, 64, elevation_degrees=20.0)
        projected = cams.K @ (cams.world_to_cam[:, :3, :3] @ points.T + cams.world_to_cam[:, :3, 3:])
        xy = projected[:, :2] / projected[:, 2:]
        assert xy.min() >= -1e-3 and xy.max() <= 64 + 1e-3, length
        assert float((xy.amax(-1) - xy.amin(-1)).max()) > 0.8 * 64  # and not lost in the frame
        assert torch.allclose(cams.centers.norm(dim=-1), cams.centers.norm(dim=-1)[:1])  # one distance: no zoom


def test_gradients_reach_every_pyramid_level(tmp_path):
    asset = load_mesh(two_object_glb(tmp_path / "two.glb"), texture_size=32)
    backend = MeshBackend(asset, size=24, views_per_step=2, pool_size=4, lr=0.01)
    views = backend.train_views(0, torch.Generator().manual_seed(0))
    render = backend.render(views)
    assert render.rgb.shape == (2, 3, 24, 24) and render.mask.shape == (2, 1, 24, 24)
    assert torch.allclose(render.rgb, views.content)  # the residual starts at zero
    (render.rgb * render.mask).square().sum().backward()
    for pyramid in backend.pyramids:
        assert any(level.grad is not None and level.grad.abs().sum() > 0 for level in pyramid.levels)
    assert all("lr" in g for g in backend.parameters())
    rates = [g["lr"] for g in TexturePyramid(torch.zeros(3, 64, 64), (32, 32), count=3).param_groups(0.01)]
    assert rates == sorted(rates, reverse=True) and rates[0] == 0.01 and len(rates) == 3


def test_content_render_matches_the_full_quality_render(tmp_path):
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb"))
    backend = MeshBackend(asset, size=24, views_per_step=2, pool_size=2)
    views = backend.train_views(0, torch.Generator().manual_seed(0))
    again = backend.render_cameras(views.cameras)
    inside = (views.mask == 1).expand(-1, 3, -1, -1)
    assert torch.allclose(views.content[inside], again.rgb[inside], atol=1e-5)
    assert torch.equal(views.depth, again.depth)


def test_training_render_is_the_final_render_of_the_stylized_texture(tmp_path):
    """A step's render (cached original + residual sampled at every sub-sample) must show what the exported
    texture will show: a sharper training render would let the style live in detail the final render filters
    away."""
    asset = load_mesh(textured_quad_glb(tmp_path / "quad.glb", size=32))
    backend = MeshBackend(asset, size=24, views_per_step=2, pool_size=2, supersample=2, raise_textures=False)
    pyramid = backend.pyramids[0]
    assert pyramid.render_size == (32, 32)  # the texture's own size here, so the comparison is exact
    with torch.no_grad():
        for level in pyramid.levels:
            level.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(level.shape[-1]))
    views = backend.train_views(0, torch.Generator().manual_seed(0))
    trained = backend.render(views).rgb.detach()
    final = backend.render_cameras(views.cameras, [pyramid.texture()])
    inside = (views.mask == 1).expand(-1, 3, -1, -1)
    assert inside.sum() > 500 and (trained - views.content)[inside].abs().mean() > 0.01
    assert torch.allclose(trained[inside], final.rgb[inside], atol=1e-5)


def test_style_groups_split_the_mask(tmp_path):
    asset = load_mesh(two_object_glb(tmp_path / "two.glb"), texture_size=32)
    groups = [1 if s.name == "Ball" else 0 for s in asset.slots]
    backend = MeshBackend(asset, size=24, views_per_step=2, pool_size=2, groups=groups)
    views = backend.train_views(0, torch.Generator().manual_seed(0))
    assert views.mask.shape == (2, 2, 24, 24)
    assert views.mask[:, 0].sum() > 0 and views.mask[:, 1].sum() > 0
    assert views.mask.sum(1).max() <= 1 + 1e-6


def test_pyramid_starts_at_the_base_and_enlarges_smoothly():
    base = torch.rand(3, 32, 32)
    pyramid = TexturePyramid(base, (16, 16), count=3)
    assert [tuple(level.shape[-2:]) for level in pyramid.levels] == [(16, 16), (8, 8)]  # never below 8 texels
    assert torch.equal(pyramid.texture(), base)
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)[None, None]
    smooth = enlarge(checker, (16, 16))
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert smooth[inner].abs().max() < 0.5 * enlarge(checker, (16, 16), "bilinear")[inner].abs().max()


def test_dilation_fills_the_gutter_and_keeps_the_charts():
    texture = torch.zeros(3, 8, 8)
    covered = torch.zeros(8, 8, dtype=torch.bool)
    covered[2:4, 2:4] = True
    texture[:, 2:4, 2:4] = 0.7
    out = dilate(texture, covered, steps=2)
    assert torch.equal(out[:, 2:4, 2:4], texture[:, 2:4, 2:4])
    assert torch.allclose(out[:, 1, 1], torch.full((3,), 0.7)) and torch.allclose(out[:, 5, 5], torch.full((3,), 0.7))
    assert torch.equal(out[:, 7, 7], torch.zeros(3))


def test_sample_matrix_is_the_per_level_gather(tmp_path):
    """The training renders' sparse matrix gives the same pixels and texel gradients as grid_sample per mip
    level (gbuffer.gather), with trilinear weights, two slots and border clamping."""
    from nst3d.backends.mesh.gbuffer import gather, mip_levels, plan_samples
    from nst3d.backends.mesh.resolve import resolve, sample_matrix, stacked

    generator = torch.Generator().manual_seed(0)
    n, pixel_count = 500, 64
    sizes, indices, textures = [(16, 8), (5, 7)], [], []
    for size in sizes:
        uv = torch.rand(n, 2, generator=generator) * 1.2 - 0.1  # some outside [0, 1]: clamped to the border
        lod = torch.rand(n, generator=generator) * 8 - 7
        pixels = torch.randint(0, pixel_count, (n,), generator=generator)
        factor = torch.rand(n, generator=generator)
        indices.append(plan_samples(pixels, uv, lod, size, mip_levels(size), factor))
        textures.append(torch.rand(1, 3, *size, generator=generator, requires_grad=True))
    grad = torch.randn(pixel_count, 3, generator=generator)

    expected = torch.zeros(pixel_count, 3)
    for texture, index in zip(textures, indices, strict=True):
        expected = gather(mip_chain(texture), index, expected)
    expected.backward(grad)
    expected_grads = [t.grad.clone() for t in textures]
    for texture in textures:
        texture.grad = None

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's sparse-CSR notices stay out of the user's terminal
        matrix = sample_matrix(indices, sizes, pixel_count)
    out = resolve(torch.cat([stacked(mip_chain(t)) for t in textures]), matrix)
    out.backward(grad)
    assert torch.allclose(out, expected, atol=1e-5)
    for texture, expected_grad in zip(textures, expected_grads, strict=True):
        assert torch.allclose(texture.grad, expected_grad, atol=1e-5)


def test_fast_halving_and_doubling_match_torch():
    """mip_chain's 2x2 box average and the pyramid's 2x bilinear enlargement (hand-written backward passes)
    equal avg_pool2d and F.interpolate, forward and backward, including odd sides and channels_last."""
    import torch.nn.functional as F

    from nst3d.backends.mesh.texture import bilinear

    generator = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 8, 12), (1, 3, 5, 7), (1, 3, 1, 4)]:
        image = torch.rand(*shape, generator=generator, requires_grad=True)
        size = (2 * shape[2], 2 * shape[3])
        grad = torch.randn(1, 3, *size, generator=generator)
        ours = bilinear(image, size)
        (ours_grad,) = torch.autograd.grad(ours, image, grad)
        theirs = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        (theirs_grad,) = torch.autograd.grad(theirs, image, grad)
        assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(ours_grad, theirs_grad, atol=1e-5)
    image = torch.rand(1, 3, 16, 8, generator=generator).contiguous(memory_format=torch.channels_last)
    image.requires_grad_(True)
    grad = torch.randn(1, 3, 8, 4, generator=generator)
    ours = mip_chain(image)[1]
    (ours_grad,) = torch.autograd.grad(ours, image, grad)
    theirs = F.avg_pool2d(image, 2)
    (theirs_grad,) = torch.autograd.grad(theirs, image, grad)
    assert torch.allclose(ours, theirs, atol=1e-6) and torch.allclose(ours_grad, theirs_grad, atol=1e-6)
