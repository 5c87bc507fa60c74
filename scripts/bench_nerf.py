"""Benchmark the NeRF backend: peak memory of a stylization step at several view sizes with the same ray-patch
size (deferred back-propagation), against direct back-propagation, and seconds per step (also with the frozen
geometry of the training view kept, as `nst3d nerf` does by default).

    python scripts/bench_nerf.py                          # self-made scene, 64^2 and 256^2, CPU or GPU
    python scripts/bench_nerf.py --config outputs/<scene>/nerfacto/<run>/config.yml --sizes 64 256 512
    python scripts/bench_nerf.py --device cuda --out bench_nerf_gpu.json

Without --config it writes the project's procedural scene (nst3d.integrations.nerfstudio.scene) and trains a
small nerfacto on it first (in --work). The runs use a private TORCH_HOME in --work with a placeholder AlexNet
for nerfacto's LPIPS metric (unused here), so no download is needed. Every measurement runs in a fresh
process, on one training view: on CUDA the peak is the allocator's (torch.cuda.max_memory_allocated, reset
before the steps); on a CPU it is the process's peak resident set (VmHWM, reset through /proc/self/clear_refs
after malloc_trim) above the resident set before. Both are given for the first step (which also renders the
view's content once, and in "cached" mode its geometry) and for the later steps. The first step is not timed.
VGG: --weights if given, else a random VGG-19 up to relu3_4 (same cost as the real one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _trim_heap() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(config: Path, size: int, patch_rays: int, mode: str, steps: int, device_name: str,
            weights: str | None) -> dict:
    """One measurement in this process: `steps` stylization steps (the first untimed) at `size`."""
    import torch

    from nst3d.backends.nerf import backend_for_run
    from nst3d.features import load_vgg, random_vgg
    from nst3d.integrations.nerfstudio.run import load_run
    from nst3d.losses import Objective, StyleTarget
    from nst3d.options import resolve_device
    from nst3d.samples import swirl_style
    from nst3d.stylize import accumulate_gradients

    device = resolve_device(device_name)
    run = load_run(config, device)
    # One training view, rendered every step: after the warm-up step its content render (and, in "cached"
    # mode, its geometry) is kept, so the timed steps are steady-state steps.
    cache_mb = 4096.0 if mode == "cached" else 0.0
    backend = backend_for_run(run, size, patch_rays=patch_rays, pool_size=1, geometry_cache_mb=cache_mb)
    if mode == "direct":
        backend.deferred = False
        backend.render = backend.render_with_grad  # full-view autograd graph: memory grows with the pixels
    vgg = load_vgg(weights, "auto", device) if weights else random_vgg(0, "relu3_4").to(device)
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    objective = Objective(vgg, StyleTarget.from_images(vgg, [swirl_style(size)], layers), "relu2_2")
    optimizer = torch.optim.Adam(backend.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)

    def step(index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(backend, objective, backend.train_views(index, generator))
        optimizer.step()

    def start_peak() -> int:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            return torch.cuda.memory_allocated(device)
        _trim_heap()  # hand freed memory back to the OS, so the resident set is what is in use
        _reset_cpu_peak()
        return _status_kib("VmRSS") * 1024

    def peak_since(base: int) -> float:
        if device.type == "cuda":
            return (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return (_status_kib("VmHWM") * 1024 - base) / 2**20

    base = start_peak()
    step(0)  # warm-up: also the one-time content render (and geometry, "cached") of the view
    first_peak = peak_since(base)
    base = start_peak()
    times = []
    for index in range(1, steps):
        started = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    steady_peak = peak_since(base)
    backward_peak = None
    if mode != "direct":  # one more (untimed) step, measuring the deferred back-propagation on its own
        inner = backend.backward_image
        peaks = []

        def measured(views, grad_rgb):
            start = start_peak()
            inner(views, grad_rgb)
            peaks.append(peak_since(start))

        backend.backward_image = measured
        step(steps)
        backward_peak = max(peaks)
    how = ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
           "VmHWM (peak resident set, reset via /proc/self/clear_refs after malloc_trim)")
    width, height = backend.train_cameras.width, backend.train_cameras.height
    return {"size": [width, height], "rays_per_view": width * height, "patch_rays": patch_rays, "mode": mode,
            "device": str(device), "steps_timed": len(times), "seconds_per_step": statistics.median(times),
            "peak_mb_first_step": first_peak, "peak_mb_per_step": steady_peak,
            "peak_mb_backward_image": backward_peak,
            "geometry_cache_mb": backend.geometry_bytes / 2**20, "memory": how,
            "torch_threads": torch.get_num_threads()}


def make_scene(work: Path, iterations: int, device: str) -> Path:
    """The project's procedural scene, trained briefly; returns its config.yml."""
    from nst3d.integrations.nerfstudio.offline import placeholder_alexnet
    from nst3d.integrations.nerfstudio.scene import SmallNerfacto, train_nerfacto, write_blender_scene

    config = work / "outputs" / "bench" / "nerfacto" / f"i{iterations}" / "config.yml"
    if config.is_file() and any((config.parent / "nerfstudio_models").glob("*.ckpt")):
        return config
    placeholder_alexnet(os.environ["TORCH_HOME"])
    data = write_blender_scene(work / "data", size=128)
    return train_nerfacto(data, work / "outputs", SmallNerfacto(iterations=iterations), device=device,
                          experiment_name="bench", timestamp=f"i{iterations}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="a trained nerfacto run's config.yml (default: self-made scene)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nst3d-bench-nerf",
                   help="folder for the self-made scene")
    p.add_argument("--train-iterations", type=int, default=200, help="nerfacto iterations for the self-made scene")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--patch-rays", type=int, default=4096)
    p.add_argument("--modes", nargs="+", default=["deferred", "direct", "cached"],
                   choices=("deferred", "direct", "cached"),
                   help="deferred: patches, geometry recomputed every step; direct: one autograd graph for the "
                        "whole view; cached: deferred with the training view's geometry kept (the default of "
                        "nst3d nerf)")
    p.add_argument("--steps", type=int, default=3, help="steps per measurement, the first untimed (>= 2)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--weights", help="VGG-19 weights (default: random VGG, same cost)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.config, args.size, args.patch_rays, args.mode, args.steps, args.device,
                                 args.weights)))
        return 0
    # A private torch hub: nerfacto's LPIPS gets a placeholder AlexNet there (offline GPU machines), and the
    # user's own cache is left alone.
    os.environ["TORCH_HOME"] = str((args.work / "torch-home").resolve())
    from nst3d.integrations.nerfstudio.offline import placeholder_alexnet
    from nst3d.integrations.nerfstudio.tv_shim import apply

    apply()
    placeholder_alexnet(os.environ["TORCH_HOME"])
    import torch

    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    config = args.config or make_scene(args.work, args.train_iterations, device)
    results = []
    for size in args.sizes:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--worker", "--config", str(config), "--size", str(size), "--mode", mode,
                   "--patch-rays", str(args.patch_rays), "--steps", str(max(2, args.steps)), "--device", device]
            if args.weights:
                cmd += ["--weights", args.weights]
            done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if done.returncode != 0:
                tail = done.stderr.strip().splitlines()[-1:] or ["?"]
                results.append({"size": size, "mode": mode, "error": tail[0]})
            else:
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            row = results[-1]
            print(f"{size:>5}^2 {mode:>8}: " + (f"error {row['error']}" if "error" in row else
                  f"{row['seconds_per_step']:.2f} s/step, peak above start: first step "
                  f"{row['peak_mb_first_step']:.0f} MB, later steps {row['peak_mb_per_step']:.0f} MB"
                  + ("" if row["peak_mb_backward_image"] is None else
                     f", deferred back-propagation alone {row['peak_mb_backward_image']:.0f} MB")), flush=True)
    meta = {"date": date.today().isoformat(), "machine": platform.node(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "config": str(config),
            "patch_rays": args.patch_rays}
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
