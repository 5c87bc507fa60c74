"""`nst3d worker`: the JSON job format, JSON-line events on stdout, the check, cancellation by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nst3d.errors import UserError
from nst3d.options import StyleOptions
from nst3d.worker import job_from_dict, options_from_dict, options_to_dict


def _job(**overrides) -> dict:
    job = {"nst3d_job": 1, "kind": "mesh", "input": "in.glb", "output_dir": "out",
           "options": {"styles": ["s.png"], "steps": 5}}
    job.update(overrides)
    return job


def test_job_paths_resolve_against_the_job_folder(tmp_path):
    job = job_from_dict(_job(style_map={"Wood": "w.png", "Body": ["a.png", "/abs/b.png"]}, texture_size=64,
                             shading="lambert"), tmp_path)
    assert job.input == tmp_path / "in.glb" and job.output_dir == tmp_path / "out"
    assert job.options.styles == [tmp_path / "s.png"] and job.options.steps == 5
    assert job.style_map == {"Wood": [tmp_path / "w.png"], "Body": [tmp_path / "a.png", Path("/abs/b.png")]}
    assert (job.texture_size, job.shading, job.export_format) == (64, "lambert", "glb")
    assert not job.keep_uv_layouts and job_from_dict(_job(keep_uv_layouts=True), tmp_path).keep_uv_layouts


@pytest.mark.parametrize(("change", "message"), [
    ({"nst3d_job": 2}, "version 2 is not supported"),
    ({"surprise": 1}, "unknown keys surprise"),
    ({"kind": "splat"}, "kind 'splat' is not supported"),
    ({"input": ""}, "needs \"input\""),
    ({"texture_size": 3}, "texture_size"),
    ({"options": {"styles": []}}, "non-empty list of style image paths"),
    ({"options": {"styles": ["s.png"], "stepz": 3}}, "unknown names stepz"),
    ({"options": {"styles": ["s.png"], "loss": "magic"}}, "loss invalid choice 'magic'"),
    ({"options": {"styles": ["s.png"], "steps": 0}}, "steps must be a positive number"),
    ({"options": {"styles": ["s.png"], "strength": -1}}, "strength must be a number that is not negative"),
    ({"options": {"styles": ["s.png"], "style_weights": [1, 2]}}, "2 values for 1 style images"),
    ({"style_map": {"Wood": 3}}, "style_map['Wood']"),
    ({"keep_uv_layouts": "yes"}, "keep_uv_layouts must be true or false"),
])
def test_bad_jobs_are_one_line_user_errors(tmp_path, change, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        job_from_dict(_job(**change), tmp_path)


def test_options_round_trip(tmp_path):
    opts = StyleOptions(styles=[tmp_path / "a.png", tmp_path / "b.png"], style_weights=[1.0, 3.0], loss="nnfm",
                        strength=2.5, steps=10, size=64, views=2, preserve_color="luminance",
                        weights=tmp_path / "w.pth", device="cpu", seed=3, style_layers=["relu1_1"])
    data = json.loads(json.dumps(options_to_dict(opts)))
    assert options_from_dict(data, Path("/elsewhere")) == opts


def _worker(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "nst3d", "worker", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_bad_job_file_is_an_error_event(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps(_job(options={"styles": ["s.png"], "loss": "magic"})))
    proc = _worker(job)
    out, err = proc.communicate(timeout=120)
    events = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 2
    assert events == [{"event": "error", "kind": "user",
                       "message": "job option loss invalid choice 'magic' (choose from gram, adain, nnfm)"}]
    assert not (tmp_path / "out").exists()


def test_device_option_replaces_the_jobs_device(tmp_path, random_weights_file):
    """`nst3d worker JOB --device cpu` runs a job whose options ask for cuda on the CPU (the job then stops
    at its missing style image, a step after the device is set up)."""
    import torch

    from tests.mesh_data import textured_quad_glb

    textured_quad_glb(tmp_path / "in.glb")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(_job(options={"styles": ["missing.png"], "weights": str(random_weights_file),
                                            "style_layers": ["relu1_1"], "content_layer": "relu1_1",
                                            "device": "cuda"})))
    runs = [("cpu", "style image not found")]
    if not torch.cuda.is_available():
        runs.append((None, "no CUDA GPU is available"))
    for device, message in runs:
        proc = _worker(job, *(["--device", device] if device else []))
        out, err = proc.communicate(timeout=300)
        events = [json.loads(line) for line in out.splitlines()]
        assert proc.returncode == 2, err[-2000:]
        assert events[-1]["event"] == "error" and message in events[-1]["message"], events
        assert not (tmp_path / "out").exists()


def test_check_reports_versions_device_and_weights(real_weights):
    proc = _worker("--check", "--device", "cpu", "--weights", real_weights)
    out, err = proc.communicate(timeout=180)
    report = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0, report
    assert report["ok"] and report["device"] == "cpu" and report["mesh"] is True
    assert report["weights"] == str(real_weights) and report["layers"] == "relu3_4"
    assert report["nst3d"] and report["torch"] and report["python"]


def test_check_names_the_problem(tmp_path):
    proc = _worker("--check", "--weights", tmp_path / "missing.pth")
    out, _ = proc.communicate(timeout=180)
    report = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 2 and not report["ok"]
    assert any("weights file not found" in p for p in report["problems"])


def _tiny_glb(path: Path) -> None:
    trimesh = pytest.importorskip("trimesh")
    box = trimesh.creation.box()
    box.visual = trimesh.visual.TextureVisuals(uv=box.vertices[:, :2] * 0.5 + 0.5)
    box.export(path)


@pytest.mark.slow
def test_sigterm_cancels_and_writes_nothing(tmp_path, real_weights):
    from PIL import Image

    _tiny_glb(tmp_path / "in.glb")
    Image.new("RGB", (32, 32), (200, 40, 20)).save(tmp_path / "s.png")
    job = tmp_path / "job.json"
    job.write_text(json.dumps(_job(options={"styles": ["s.png"], "steps": 100000, "size": 32, "views": 1,
                                            "device": "cpu", "weights": str(real_weights)})))
    proc = _worker(job, cwd=tmp_path)
    events, deadline = [], time.monotonic() + 300
    for line in proc.stdout:
        events.append(json.loads(line))  # every stdout line is a JSON event
        if events[-1]["event"] == "progress" or time.monotonic() > deadline:
            break
    assert events[0]["event"] == "start" and events[-1]["event"] == "progress", events
    assert (tmp_path / "out").is_dir()
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    events += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 130, err[-2000:]
    assert events[-1]["event"] == "cancelled"
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["in.glb", "job.json", "s.png"]
