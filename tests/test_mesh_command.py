"""`nst3d mesh` / stylize_mesh_file and `nst3d render` end to end on tiny inputs (random-weight VGG)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nst3d.cli import main
from nst3d.errors import UserError
from nst3d.files import save_image
from nst3d.options import StyleOptions
from nst3d.pipelines.mesh import stylize_mesh_file
from nst3d.schema import parse_style_map
from nst3d.stylize import Cancelled
from tests.mesh_data import textured_quad_glb, two_object_glb


@pytest.fixture
def weights(tmp_path_factory, vgg) -> Path:
    path = tmp_path_factory.mktemp("weights") / "random_vgg.pth"
    torch.save({f"features.{k}": v for k, v in vgg.net.state_dict().items()}, path)
    return path


@pytest.fixture
def style(tmp_path) -> Path:
    path = tmp_path / "style.png"
    g = torch.Generator().manual_seed(3)
    save_image(torch.rand(3, 32, 32, generator=g), path)
    return path


def tiny_opts(style: Path, weights: Path, **kw) -> StyleOptions:
    return StyleOptions(styles=[style], steps=2, size=32, views=2, weights=weights, style_layers=["relu1_1", "relu2_1"],
                        content_layer="relu2_1", **kw)


@pytest.mark.slow
def test_stylize_mesh_file_writes_everything_and_reports(tmp_path, style, weights):
    source = two_object_glb(tmp_path / "two.glb")
    events = []
    report = stylize_mesh_file(source, tmp_path / "out", tiny_opts(style, weights), texture_size=32,
                               compare_baseline=True, on_event=events.append, pool_size=4, held_out=1)
    out = tmp_path / "out"
    assert (out / "two_styled.glb").is_file() and (out / "contact_sheet.png").is_file()
    assert len(report.outputs["textures"]) == 2
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) == set(report.to_dict()) and saved["details"]["triangles"] == report.details["triangles"]
    for key in ("style_distance", "content_distance", "consistency", "floor", "baseline"):
        assert key in saved["evaluation"] and key in saved["evaluation"]["close_up"]  # both scales, same block
    diagonal = saved["details"]["bounding_diagonal"]
    assert saved["details"]["stroke_scale"] == pytest.approx(0.2 * diagonal)
    assert saved["evaluation"]["close_up"]["held_out"]["view_height"] == pytest.approx(0.2 * diagonal)
    assert any("stroke scale" in e.get("text", "") for e in events)
    assert saved["seconds"] > 0 and saved["peak_memory_mb"] > 0
    assert set(saved["seconds_by_stage"]) == {"load", "setup", "optimise", "evaluate", "export"}
    assert set(saved["evaluation"]["consistency"]) >= {"short_range", "long_range"}
    assert any(e["event"] == "progress" for e in events)
    assert source.read_bytes() == two_object_glb(tmp_path / "again.glb").read_bytes()  # input untouched


@pytest.mark.slow
def test_style_map_and_obj_format(tmp_path, style, weights):
    source = two_object_glb(tmp_path / "two.glb")
    report = stylize_mesh_file(source, tmp_path / "out", tiny_opts(style, weights), {"Ball": [style]},
                               texture_size=32, export_format="obj", pool_size=2, held_out=1)
    assert report.outputs["asset"].endswith("two_styled.obj")
    assert sorted(t["group"] for t in report.details["textures"]) == [0, 1]


def test_cancel_writes_nothing(tmp_path, style, weights):
    source = textured_quad_glb(tmp_path / "quad.glb")
    with pytest.raises(Cancelled):
        stylize_mesh_file(source, tmp_path / "out", tiny_opts(style, weights), pool_size=2, held_out=1,
                          should_stop=lambda: True)
    assert not (tmp_path / "out").exists()  # not even an empty folder


def test_input_warnings_are_sent_before_the_run_starts(tmp_path, style, weights):
    source = tmp_path / "tri.obj"
    source.write_text("mtllib missing.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0.2\nf 1 2 3\nf 2 4 3\n")
    events = []
    with pytest.raises(Cancelled):
        stylize_mesh_file(source, tmp_path / "out", tiny_opts(style, weights), pool_size=2, held_out=1,
                          on_event=events.append, should_stop=lambda: True)
    warnings = [e["text"] for e in events if e["event"] == "warning"]
    assert any("missing.mtl" in w and "not found" in w for w in warnings), events


def test_bad_style_map_name_fails_before_work(tmp_path, style, weights):
    source = textured_quad_glb(tmp_path / "quad.glb")
    with pytest.raises(UserError, match="no material or object"):
        stylize_mesh_file(source, tmp_path / "out", tiny_opts(style, weights), {"Nope": [style]}, pool_size=2)
    with pytest.raises(UserError, match="NAME=IMAGE"):
        parse_style_map(["no-equals-sign"])


def test_cli_errors_are_one_line(tmp_path, style, weights, capsys):
    (tmp_path / "model.fbx").write_bytes(b"x")
    code = main(["mesh", str(tmp_path / "model.fbx"), "--style", str(style), "--weights", str(weights),
                 "-o", str(tmp_path / "out")])
    assert code == 2 and "unsupported mesh format" in capsys.readouterr().err
    code = main(["mesh", str(tmp_path / "missing.glb"), "--style", str(style), "--weights", str(weights),
                 "-o", str(tmp_path / "out")])
    assert code == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_still_frames_a_long_asset_whole(tmp_path):
    """A still used the turntable's shared distance, looking at the bounding-box centre: a long asset seen
    at an angle (the Fox at the default azimuth) lost its head. It is framed on its own silhouette now."""
    import imageio.v2 as imageio
    import trimesh

    bar = trimesh.creation.box(extents=(6.0, 1.0, 1.0))
    bar.apply_translation((2.5, 0.0, 0.0))  # off-centre as well
    bar.export(tmp_path / "bar.obj")
    assert main(["render", str(tmp_path / "bar.obj"), "-o", str(tmp_path / "still.png"), "--size", "64",
                 "--quiet"]) == 0
    drawn = np.asarray(imageio.imread(tmp_path / "still.png")).min(-1) < 250  # not the white background
    border = np.concatenate([drawn[0], drawn[-1], drawn[:, 0], drawn[:, -1]])
    assert not border.any()  # nothing cut off at the edges
    columns, rows = drawn.any(0).nonzero()[0], drawn.any(1).nonzero()[0]
    assert max(np.ptp(columns), np.ptp(rows)) > 0.8 * 64  # and tight, not shrunk to fit


def test_render_still_and_turntable(tmp_path, capsys):
    source = textured_quad_glb(tmp_path / "quad.glb")
    assert main(["render", str(source), "-o", str(tmp_path / "still.png"), "--size", "32", "--quiet"]) == 0
    assert main(["render", str(source), "--turntable", "-o", str(tmp_path / "spin.gif"), "--size", "24",
                 "--frames", "3", "--quiet"]) == 0
    import imageio.v2 as imageio

    frames = imageio.mimread(tmp_path / "spin.gif")
    assert len(frames) == 3 and frames[0].shape[:2] == (24, 24)
    still = np.asarray(imageio.imread(tmp_path / "still.png"))
    assert still.shape == (32, 32, 3) and still.std() > 5  # something was drawn
    assert main(["render", str(source), "--turntable", "-o", str(tmp_path / "x.png")]) == 2
    for option, value in (("--elevation", "500"), ("--frames", "0"), ("--size", "8"), ("--elevation", "nan")):
        assert main(["render", str(source), "-o", str(tmp_path / "x.png"), option, value]) == 2
        assert f"{option} must be" in capsys.readouterr().err


def test_render_close_up_magnifies_the_surface_at_the_centre(tmp_path, capsys):
    """A checker quad 1 unit wide: a still sees all 4 x 4 cells; --close-up 0.1 (a tenth of the diagonal, 0.14)
    fills the view with about one cell, so the image holds fewer colour edges, and nothing is background."""
    import imageio.v2 as imageio

    source = textured_quad_glb(tmp_path / "quad.glb", size=64)
    common = ["render", str(source), "--size", "64", "--elevation", "0", "--azimuth", "0", "--shading", "none"]
    assert main([*common, "-o", str(tmp_path / "far.png")]) == 0
    assert main([*common, "--close-up", "0.1", "-o", str(tmp_path / "near.png")]) == 0
    far, near = (np.asarray(imageio.imread(tmp_path / name)).astype(float) for name in ("far.png", "near.png"))
    edges = (lambda image: (np.abs(np.diff(image, axis=1)).sum(-1) > 100).sum())
    assert edges(near) < edges(far) / 2
    assert (near.sum(-1) < 3 * 250).all()  # no white background pixel: all surface
    assert main([*common, "--close-up", "0", "-o", str(tmp_path / "bad.png")]) == 2
    assert "--close-up F" in capsys.readouterr().err
