"""The packaging scripts: version ranges and pins agree, the GPU check refuses a CPU machine in one line, and the
GPU benchmark's small mode and the resolve comparison run on a CPU (so none of them rots where CI has no GPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _pins() -> list[Requirement]:
    lines = (REPO / "scripts" / "constraints.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def _pinned_version(pin: Requirement) -> Version:
    (spec,) = pin.specifier
    assert spec.operator == "==", f"{pin}: constraints.txt holds exact pins only"
    return Version(spec.version.removesuffix(".*"))


def test_every_pin_lies_inside_the_ranges_pyproject_states():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    extras = [Requirement(r) for reqs in project["optional-dependencies"].values() for r in reqs]
    for spec in [*core.values(), *extras]:
        assert not any(s.operator == "==" for s in spec.specifier), f"{spec}: pyproject states ranges, not pins"
        assert spec.name in {"pytest", "ruff", "scipy"} or any(s.operator == "<" for s in spec.specifier), \
            f"{spec}: no upper bound"
    checked = 0
    for pin in _pins():
        name, version = canonicalize_name(pin.name), _pinned_version(pin)
        ranges = [core[name]] if name in core else [r for r in extras if canonicalize_name(r.name) == name]
        assert ranges, f"{pin.name} is pinned but pyproject.toml does not ask for it"
        for wanted in ranges:
            assert wanted.specifier.contains(version, prereleases=True), f"{pin} is outside {wanted}"
            checked += 1
    assert checked >= 10


def test_gpu_check_refuses_a_machine_without_cuda_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(REPO / "no-such-wheels")],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device"), lines


@pytest.mark.slow
def test_gpu_benchmark_small_mode_runs_on_a_cpu(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--device", "cpu", "--small",
                           "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    rows = {row["case"].split()[0]: row for row in json.loads(out.read_text())["rows"]}
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) == 6, done.stdout
    for case in ("image", "splat"):
        assert rows[case]["seconds_per_step"] > 0 and rows[case]["peak_memory_mb"] > 0, rows[case]
    mesh_runs = importlib.util.find_spec("open3d") is not None or not rows["mesh"]["failed"]
    if mesh_runs:
        assert rows["mesh"]["seconds_per_step"] > 0 and rows["mesh"]["peak_memory_mb"] > 0, rows["mesh"]
    else:  # without open3d the mesh command may say so; nothing else may fail
        assert "open3d" in rows["mesh"]["note"], rows["mesh"]
    assert rows["nerfacto"]["note"].startswith("not run") and rows["nerfacto"]["seconds_per_step"] is None
    assert done.returncode == (0 if mesh_runs else 1), done.stderr


def test_resolve_benchmark_compares_three_equal_formulations_on_a_cpu(tmp_path):
    from nst3d.sample_scene import write_sample_scene

    scene = write_sample_scene(tmp_path / "scene.glb")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_resolve.py"), "--device", "cpu",
                           "--size", "32", "--reps", "1", "--mesh", str(scene)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith("|")][2:]  # past the header
    assert [r[1].strip() for r in rows] == ["library (CSR products)", "gather + index_add", "spmv per channel"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows), done.stdout
    assert "entries" in done.stdout and "DIFFERS" not in done.stdout
