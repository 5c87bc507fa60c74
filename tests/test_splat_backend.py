"""The splat backend and the `nst3d splat` command end to end on a small Gaussian ball made here: colours change,
geometry and opacity stay bit-identical, held-out style distance falls; capture cameras; clean errors."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst3d.backends.splat.backend import SplatBackend
from nst3d.backends.splat.capture import capture_cameras
from nst3d.backends.splat.ply import read_splat, save_gaussians
from nst3d.backends.splat.scene import SplatScene, canonical_to_world, cleanup_mask, robust_bounds, up_vector
from nst3d.errors import UserError
from nst3d.eval import evaluate
from nst3d.losses import Objective, StyleTarget
from nst3d.stylize import LoopConfig, stylize


def ball(n: int = 1500, seed: int = 0) -> dict:
    """Opaque Gaussians on a unit sphere (z up: flattened along z), smoothly coloured, plus a few floaters."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * torch.tensor([1.0, 1.0, 0.6])
    means[:8] *= 6.0  # floaters far out: the framing must ignore them
    colour = 0.5 + 0.35 * d
    return {"means": means, "log_scales": torch.full((n, 3), math.log(0.06)),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1), "opacity_logits": torch.full((n,), 3.0),
            "sh_dc": (colour - 0.5) / 0.28209479177387814, "sh_rest": torch.zeros(n, 3, 3)}


def write_ball_and_style(folder: Path) -> Path:
    """folder/ball.ply (a small splat ball) and folder/style.png (diagonal stripes); returns the folder."""
    save_gaussians(folder / "ball.ply", **ball())
    stripes = (np.indices((64, 64)).sum(0) // 6 % 2).astype(np.uint8)
    style = np.stack([stripes * 230, stripes * 40 + 20, 200 - stripes * 180], -1).astype(np.uint8)
    Image.fromarray(style).save(folder / "style.png")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_ball_and_style(tmp_path_factory.mktemp("splat"))


def test_framing_is_robust_to_floaters_and_finds_up():
    data = ball()
    points = data["means"]
    center, radius = robust_bounds(points)
    assert center.abs().max() < 0.2 and 0.8 < radius < 1.2  # the 8 floaters at 6x do not count
    assert torch.equal(up_vector("auto", points), torch.tensor([0.0, 0.0, 1.0]))
    r = canonical_to_world(torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(r @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)


def scene_from(data: dict) -> SplatScene:
    return SplatScene(data["means"], data["quats"], data["log_scales"].exp(), torch.sigmoid(data["opacity_logits"]),
                      data["sh_dc"], data["sh_rest"], 1)


def test_cleanup_drops_huge_and_needle_gaussians():
    data = ball(200)
    data["log_scales"][0] = math.log(0.5)  # huge
    data["log_scales"][1] = torch.tensor([math.log(0.2), math.log(0.002), math.log(0.002)])  # a needle
    keep = cleanup_mask(scene_from(data), radius=1.0)
    assert not keep[0] and not keep[1] and keep[2:].all()


def test_color_field_shares_colour_between_stacked_gaussians():
    from nst3d.backends.splat.color_field import ColorField

    positions = torch.tensor([[0.10, 0.10, 0.10], [0.101, 0.10, 0.10], [0.9, 0.9, 0.9]])
    field = ColorField(positions, torch.zeros(3), torch.ones(3), finest=8, levels=3)
    assert field.resolutions == [8, 4, 2] and all(len(v) <= 24 for v in field.values)
    assert ColorField(positions, torch.zeros(3), torch.ones(3), finest=4, levels=4).resolutions == [4, 2]  # no repeats
    assert torch.equal(field(), torch.zeros(3, 3))
    for v in field.values:
        v.data.normal_()
    out = field()
    assert (out[0] - out[1]).abs().max() < 0.05 * out[0].abs().max()  # a hair apart: nearly one colour
    assert (out[0] - out[2]).abs().max() > 0.1
    weights = sum(w.sum(-1) for _, w in field.corners)
    assert torch.allclose(weights, torch.full((3,), 3.0))  # trilinear weights sum to 1 per level


def test_stylization_lowers_held_out_style_distance(vgg):
    s = scene_from(ball())
    backend = SplatBackend(s, size=48, views_per_step=2, pool_size=6, seed=0)
    assert len(backend.batches) == 3 and backend.batches[0].plan is not None
    stripes = (torch.arange(48)[None, :] // 5 % 2).float().expand(48, 48)
    style = torch.stack([stripes, 0.2 + 0.0 * stripes, 1 - stripes])
    target = StyleTarget.from_images(vgg, [style], ["relu1_1", "relu2_1", "relu3_1"])
    objective = Objective(vgg, target, "relu2_2", content_weight=0.02)
    geometry = [t.clone() for t in (s.means, s.quats, s.scales, s.opacities)]
    stylize(backend, objective, LoopConfig(steps=25, lr=0.05))
    held = backend.held_out(2)
    report = evaluate(lambda c: backend.render_cameras(c, "stylized"), lambda c: backend.render_cameras(c, "original"),
                      held, objective)
    assert report["style_distance"]["after"] < 0.7 * report["style_distance"]["before"]
    assert report["consistency"]["covisible"]["short_range"] > 0.3
    assert all(torch.equal(a, b) for a, b in zip(geometry, (backend.scene.means, backend.scene.quats,
                                                           backend.scene.scales, backend.scene.opacities), strict=True))
    dc, rest = backend.stylized_sh()
    assert dc.shape == (len(s), 3) and rest.abs().max() == 0  # colour only, higher bands zeroed
    views = backend.train_views(25, torch.Generator().manual_seed(0))  # a step starts inside the stored range
    with torch.no_grad():
        trained = backend.render(views).rgb
    assert torch.equal(views.backgrounds, torch.ones_like(views.backgrounds))  # over white, as reported
    assert torch.allclose(trained, backend.render_cameras(views.cameras, "stylized").rgb, atol=1e-4)
    assert (0.28209479177387814 * dc + 0.5).min() >= -1e-6 and (0.28209479177387814 * dc + 0.5).max() <= 1 + 1e-6


def test_consistency_term_between_overlapping_training_views(vgg):
    from nst3d.backends.splat.consistency import ConsistentObjective, consistency_loss

    backend = SplatBackend(scene_from(ball()), size=48, views_per_step=2, pool_size=4)
    batch = backend.batches[0]
    assert [(i, j) for i, j, _, _ in batch.warps] == [(0, 1), (1, 0)]
    assert all(float(valid.mean()) > 0.02 for *_, valid in batch.warps)  # neighbouring views overlap
    assert float(consistency_loss(batch.content, batch.warps)) < 1e-3  # the unstylized splat agrees with itself
    target = StyleTarget.from_images(vgg, [torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0))],
                                     ["relu1_1", "relu2_1"])
    plain = Objective(vgg, target, "relu2_2")
    objective = ConsistentObjective(plain, backend, weight=10.0)
    assert objective.content_layer == "relu2_2" and objective.target is target
    with torch.no_grad():
        backend.free_colors.normal_(0.0, 0.3)  # colours that disagree between views
    render = backend.render(batch)
    terms = objective(render.rgb, render.mask, None)
    assert float(terms["consistency"].detach()) > 1e-3
    assert torch.isclose(terms["total"], plain(render.rgb, render.mask, None)["total"] + 10 * terms["consistency"])


def test_view_dependent_optimises_higher_bands(vgg):
    s = scene_from(ball(400))
    backend = SplatBackend(s, size=32, views_per_step=1, pool_size=2, view_dependent=True, field_resolution=0)
    assert len(backend.parameters()) == 2  # per-Gaussian colours and the higher SH bands
    target = StyleTarget.from_images(vgg, [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))],
                                     ["relu1_1", "relu2_1"])
    stylize(backend, Objective(vgg, target, "relu2_2"), LoopConfig(steps=3, lr=0.05))
    assert backend.stylized_sh()[1].abs().max() > 0
    flat = ball(400)
    flat["sh_rest"] = torch.zeros(400, 0, 3)
    events: list[dict] = []
    backend = SplatBackend(replace(scene_from(flat), degree=0), size=32, views_per_step=1, pool_size=2,
                           view_dependent=True, on_event=events.append)
    assert not backend.view_dependent and len(backend.parameters()) == 1
    assert [e["text"][:40] for e in events if e["event"] == "warning"] == ["--view-dependent: this splat has no high"]


def test_capture_cameras_from_transforms_json(tmp_path):
    """A nerfstudio transforms.json of cameras on a ring looking at the origin (OpenGL convention)."""
    frames = []
    for k in range(10):
        a = 2 * math.pi * k / 10
        eye = np.array([3 * math.sin(a), 0.5, 3 * math.cos(a)])
        back = eye / np.linalg.norm(eye)  # OpenGL: the camera looks along -z, so z points back at the eye
        right = np.cross([0.0, 1.0, 0.0], back)
        right /= np.linalg.norm(right)
        up = np.cross(back, right)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
        frames.append({"file_path": f"images/{k}.png", "transform_matrix": c2w.tolist()})
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"fl_x": 500.0, "fl_y": 500.0, "cx": 320.0, "cy": 240.0, "w": 640, "h": 480,
                                "frames": frames}))
    cams = capture_cameras(path, 64)
    assert (cams.width, cams.height) == (64, 48) and len(cams) == 10
    assert math.isclose(float(cams.K[0, 0, 0]), 50.0, rel_tol=1e-6)
    # OpenCV: the origin is straight ahead of every camera, at depth 3.04.
    origin = cams.world_to_cam[:, :3, 3]
    assert torch.allclose(origin[:, :2], torch.zeros(10, 2), atol=1e-5)
    assert torch.allclose(origin[:, 2], torch.full((10,), math.hypot(3, 0.5)), atol=1e-4)
    s = scene_from(ball(800))
    s.means *= 0.5
    events: list[dict] = []
    backend = SplatBackend(s, size=32, views_per_step=2, pool_size=4, capture=cams, held_out=3,
                           on_event=events.append)
    assert [e["text"] for e in events if e["event"] == "warning"] == [
        "--held-out 3: a capture of 10 cameras spares 2 for the report (a fifth); the report uses those"]
    assert torch.allclose(backend.up, torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    held = backend.held_out(3)
    assert len(held.anchors) == 2 and float(backend.batches[0].mask.mean()) > 0.01
    render = backend.render_cameras(held.all(), "original")
    assert render.rgb.shape == (6, 3, 48, 64)
    # Every partner, 45 degrees round too, still faces the object: they orbit the point the anchor looks at
    # (turned in place, a 45-degree partner of this 65-degree lens looked past it).
    assert (render.mask.flatten(1).mean(1) > 0.01).all()
    for partners in (held.short, held.long):
        assert torch.allclose(partners.centers.norm(dim=-1), held.anchors.centers.norm(dim=-1), rtol=0.1)
    path.write_text(json.dumps({"fl_x": 500.0, "w": 0, "h": 0, "frames": frames}))  # was a ZeroDivisionError
    with pytest.raises(UserError, match="image size w x h is 0 x 0"):
        capture_cameras(path, 64)


def nst3d(*args):
    return subprocess.run([sys.executable, "-m", "nst3d", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


def test_cli_writes_stylized_ply_sheet_and_report(files, random_weights_file, tmp_path):
    out = tmp_path / "styled.ply"
    r = nst3d("splat", files / "ball.ply", "--style", files / "style.png", "-o", out, "--size", 40, "--steps", 4,
              "--views", 2, "--pool", 4, "--held-out", 2, "--weights", random_weights_file, "--quiet", "--split",
              "none")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styled.json", "styled.ply", "styled.png"]
    source, result = read_splat(files / "ball.ply"), read_splat(out)
    assert result.count == source.count and result.property_names == source.property_names
    for name in ("x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"):
        assert np.ascontiguousarray(result.vertices[name]).tobytes() == np.ascontiguousarray(
            source.vertices[name]).tobytes()
    assert not torch.equal(result.sh_dc(), source.sh_dc())
    report = json.loads((tmp_path / "styled.json").read_text())
    assert report["details"]["output_check"]["geometry_and_opacity_identical"] is True
    assert report["details"]["gaussians"] == 1500 and report["details"]["sh_degree"] == 1
    assert set(report["evaluation"]["style_distance"]) == {"before", "after"}
    assert Image.open(tmp_path / "styled.png").size[0] > 4 * 40


def test_cli_unsupported_input_is_one_clean_line(files, random_weights_file, tmp_path):
    bad = tmp_path / "scene.splat"
    bad.write_bytes(b"\0" * 96)
    r = nst3d("splat", bad, "--style", files / "style.png", "-o", tmp_path / "out.ply", "--weights",
              random_weights_file)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ".splat" in lines[0], r.stderr
    assert not (tmp_path / "out.ply").exists()
    r = nst3d("splat", files / "ball.ply", "--style", files / "style.png", "-o", files / "ball.ply")
    assert r.returncode == 2 and "also an input" in r.stderr
    glb = tmp_path / "mesh.glb"
    glb.write_bytes(b"glTF" + b"\0" * 60)
    r = nst3d("splat", glb, "--style", files / "style.png", "-o", tmp_path / "out.ply", "--weights",
              random_weights_file)
    assert r.returncode == 2 and "mesh.glb: not a PLY file; convert it to an INRIA 3DGS .ply" in r.stderr, r.stderr
    r = nst3d("splat", files / "ball.ply", "--style", files / "style.png", "-o", tmp_path / "out.ply", "--weights",
              random_weights_file, "--dataparser-transforms", files / "style.png")  # was silently ignored
    assert r.returncode == 2 and "give --cameras too" in r.stderr, r.stderr
    for option, value in (("--color-field", -1), ("--color-field", 1), ("--consistency-weight", -1),
                          ("--consistency-weight", "nan")):
        r = nst3d("splat", files / "ball.ply", "--style", files / "style.png", "-o", tmp_path / "out.ply",
                  "--weights", random_weights_file, option, value)
        assert r.returncode == 2 and f"{option} must be" in r.stderr, r.stderr
    assert not (tmp_path / "out.ply").exists()


def test_render_still_frames_the_splat_on_itself(tmp_path):
    save_gaussians(tmp_path / "ball.ply", **{k: v[8:] for k, v in ball().items()})  # without the floaters
    r = nst3d("render", tmp_path / "ball.ply", "-o", tmp_path / "still.png", "--size", 48, "--azimuth", 75)
    assert r.returncode == 0, r.stderr
    darkest = np.asarray(Image.open(tmp_path / "still.png").convert("RGB")).min(-1)
    border = np.concatenate([darkest[0], darkest[-1], darkest[:, 0], darkest[:, -1]])
    assert border.min() > 150  # at most the faint tails of the outermost Gaussians reach the edge
    assert (darkest < 245).any(0).sum() > 0.6 * 48  # and the ball fills the frame
