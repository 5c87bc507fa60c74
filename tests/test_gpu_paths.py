"""The CUDA paths of the commands against their CPU paths (`@pytest.mark.gpu`, skipped without a GPU by
tests/conftest.py), and the device set-up that a CPU can check: peak memory counted per run, `nst3d render
--device`. The NeRF commands' CUDA tests are in tests/test_nerf_stylize.py (they share its trained scene)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nst3d.cli import main
from nst3d.files import load_image, save_image
from nst3d.options import host_peak_mb, peak_memory, reset_peak_memory, resolve_device
from tests.mesh_data import textured_quad_glb, two_object_glb

REPO = Path(__file__).resolve().parents[1]
TINY_TAPS = ["--style-layers", "relu1_1,relu2_1", "--content-layer", "relu2_1"]


@pytest.fixture
def style(tmp_path) -> Path:
    path = tmp_path / "style.png"
    save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3)), path)
    return path


@pytest.fixture
def content(tmp_path) -> Path:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    path = tmp_path / "content.png"
    save_image(torch.stack([xs, ys, 0.5 * (xs + ys)]), path)
    return path


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ on any machine


def test_host_peak_memory_counts_from_the_start_of_a_run():
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the host peak can only be reset on Linux (/proc/self/clear_refs)")
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    start = host_peak_mb()
    block = torch.ones(256 * 2**20 // 4)  # 256 MB, written
    del block
    high = host_peak_mb()
    assert high > start + 200
    reset_peak_memory(cpu)  # the next run in this process starts its count again
    assert host_peak_mb() < high - 200
    assert peak_memory(cpu)["peak_device_memory_mb"] is None


def test_render_takes_a_device(tmp_path, capsys):
    source = textured_quad_glb(tmp_path / "quad.glb")
    assert main(["render", str(source), "-o", str(tmp_path / "still.png"), "--size", "32", "--device", "cpu",
                 "--quiet"]) == 0
    assert (tmp_path / "still.png").is_file()
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(["render", str(source), "-o", str(tmp_path / "gpu.png"), "--device", "cuda"]) == 2
        assert "no CUDA GPU is available" in capsys.readouterr().err
        assert not (tmp_path / "gpu.png").exists()


# ---------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_resolving_cuda_sets_it_up_and_resets_its_peak():
    device = resolve_device("cuda")
    assert not torch.backends.cudnn.benchmark  # its search cost 30 GB of peak memory for no speed
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # convolutions in TF32, matrix products (the renderers') in IEEE float32
        assert (torch.backends.cudnn.conv.fp32_precision, matmul.fp32_precision) == ("tf32", "ieee")
    else:
        assert torch.backends.cudnn.allow_tf32 and not matmul.allow_tf32
    block = torch.empty(512 * 2**20, dtype=torch.uint8, device=device)
    del block
    high = peak_memory(device)["peak_device_memory_mb"]
    assert high >= 512
    torch.cuda.empty_cache()
    reset_peak_memory(device)
    assert peak_memory(device)["peak_device_memory_mb"] < high - 400


def _image(content: Path, style: Path, weights: Path, out: Path, device: str) -> dict:
    report = out.with_suffix(".json")
    assert main(["image", str(content), "--style", str(style), "-o", str(out), "--size", "32", "--steps", "3",
                 "--weights", str(weights), *TINY_TAPS, "--device", device, "--report", str(report),
                 "--quiet"]) == 0
    return _report(report)


@pytest.mark.gpu
def test_image_command_on_cuda_matches_the_cpu(tmp_path, content, style, random_weights_file):
    cpu = _image(content, style, random_weights_file, tmp_path / "cpu.png", "cpu")
    cuda = _image(content, style, random_weights_file, tmp_path / "cuda.png", "cuda")
    assert cuda["device"].startswith("cuda") and cuda["peak_device_memory_mb"] > 0
    assert cpu["peak_device_memory_mb"] is None and cpu["peak_memory_mb"] > 0
    a, b = load_image(tmp_path / "cpu.png", "image")[0], load_image(tmp_path / "cuda.png", "image")[0]
    assert (a - b).abs().mean() < 2 / 255
    for key in ("before", "after"):
        assert cuda["evaluation"]["style_distance"][key] == pytest.approx(cpu["evaluation"]["style_distance"][key],
                                                                          rel=0.05)


def _mesh(source: Path, style: Path, weights: Path, out: Path, device: str) -> dict:
    assert main(["mesh", str(source), "--style", str(style), "-o", str(out), "--steps", "2", "--size", "32",
                 "--views", "2", "--texture-size", "32", "--weights", str(weights), *TINY_TAPS,
                 "--compare-baseline", "--device", device, "--quiet"]) == 0
    return _report(out / "report.json")


@pytest.mark.gpu
def test_mesh_command_with_baseline_on_cuda_matches_the_cpu(tmp_path, style, random_weights_file):
    """Training, held-out evaluation, the per-view baseline and the export, end to end on the GPU."""
    source = two_object_glb(tmp_path / "two.glb")
    cpu = _mesh(source, style, random_weights_file, tmp_path / "cpu", "cpu")
    cuda = _mesh(source, style, random_weights_file, tmp_path / "cuda", "cuda")
    assert cuda["device"].startswith("cuda") and cuda["peak_device_memory_mb"] > 0
    assert (tmp_path / "cuda" / "two_styled.glb").is_file()
    cpu, cuda = cpu["evaluation"], cuda["evaluation"]
    for block in ("style_distance", "half_pixel_style_distance"):
        for key, value in cpu[block].items():
            assert cuda[block][key] == pytest.approx(value, rel=0.05), (block, key)
    assert cuda["baseline"]["style_distance"]["after"] == pytest.approx(cpu["baseline"]["style_distance"]["after"],
                                                                        rel=0.05)
    for key in ("short_range", "long_range"):
        assert cuda["floor"]["consistency"][key] == pytest.approx(cpu["floor"]["consistency"][key], abs=2e-3)
        assert cuda["consistency"][key] == pytest.approx(cpu["consistency"][key], abs=5e-3)


@pytest.mark.gpu
def test_render_on_cuda_matches_the_cpu(tmp_path):
    source = two_object_glb(tmp_path / "two.glb")
    images = []
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.png"
        assert main(["render", str(source), "-o", str(out), "--size", "48", "--device", device, "--quiet"]) == 0
        images.append(load_image(out, "image")[0])
    assert (images[0] - images[1]).abs().max() <= 2 / 255


def _worker_job(tmp_path: Path, style: Path, weights: Path, device: str) -> list[dict]:
    """A mesh job whose options say cpu, run by `nst3d worker JOB --device DEVICE`; its events."""
    source = two_object_glb(tmp_path / f"{device}.glb")
    job = tmp_path / f"{device}.json"
    job.write_text(json.dumps({
        "nst3d_job": 1, "kind": "mesh", "input": str(source), "output_dir": str(tmp_path / f"out-{device}"),
        "texture_size": 32, "options": {"styles": [str(style)], "steps": 2, "size": 32, "views": 2,
                                        "weights": str(weights), "style_layers": ["relu1_1", "relu2_1"],
                                        "content_layer": "relu2_1", "device": "cpu"}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "nst3d", "worker", str(job), "--device", device],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.gpu
def test_worker_runs_a_job_on_cuda(tmp_path, style, random_weights_file):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-m", "nst3d", "worker", "--check", "--device", "cuda"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert json.loads(check.stdout)["device"].startswith("cuda")
    cpu = _worker_job(tmp_path, style, random_weights_file, "cpu")[-1]
    cuda = _worker_job(tmp_path, style, random_weights_file, "cuda")[-1]
    assert cuda["event"] == "done" and cuda["report"]["device"].startswith("cuda")
    assert cuda["textures"] and cuda["report"]["peak_device_memory_mb"] > 0
    for key in ("before", "after"):
        assert cuda["report"]["evaluation"]["style_distance"][key] == pytest.approx(
            cpu["report"]["evaluation"]["style_distance"][key], rel=0.05)
