"""The splat path on a CUDA GPU: gsplat's kernels against the tiled PyTorch compositor (values and colour gradients,
with backgrounds, clamped and not), the compositor on CUDA against itself on the CPU, the backend on CUDA against the
CPU backend, and `nst3d splat` end to end on CUDA (with gsplat, and with the compositor when gsplat's kernels cannot
load). On any machine: the engine choice falls back to the compositor, with one warning, when gsplat's kernels cannot
load (no CUDA toolkit; a compile that fails), without importing gsplat's extension module to find out."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nst3d.backends.splat.engine import COMPILING, GSPLAT, TORCH, choose_engine
from nst3d.backends.splat.ply import read_splat
from nst3d.backends.splat.render import rasterize
from tests.test_splat_backend import ball, scene_from, write_ball_and_style
from tests.test_splat_render import cameras, scene

PREBUILT = importlib.util.find_spec("gsplat.csrc") is not None  # kernels built at install time: nothing can fail


@pytest.fixture
def extensions(tmp_path_factory, monkeypatch) -> Path:
    """Where gsplat JIT-compiles its kernels: TORCH_EXTENSIONS_DIR if set, else one folder for the whole session
    (not ~/.cache), exported so that CLI subprocesses find the same build."""
    folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or tmp_path_factory.getbasetemp() / "torch-extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(folder))
    return folder


def assert_close(a: torch.Tensor, b: torch.Tensor, mean: float = 1e-4, most: float = 1e-3) -> None:
    """a and b agree everywhere but at a few threshold pixels: gsplat's kernels use fast-math exp, so a pixel whose
    alpha sits at 1/255 (or a radius at an integer) may fall on the other side of the cut."""
    diff = (a.detach().cpu().double() - b.detach().cpu().double()).abs().flatten()
    assert float(diff.mean()) < mean, float(diff.mean())
    assert float((diff > most).double().mean()) < 1e-3, float((diff > most).double().mean())


def render_with(engine: str, device: str, s: dict, cams, bg: torch.Tensor, degree: int, clamp: bool):
    """(rgb, alpha, depth, colour gradient) of one render and a fixed random projection of its image."""
    colors = s["colors"].to(device).requires_grad_(True)
    r = rasterize(*(s[k].to(device) for k in ("means", "quats", "scales", "opacities")), colors,
                  cams.world_to_cam.to(device), cams.K.to(device), cams.width, cams.height, sh_degree=degree,
                  backgrounds=bg.to(device), engine=engine, clamp=clamp)
    assert r.rgb.device.type == torch.device(device).type
    weights = torch.randn(r.rgb.shape, generator=torch.Generator().manual_seed(2)).to(device)
    (r.rgb * weights).sum().backward()
    return r.rgb.detach(), r.alpha.detach(), r.depth.detach(), colors.grad


@pytest.mark.gpu
@pytest.mark.parametrize("degree,clamp", [(0, True), (3, True), (3, False)])
def test_gsplat_matches_the_compositor_on_cuda(extensions, degree, clamp, tf32_matmul):
    """With TF32 matrix products on (tf32_matmul): the compositor must not follow them (3e-4..1e-3 mean colour
    errors against gsplat on an H200 when it did)."""
    assert choose_engine("cuda") == GSPLAT, "gsplat's kernels did not load on this GPU machine"
    s = scene(n=3000, degree=degree, seed=3)
    s["colors"][:, 0] -= 0.8  # some colours below 0, where clamping matters
    cams = cameras(3, 96, 80)
    bg = torch.tensor([[0.2, 0.9, 0.4], [1.0, 1.0, 1.0], [0.6, 0.1, 0.7]])
    g = render_with(GSPLAT, "cuda", s, cams, bg, degree, clamp)
    t = render_with(TORCH, "cuda", s, cams, bg, degree, clamp)
    c = render_with(TORCH, "cpu", s, cams, bg, degree, clamp)
    assert float(g[1].max()) > 0.9 and float(g[1].min()) == 0  # covered and background pixels both
    if not clamp:
        assert float(g[0].min()) < -0.01
    for ours in (t, c):
        assert_close(g[0], ours[0])  # rgb
        assert_close(g[1], ours[1])  # alpha
        covered = (g[1].cpu() > 0.5) & (ours[1].cpu() > 0.5)  # g on CUDA, ours on CUDA or the CPU
        assert_close(g[2].cpu()[covered] / 10, ours[2].cpu()[covered] / 10)  # depth (about 3.5), relative
        scale = float(c[3].abs().max())
        assert scale > 0.1
        assert_close(g[3] / scale, ours[3] / scale)  # colour gradients
    for a, b in zip(t, c, strict=True):  # the compositor is the same program on either device
        assert_close(a / max(1.0, float(b.abs().max())), b / max(1.0, float(b.abs().max())), mean=1e-6, most=1e-4)


@pytest.mark.gpu
def test_backend_on_cuda_matches_the_cpu_backend(extensions):
    """The same seeded views, backgrounds (half of them coloured) and one training step, on CUDA (gsplat) and on the
    CPU: every tensor meets its kind on one device, and the results agree."""
    from nst3d.backends.splat.backend import SplatBackend

    s = scene_from(ball(1200))
    runs = {}
    for device in ("cuda", "cpu"):
        backend = SplatBackend(s, size=48, views_per_step=2, pool_size=4, view_dependent=True, white_share=0.5,
                               device=device)
        assert backend.engine == (GSPLAT if device == "cuda" else TORCH)
        batch = next(b for b in backend.batches if (b.backgrounds < 1).any())  # one with a coloured background
        assert all(t.device.type == device for t in (batch.backgrounds, batch.content, batch.mask, batch.depth,
                                                     batch.cameras.world_to_cam, batch.warps[0][2]))
        rgb = backend.render(batch).rgb
        (rgb * torch.linspace(-1, 1, rgb.numel(), device=device).reshape(rgb.shape)).sum().backward()
        held = backend.render_cameras(backend.held_out(2).all(), "stylized")
        runs[device] = (batch.backgrounds, batch.content, batch.mask, rgb.detach(), backend.free_colors.grad,
                        backend.sh_rest.grad, held.rgb, held.mask)
    assert torch.equal(runs["cuda"][0].cpu(), runs["cpu"][0])  # the same views on either device
    for a, b in zip(runs["cuda"], runs["cpu"], strict=True):
        assert_close(a / max(1e-6, float(b.abs().max())), b / max(1e-6, float(b.abs().max())))


def nst3d(*args, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "nst3d", *map(str, args)], capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=900)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return write_ball_and_style(tmp_path_factory.mktemp("splat-gpu"))


def check_run(folder: Path, files: Path) -> dict:
    """The outputs of one `nst3d splat --view-dependent` run: geometry kept, colours and higher bands changed."""
    source, result = read_splat(files / "ball.ply"), read_splat(folder / "styled.ply")
    report = json.loads((folder / "styled.json").read_text())
    assert report["details"]["output_check"]["geometry_and_opacity_identical"] is True
    assert report["device"].startswith("cuda") and report["details"]["view_dependent"] is True
    assert not torch.equal(result.sh_dc(), source.sh_dc()) and not torch.equal(result.sh_rest(), source.sh_rest())
    assert np.isfinite(report["evaluation"]["style_distance"]["after"])
    return report


@pytest.mark.gpu
def test_cli_on_cuda_with_gsplat(files, random_weights_file, extensions, tmp_path):
    r = nst3d("splat", files / "ball.ply", "--style", files / "style.png", "-o", tmp_path / "styled.ply", "--size",
              48, "--steps", 6, "--views", 2, "--pool", 4, "--held-out", 2, "--view-dependent", "--device", "cuda",
              "--weights", random_weights_file, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "nst3d: warning" not in r.stderr, r.stderr
    assert check_run(tmp_path, files)["details"]["renderer"] == "gsplat"


@pytest.mark.gpu
def test_cli_on_cuda_with_the_compositor_when_gsplat_cannot_load(files, random_weights_file, tmp_path, monkeypatch,
                                                                 capsys):
    """gsplat's extension import fails (simulated at nst3d's one loader): one warning, then the whole run on the GPU
    with the tiled compositor."""
    from nst3d.backends.splat import engine
    from nst3d.cli import main

    monkeypatch.setattr(engine, "load_kernels", functools.cache(lambda: "ImportError: simulated"))
    code = main(["splat", str(files / "ball.ply"), "--style", str(files / "style.png"), "-o",
                 str(tmp_path / "styled.ply"), "--size", "48", "--steps", "6", "--views", "2", "--pool", "4",
                 "--held-out", "2", "--view-dependent", "--device", "cuda", "--weights", str(random_weights_file),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("nst3d: warning:")] == [
        "nst3d: warning: gsplat's CUDA kernels cannot load (ImportError: simulated); rendering with nst3d's tiled "
        "PyTorch compositor on the GPU instead (slower)"]
    assert check_run(tmp_path, files)["details"]["renderer"] == "nst3d tiled PyTorch compositor"


CHOOSE = """
import json, sys
from nst3d.backends.splat import engine
engine.DEFAULT_CUDA_HOME = sys.argv[1]  # hide a toolkit installed where torch looks by default
events = []
first = engine.choose_engine("cuda", events.append)
again = []
second = engine.choose_engine("cuda", again.append)
print(json.dumps([first, events, second, again, "gsplat.cuda._backend" in sys.modules]))
"""


def choose_in_subprocess(tmp_path: Path, bin_folder: Path) -> list:
    """choose_engine("cuda") twice in a fresh process whose PATH is only `bin_folder`, without CUDA_HOME, with an
    empty TORCH_EXTENSIONS_DIR: what a machine without (working) CUDA build tools sees."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(PATH=str(bin_folder), TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", CHOOSE, str(tmp_path / "no-cuda")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(PREBUILT, reason="this gsplat ships prebuilt kernels")
def test_engine_falls_back_without_a_cuda_toolkit(tmp_path):
    (tmp_path / "bin").mkdir()
    first, events, second, again, imported = choose_in_subprocess(tmp_path, tmp_path / "bin")
    assert first == second == TORCH
    warning = ("gsplat's CUDA kernels cannot load (this gsplat has no prebuilt kernels and there is no CUDA toolkit "
               "(nvcc) to compile them); rendering with nst3d's tiled PyTorch compositor on the GPU instead (slower)")
    assert events == again == [{"event": "warning", "text": warning}]  # no compile stage: nothing to compile with
    assert not imported  # decided without importing gsplat's extension module (which prints, or compiles)


@pytest.mark.skipif(PREBUILT, reason="this gsplat ships prebuilt kernels")
def test_engine_falls_back_when_the_compile_fails(tmp_path):
    """An nvcc that is there but cannot build (and no ninja on PATH): the compile is shown as a stage, really tried
    once (gsplat's JIT build fails), then one warning per choice and the compositor."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    (folder / "nvcc").chmod(0o755)
    first, events, second, again, imported = choose_in_subprocess(tmp_path, folder)
    assert first == second == TORCH and not imported
    assert [e["event"] for e in events] == ["progress", "progress", "stage_done", "warning"]
    assert {e["stage"] for e in events[:3]} == {COMPILING} and [e["step"] for e in events[:2]] == [0, 1]
    assert events[3]["text"].startswith("gsplat's CUDA kernels cannot load (RuntimeError: ")
    assert again == events[3:]  # not compiled again in the same process
