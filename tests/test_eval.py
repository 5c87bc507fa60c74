"""The evaluation metrics on an analytic scene (a ray-traced sphere with a procedural surface colour)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from nst3d.backends.base import Render
from nst3d.cameras import Cameras
from nst3d.eval import (
    HeldOutViews,
    backward_warp,
    consistency,
    evaluate,
    evaluate_renders,
    half_pixel_resample,
    held_out_directions,
    held_out_views,
    per_view_baseline,
    sphere_framer,
)
from nst3d.losses import Objective, StyleTarget
from nst3d.stylize import LoopConfig

SIZE = 48


def sphere_render(cameras: Cameras, colour=None) -> Render:
    """Ray-trace a unit sphere at the origin; colour(points [V, H, W, 3]) -> [V, H, W, 3]."""
    origins, dirs = cameras.rays()  # t along dirs = camera z
    b = (origins * dirs).sum(-1)
    a = (dirs * dirs).sum(-1)
    c = (origins * origins).sum(-1) - 1.0
    disc = b * b - a * c
    hit = disc > 0
    t = torch.where(hit, (-b - disc.clamp(min=0).sqrt()) / a, torch.zeros_like(a))
    points = origins + t[..., None] * dirs
    colour = colour or (lambda p: 0.5 + 0.4 * torch.sin(3 * p))
    rgb = torch.where(hit[..., None], colour(points), torch.ones_like(points))
    mask = hit.float()[:, None]
    return Render(rgb.permute(0, 3, 1, 2), mask, (t * hit)[:, None])


def held() -> HeldOutViews:
    return held_out_views(sphere_framer(torch.zeros(3), 1.0, SIZE, SIZE), count=3)


def test_directions_are_turned_by_the_asked_angles():
    anchors, short, long = held_out_directions(4, 5.0, 45.0)
    angle = lambda a, b: torch.rad2deg(torch.arccos((a * b).sum(-1).clamp(-1, 1)))
    # Turning about the up axis: the angle between directions is below the turn where the view is elevated.
    assert (angle(anchors, short) <= 5.0 + 1e-3).all() and (angle(anchors, short) > 4.0).all()
    assert (angle(anchors, long) <= 45.0 + 1e-3).all() and (angle(anchors, long) > 35.0).all()
    assert torch.allclose(anchors.norm(dim=-1), torch.ones(4))


def test_warp_of_a_view_into_itself_is_the_identity():
    views = held()
    cams = views.anchors
    r = sphere_render(cams)
    warped, valid = backward_warp(r.rgb, r.depth, r.mask, cams, r.depth, r.mask, cams)
    assert valid.sum() > 0.5 * r.mask.sum()
    assert torch.allclose(warped * valid, r.rgb * valid, atol=1e-4)


def test_consistent_colours_are_near_the_floor_and_per_view_noise_is_high():
    views = held()
    r = sphere_render(views.all())
    same = consistency(r, views)
    assert same["short_range"] < 0.03 and same["long_range"] < 0.05
    assert same["covisible"]["short_range"] > 0.8 and same["covisible"]["long_range"] > 0.4
    generator = torch.Generator().manual_seed(0)
    noisy = Render((r.rgb + 0.2 * torch.randn(r.rgb.shape, generator=generator)).clamp(0, 1), r.mask, r.depth)
    bad = consistency(noisy, views)
    assert bad["short_range"] > 5 * same["short_range"] and bad["short_range"] > 0.15
    assert bad["long_range"] > 0.15


def test_occluded_points_fail_the_depth_test():
    views = held()
    cams = views.anchors
    r = sphere_render(cams)
    # A second "view" whose depth claims something sits in front of the sphere everywhere.
    blocker = Render(r.rgb, r.mask, r.depth * 0.5)
    _, valid = backward_warp(blocker.rgb, blocker.depth, blocker.mask, cams, r.depth, r.mask, cams)
    assert valid.sum() == 0


def _objective(vgg) -> Objective:
    style = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = StyleTarget.from_images(vgg, [style], ["relu1_1", "relu2_1"])
    return Objective(vgg, target, "relu2_1", content_weight=0.1)


def test_evaluate_reports_before_after_and_baseline(vgg):
    views = held_out_views(sphere_framer(torch.zeros(3), 1.0, 32, 32), count=2)
    objective = _objective(vgg)
    tint = lambda p: (0.5 + 0.4 * torch.sin(3 * p)) * torch.tensor([1.0, 0.6, 0.3])
    report = evaluate(lambda c: sphere_render(c, tint), sphere_render, views, objective,
                      baseline_config=LoopConfig(steps=2, lr=0.02))
    assert report["style_distance"]["before"] > 0 and report["style_distance"]["after"] > 0
    assert report["content_distance"] > 0
    for key in ("short_range", "long_range"):
        assert math.isfinite(report["consistency"][key])
        assert math.isfinite(report["floor"]["consistency"][key])
        assert report["baseline"]["consistency_above_floor"][key] >= 0
    assert report["held_out"]["count"] == 2
    half = report["half_pixel_style_distance"]
    assert set(half) == {"after", "baseline"} and all(math.isfinite(v) and v > 0 for v in half.values())


def test_half_pixel_resample_removes_pixel_grid_patterns_only():
    ys, xs = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((xs + ys) % 2).float().expand(1, 3, 16, 16)
    ramp = (xs / 15.0).float().expand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 2:14, 2:14] = 1
    flat = half_pixel_resample(Render(checker, mask)).rgb
    assert torch.allclose(flat[..., 2:13, 2:13], torch.full_like(flat[..., 2:13, 2:13], 0.5))  # the grid is gone
    assert torch.equal(flat[..., :2, :], checker[..., :2, :])  # the background is kept
    smooth = half_pixel_resample(Render(ramp)).rgb
    assert torch.allclose(smooth[..., :15], ramp[..., :15] + 0.5 / 15)  # a ramp only moves half a pixel


def test_per_view_baseline_changes_only_by_stylizing(vgg):
    views = held_out_views(sphere_framer(torch.zeros(3), 1.0, 32, 32), count=1)
    content = sphere_render(views.anchors)
    out = per_view_baseline(content, _objective(vgg), LoopConfig(steps=3, lr=0.05))
    assert out.rgb.shape == content.rgb.shape and out.depth is content.depth
    inside = content.mask.expand_as(content.rgb) == 1
    assert not torch.allclose(out.rgb[inside], content.rgb[inside])
    assert torch.equal(out.rgb[~inside], content.rgb[~inside])  # the background is not the asset's: it stays


def test_preview_contact_sheet_and_turntables(tmp_path):
    import imageio.v2 as imageio

    from nst3d.preview import composite, contact_sheet, write_turntable

    views = held_out_views(sphere_framer(torch.zeros(3), 1.0, 24, 24), count=2)
    render = sphere_render(views.anchors)
    assert torch.equal(composite(Render(render.rgb, render.mask * 0, None)), torch.ones_like(render.rgb))
    sheet = contact_sheet([render.rgb, render.rgb[:1]], tmp_path / "sheet.png", ["original", "stylized"])
    image = imageio.imread(sheet)
    assert image.shape[0] == 2 * 24 + 3 * 4 and image.shape[1] > 2 * 24
    frames = sphere_render(held_out_views(sphere_framer(torch.zeros(3), 1.0, 25, 25), count=4).anchors).rgb
    gif = write_turntable(frames, tmp_path / "spin.gif")
    assert len(imageio.mimread(gif)) == 4
    mp4 = write_turntable(frames, tmp_path / "spin.mp4")
    reader = imageio.get_reader(mp4)
    assert reader.count_frames() == 4
    reader.close()


# ------------------------------------------------------------------------------------------------- devices
# On a CPU-only machine the only other device is "meta" (shapes without data): an operation that mixes a meta
# tensor with a CPU one fails ("Tensor on device cpu is not on the expected device meta!"), and so does reading
# a number from a meta tensor. Evaluation with the VGG on meta and the renders on the CPU (as the mesh and splat
# backends return held-out views) must therefore reach the point where it reads its first number, with every
# tensor that met the VGG's on meta; before the device rule, the masks stayed on the CPU and the first Gram
# product failed instead.


def on_meta(objective: Objective) -> Objective:
    """The objective with its VGG and style statistics on the meta device."""
    target = objective.target
    moved = {name: {k: v.to("meta") for k, v in getattr(target, name).items()}
             for name in ("grams", "means", "stds", "tokens")}
    return replace(objective, vgg=copy.deepcopy(objective.vgg).to("meta"), target=replace(target, **moved))


def record_inputs(vgg) -> list[torch.device]:
    """The devices of every image that reaches the VGG's forward from now on."""
    seen: list[torch.device] = []
    vgg.register_forward_pre_hook(lambda module, args: seen.append(args[0].device))
    return seen


def test_a_render_keeps_rgb_mask_and_depth_on_one_device():
    rgb, mask = torch.rand(2, 3, 4, 4), torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError, match="mask is on meta and its rgb on cpu"):
        Render(rgb, mask.to("meta"))
    with pytest.raises(ValueError, match="depth is on meta"):
        Render(rgb, mask, mask.to("meta"))
    moved = Render(rgb, mask, mask).to("meta")
    assert {moved.rgb.device.type, moved.mask.device.type, moved.depth.device.type} == {"meta"}
    assert Render(rgb).to("meta").mask is None


def test_evaluation_moves_cpu_renders_to_the_vgg_device(vgg):
    views = held_out_views(sphere_framer(torch.zeros(3), 1.0, 32, 32), count=1)
    objective = on_meta(_objective(vgg))
    seen = record_inputs(objective.vgg)
    content = sphere_render(views.all())
    stylized = Render(content.rgb * 0.9, content.mask, content.depth)
    with pytest.raises(RuntimeError, match="item\\(\\) cannot be called on meta tensors"):
        evaluate_renders(stylized, content, views, objective)
    assert seen and all(device.type == "meta" for device in seen)


def test_the_per_view_baseline_runs_on_the_vgg_device(vgg):
    views = held_out_views(sphere_framer(torch.zeros(3), 1.0, 32, 32), count=1)
    objective = on_meta(_objective(vgg))
    seen = record_inputs(objective.vgg)
    # the loop's one read of a step (nst3d.stylize.host_numbers): every tensor before it met on meta
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        per_view_baseline(sphere_render(views.anchors), objective, LoopConfig(steps=1))
    assert seen and all(device.type == "meta" for device in seen)
