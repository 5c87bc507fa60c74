"""Choosing the splat renderer: the engine choice falls back to the tiled PyTorch compositor, with one warning, when
gsplat's kernels cannot load (no CUDA toolkit; a compile that fails), without importing gsplat's extension module to
find out."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nst3d.backends.splat.engine import COMPILING, TORCH

PREBUILT = importlib.util.find_spec("gsplat.csrc") is not None  # kernels built at install time: nothing can fail


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
