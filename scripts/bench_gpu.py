"""Seconds per step and peak memory of the real pipelines, one table: image 512², mesh 512² (4 views per step), a
generated 1M-Gaussian splat at 512², and a nerfacto scene where nerfstudio is installed.

    python scripts/bench_gpu.py --device cuda                 # the GPU table (scripts/gpu_check.sh runs this)
    python scripts/bench_gpu.py --device cpu --small          # tiny sizes, a minute on a CPU (the test runs this)

Every case runs the `nst3d` command itself in a fresh process, on inputs made here (the sample picture and
painting, the sample scene GLB, flat Gaussians covering a torus), with a random VGG-19 of the real shape (same
cost as the real weights; the numbers are timings, not quality), and reads its --report: seconds per step are the
report's steady step time (the first, warm-up step is in the note); peak memory is the report's
peak_device_memory_mb on a GPU (what the CUDA allocator reserved) and its peak_memory_mb (the process's peak
resident set) on a CPU. The nerfacto row uses scripts/bench_nerf.py (a small self-made scene trained first) and
runs only where nerfstudio imports and not with --small. A case that fails shows its error in the table and makes
the exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
sys.path[:0] = [str(REPO), str(SCRIPTS)]  # this checkout's nst3d, and bench_splat's scene maker


@dataclass(frozen=True)
class Sizes:
    """What each case runs: render size in px, views per step, Gaussian count and timed steps."""

    image: int
    mesh: int
    views: int
    gaussians: int
    splat: int
    steps: int


FULL = Sizes(image=512, mesh=512, views=4, gaussians=1_000_000, splat=512, steps=30)
SMALL = Sizes(image=32, mesh=32, views=4, gaussians=2_000, splat=32, steps=2)


@dataclass
class Row:
    case: str
    seconds_per_step: float | None = None
    peak_memory_mb: float | None = None
    note: str = ""
    failed: bool = False


def child_env() -> dict[str, str]:
    """The environment for the `nst3d` processes: this checkout's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("MPLBACKEND", "Agg")
    return env


def run_nst3d(args: list[str], report: Path, timeout: float) -> dict:
    """Run `python -m nst3d ARGS --report REPORT --quiet`; return the report, or raise RuntimeError with the
    command's last line of error output."""
    cmd = [sys.executable, "-m", "nst3d", *args, "--report", str(report), "--quiet"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["?"]
        raise RuntimeError(lines[-1][:160])
    return json.loads(report.read_text())


def write_inputs(work: Path, sizes: Sizes) -> dict[str, Path]:
    """The picture, painting, mesh, splat and VGG weights every case reads."""
    import torch

    from nst3d.backends.splat.ply import save_gaussians
    from nst3d.features import random_vgg
    from nst3d.sample_scene import write_sample_scene
    from nst3d.samples import write_samples

    content, style = write_samples(work, size=max(sizes.image, 64))
    weights = work / "vgg19-random.pth"  # not "*caffe*": read with torchvision's preprocessing
    vgg = random_vgg(seed=0, up_to="relu5_1")
    torch.save({f"features.{k}": v for k, v in vgg.net.state_dict().items()}, weights)
    mesh = write_sample_scene(work / "scene.glb")
    from bench_splat import torus_scene

    s = torus_scene(sizes.gaussians, degree=3)
    splat = work / "torus.ply"
    save_gaussians(splat, s["means"], s["scales"].log(), s["quats"], torch.logit(s["opacities"].clamp(1e-4, 1 - 1e-4)),
                   s["colors"][:, 0], s["colors"][:, 1:] * 0.1)
    return {"content": content, "style": style, "weights": weights, "mesh": mesh, "splat": splat}


def from_report(row: Row, report: dict) -> Row:
    """Seconds per step (the steady steps: all but the first, which holds cuDNN's algorithm search and the
    caches' first fill) and peak memory (the GPU's on CUDA, else the process's) from a run's report
    (nst3d.pipelines.report)."""
    timing = report["step_seconds"]
    row.seconds_per_step = timing.get("steady", timing["first"])
    device_peak = report["peak_device_memory_mb"]
    row.peak_memory_mb = report["peak_memory_mb"] if device_peak is None else device_peak
    return row


def bench_image(inputs: dict[str, Path], sizes: Sizes, device: str, work: Path, timeout: float) -> Row:
    report = run_nst3d(["image", str(inputs["content"]), "--style", str(inputs["style"]), "--size", str(sizes.image),
                        "--weights", str(inputs["weights"]), "--device", device, "--steps", str(sizes.steps),
                        "-o", str(work / "image.png")], work / "image.json", timeout)
    row = from_report(Row(f"image {sizes.image}²"), report)
    row.note = f"{report['steps']} steps, first {report['step_seconds']['first']:.2f} s"
    return row


def bench_mesh(inputs: dict[str, Path], sizes: Sizes, device: str, work: Path, timeout: float) -> Row:
    report = run_nst3d(["mesh", str(inputs["mesh"]), "--style", str(inputs["style"]), "-o", str(work / "mesh"),
                        "--size", str(sizes.mesh), "--views", str(sizes.views), "--steps", str(sizes.steps),
                        "--weights", str(inputs["weights"]), "--device", device], work / "mesh.json", timeout)
    row = from_report(Row(f"mesh {sizes.mesh}², {sizes.views} views"), report)
    row.note = (f"{report['details']['triangles']} triangles, {report['steps']} steps, "
                f"first {report['step_seconds']['first']:.2f} s")
    return row


def bench_splat(inputs: dict[str, Path], sizes: Sizes, device: str, work: Path, timeout: float) -> Row:
    report = run_nst3d(["splat", str(inputs["splat"]), "--style", str(inputs["style"]), "-o", str(work / "out.ply"),
                        "--size", str(sizes.splat), "--steps", str(sizes.steps), "--pool", "8", "--held-out", "2",
                        "--weights", str(inputs["weights"]), "--device", device], work / "splat.json", timeout)
    row = from_report(Row(f"splat {sizes.gaussians:,} Gaussians, {sizes.splat}²"), report)
    row.note = (f"{report['details']['renderer']}, {report['options']['views']} views, {report['steps']} steps, "
                f"first {report['step_seconds']['first']:.2f} s")
    return row


def bench_nerfacto(sizes: Sizes, device: str, work: Path, timeout: float) -> Row:
    row = Row(f"nerfacto {sizes.image}²")
    out = work / "nerf.json"
    cmd = [sys.executable, str(SCRIPTS / "bench_nerf.py"), "--device", device, "--sizes", str(sizes.image),
           "--modes", "cached", "--steps", "3", "--work", str(work / "nerf"), "--out", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    result = json.loads(out.read_text())["results"][0] if done.returncode == 0 else {"error": done.stderr[-160:]}
    if "error" in result:
        raise RuntimeError(str(result["error"]).strip().splitlines()[-1])
    row.seconds_per_step = result["seconds_per_step"]
    row.peak_memory_mb = result["peak_mb_per_step"]
    row.note = "self-made scene, 200 training iterations; peak above the process's start"
    return row


def measure(name: str, bench, *args) -> Row:
    started = time.perf_counter()
    try:
        row = bench(*args)
    except (RuntimeError, KeyError, OSError, ValueError) as err:
        row = Row(name, note=f"FAILED: {err}", failed=True)
    print(f"bench_gpu: {row.case}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return row


def table(rows: list[Row], device: str) -> str:
    lines = [f"| case ({device}) | s/step | peak MiB | note |", "| --- | ---: | ---: | --- |"]
    for r in rows:
        sps = "-" if r.seconds_per_step is None else f"{r.seconds_per_step:.4f}"
        peak = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        lines.append(f"| {r.case} | {sps} | {peak} | {r.note} |")
    return "\n".join(lines)


def machine(device: str) -> dict[str, str]:
    import torch

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
            "device": gpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--small", action="store_true", help="tiny sizes and 2 steps (checks the script, not the speed)")
    p.add_argument("--cases", default="image,mesh,splat,nerf", help="comma-separated subset of image,mesh,splat,nerf")
    p.add_argument("--timeout", type=float, default=240, help="seconds allowed per nst3d run (default 240)")
    p.add_argument("--work", type=Path, help="folder for inputs and outputs (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the rows and the machine as JSON here")
    args = p.parse_args(argv)
    sizes = SMALL if args.small else FULL
    cases = set(args.cases.split(","))
    with tempfile.TemporaryDirectory(prefix="nst3d-bench-gpu-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        inputs = write_inputs(work, sizes)
        rows = []
        if "image" in cases:
            rows.append(measure(f"image {sizes.image}²", bench_image, inputs, sizes, args.device, work, args.timeout))
        if "mesh" in cases:
            rows.append(measure(f"mesh {sizes.mesh}²", bench_mesh, inputs, sizes, args.device, work, args.timeout))
        if "splat" in cases:
            rows.append(measure(f"splat {sizes.gaussians:,}", bench_splat, inputs, sizes, args.device, work,
                                args.timeout))
        if "nerf" in cases:
            if args.small or importlib.util.find_spec("nerfstudio") is None:
                why = "--small" if args.small else "nerfstudio is not installed (it cannot travel as wheels)"
                rows.append(Row(f"nerfacto {sizes.image}²", note=f"not run: {why}"))
            else:
                rows.append(measure(f"nerfacto {sizes.image}²", bench_nerfacto, sizes, args.device, work,
                                    4 * args.timeout))
    print(table(rows, args.device))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(args.device), "sizes": asdict(sizes),
                                         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
