"""One report schema: `nst3d image`, `mesh` and `splat` write reports with the same top-level keys (those of
nst3d.pipelines.report.Report) and the same evaluation block; `nst3d nerf`'s is checked the same way in
tests/test_nerf_stylize.py (it needs a trained scene). Tiny generated inputs, random-weight VGG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nst3d.cli import main
from nst3d.errors import UserError
from nst3d.files import save_image
from nst3d.pipelines.report import REPORT_KEYS, Report, read_report
from nst3d.pipelines.run import step_timing
from tests.mesh_data import textured_quad_glb
from tests.test_splat_backend import ball

#: the evaluation keys every backend reports (a 2D image's consistency and held_out are None)
EVALUATION_KEYS = {"style_distance", "content_distance", "consistency", "held_out", "views", "size"}
TINY = ["--steps", "2", "--size", "32", "--style-layers", "relu1_1,relu2_1", "--content-layer", "relu2_1",
        "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from nst3d.backends.splat.ply import save_gaussians

    folder = tmp_path_factory.mktemp("inputs")
    g = torch.Generator().manual_seed(5)
    save_image(torch.rand(3, 24, 32, generator=g), folder / "content.png")
    save_image(torch.rand(3, 32, 32, generator=g), folder / "style.png")
    textured_quad_glb(folder / "quad.glb")
    save_gaussians(folder / "ball.ply", **ball(400))
    return folder


def command_line(kind: str, inputs: Path, out: Path) -> list[str]:
    if kind == "image":
        return ["image", str(inputs / "content.png"), "-o", str(out / "styled.png")]
    if kind == "mesh":
        return ["mesh", str(inputs / "quad.glb"), "-o", str(out / "mesh"), "--views", "1", "--texture-size", "32"]
    return ["splat", str(inputs / "ball.ply"), "-o", str(out / "styled.ply"), "--views", "1", "--pool", "2",
            "--held-out", "1"]


@pytest.mark.parametrize("kind", ["image", "mesh", "splat"])
def test_every_command_writes_the_one_report_schema(kind, inputs, random_weights_file, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = main([*command_line(kind, inputs, tmp_path), "--style", str(inputs / "style.png"), "--weights",
                 str(random_weights_file), "--report", str(report_path), *TINY])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("wrote ")  # the one summary line
    data = json.loads(report_path.read_text())
    assert list(data) == list(REPORT_KEYS)
    assert data["command"] == kind and data["steps"] == 2 and data["options"]["steps"] == 2
    assert EVALUATION_KEYS <= set(data["evaluation"])
    style = data["evaluation"]["style_distance"]
    assert set(style) == {"before", "after"} and all(v > 0 for v in style.values())
    assert (data["evaluation"]["consistency"] is None) == (kind == "image")
    timing = data["step_seconds"]  # the warm-up step apart from the steady ones
    assert set(timing) == {"first", "steady"} and timing["first"] > 0 and timing["steady"] > 0
    assert timing["first"] + timing["steady"] <= data["seconds_by_stage"]["optimise"]
    assert Path(data["outputs"]["report"] or report_path).name.endswith(".json")
    assert read_report(report_path).evaluation == data["evaluation"]


def test_step_timing_splits_the_first_step_from_the_steady_ones():
    assert step_timing([]) == {}
    assert step_timing([4.0]) == {"first": 4.0}
    assert step_timing([4.0, 4.5, 5.0, 5.5]) == {"first": 4.0, "steady": 0.5}


def test_a_document_without_the_schema_keys_is_refused(tmp_path):
    old = tmp_path / "report.json"
    old.write_text(json.dumps({"command": "mesh", "style_distance": {"before": 1.0, "after": 0.5}}))
    with pytest.raises(UserError, match="not an nst3d report .*missing input"):
        read_report(old)
    with pytest.raises(UserError, match="expected a JSON object"):
        Report.from_mapping([1, 2])
