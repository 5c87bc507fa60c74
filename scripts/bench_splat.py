"""Benchmarks of the splat backend.

CPU (default): render + backward time of the PyTorch path vs Gaussian count and resolution, split into the
colour-independent plan (projection, tile lists, compositing weights: done once per view in a stylization)
and the per-step shade + backward (colour gradients). Scenes are made here (flat Gaussians covering a torus,
a few layers deep, like a trained object splat) unless --ply gives a real one.

    python scripts/bench_splat.py                      # CPU table, ~5-10 min on 2 cores
    python scripts/bench_splat.py --counts 10000,100000 --sizes 128,256 --threads 1

GPU (--gpu, needs CUDA and gsplat): gsplat.rasterization render + backward timings, and the full
stylization of ~1M Gaussians at 512^2 through `nst3d splat`'s own code path (300 steps, 4 views per step):

    python scripts/bench_splat.py --gpu --weights ../shared/weights/vgg19-caffe-conv1_1-conv3_4.pth

Prints a Markdown table and writes the numbers as JSON (--json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from nst3d.backends.splat.render import covariances, plan, rasterize, shade
from nst3d.cameras import cameras_around, fibonacci_directions


def torus_scene(n: int, seed: int = 0, degree: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """n flat Gaussians tangent to a torus (R = 1, r = 0.4), sized so the surface is covered ~4 layers deep."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.rand(n, generator=g) * 2 * math.pi, torch.rand(n, generator=g) * 2 * math.pi
    big, small = 1.0, 0.4
    means = torch.stack([(big + small * torch.cos(v)) * torch.cos(u), small * torch.sin(v),
                         (big + small * torch.cos(v)) * torch.sin(u)], dim=-1)
    normal = torch.stack([torch.cos(v) * torch.cos(u), torch.sin(v), torch.cos(v) * torch.sin(u)], dim=-1)
    area = 4 * math.pi**2 * big * small
    sigma = math.sqrt(4 * area / (n * math.pi)) / 2  # 4 discs of radius 2 sigma over every point
    # Rotation taking z to the normal: the disc's thin axis (scale_2) along the normal.
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normal)
    axis = torch.linalg.cross(z, normal)
    w = 1 + (z * normal).sum(-1, keepdim=True)
    quats = torch.nn.functional.normalize(torch.cat([w, axis], dim=-1), dim=-1)
    scales = torch.cat([sigma * torch.exp(0.3 * torch.randn(n, 2, generator=g)),
                        torch.full((n, 1), sigma * 0.05)], dim=-1)
    opacities = 0.5 + 0.5 * torch.rand(n, generator=g)
    colors = torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.5
    scene = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors}
    return {k: t.to(device) for k, t in scene.items()}


def ply_scene(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from nst3d.backends.splat.ply import read_splat

    ply = read_splat(path)
    sh = torch.cat([ply.sh_dc()[:, None], ply.sh_rest()], dim=1)
    scene = {"means": ply.means(), "quats": ply.quats(), "scales": ply.log_scales().exp(),
             "opacities": torch.sigmoid(ply.opacity_logits()), "colors": sh}
    return {k: t.to(device) for k, t in scene.items()}


def views_for(scene: dict[str, torch.Tensor], count: int, size: int):
    center = scene["means"].median(0).values.cpu()
    radius = float(torch.quantile((scene["means"].cpu() - center).norm(dim=-1), 0.98))
    distance = 1.15 * radius / math.sin(math.radians(20))
    return cameras_around(center, distance, fibonacci_directions(count), size, size, 40.0)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, best process CPU seconds, result) over `repeats` calls. On a shared machine the CPU
    time is the steadier figure (with --threads 1 it is what one dedicated core would take)."""
    best, best_cpu, out = math.inf, math.inf, None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, out


def bench_cpu(scene: dict[str, torch.Tensor], size: int, views: int, repeats: int) -> dict[str, float]:
    cams = views_for(scene, views, size)
    s = scene
    degree = int(math.isqrt(s["colors"].shape[1])) - 1
    covars = covariances(s["quats"], s["scales"])
    t_plan, c_plan, pl = timed(lambda: plan(s["means"], s["quats"], s["scales"], s["opacities"], cams.world_to_cam,
                                            cams.K, size, size, covars=covars), repeats)
    colors = s["colors"].clone().requires_grad_(True)

    def step():
        colors.grad = None
        out = shade(pl, colors, s["means"], cams.world_to_cam, degree).rgb
        out.sum().backward()
        return out

    t_step, c_step, out = timed(step, repeats)
    return {"plan_s": t_plan, "shade_backward_s": t_step, "render_backward_s": t_plan + t_step,
            "plan_cpu_s": c_plan, "shade_backward_cpu_s": c_step, "render_backward_cpu_s": c_plan + c_step,
            "weights_nnz": len(pl.weights), "plan_mb": pl.nbytes / 2**20, "coverage": float(pl.alpha.mean())}


def bench_gsplat(scene: dict[str, torch.Tensor], size: int, views: int, repeats: int) -> dict[str, float]:
    cams = views_for(scene, views, size).to("cuda")
    s = scene
    degree = int(math.isqrt(s["colors"].shape[1])) - 1
    colors = s["colors"].clone().requires_grad_(True)

    def step():
        colors.grad = None
        out = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], colors, cams.world_to_cam, cams.K,
                        size, size, sh_degree=degree, engine="gsplat").rgb
        out.sum().backward()
        return out

    t, _, _ = timed(step, repeats + 1)  # the first call compiles / warms up
    return {"render_backward_s": t}


def full_stylization(count: int, size: int, steps: int, views: int, weights: Path | None, workdir: Path) -> dict:
    """`nst3d splat`'s code path on a synthetic ~count-Gaussian scene, on CUDA; returns its report's timings."""
    from PIL import Image

    from nst3d.backends.splat.ply import save_gaussians
    from nst3d.options import StyleOptions, with_defaults
    from nst3d.pipelines.splat import DEFAULTS, stylize_splat_file

    s = torus_scene(count, degree=3)
    dc = s["colors"][:, 0]
    save_gaussians(workdir / "scene.ply", s["means"], s["scales"].log(), s["quats"],
                   torch.logit(s["opacities"].clamp(1e-4, 1 - 1e-4)), dc, s["colors"][:, 1:] * 0.1)
    stripes = (torch.arange(256)[None, :] // 16 % 2 + torch.arange(256)[:, None] // 24 % 2) % 2
    style = torch.stack([stripes * 220, stripes * 60 + 30, 200 - stripes * 150], -1).byte().numpy()
    Image.fromarray(style).save(workdir / "style.png")
    opts = with_defaults(StyleOptions(styles=[workdir / "style.png"], steps=steps, size=size, views=views,
                                      weights=weights, device="cuda"), DEFAULTS)
    if weights is None:  # timing only: a random VGG of the same shape costs the same
        from nst3d.features import random_vgg

        path = workdir / "vgg19-random.pth"
        vgg = random_vgg(0, "relu3_4")
        torch.save({f"features.{k}": v for k, v in vgg.net.state_dict().items()}, path)
        opts.weights = path
    report = stylize_splat_file(workdir / "scene.ply", workdir / "styled.ply", opts, sheet=workdir / "sheet.png")
    stages = report.seconds_by_stage
    out = {"gaussians": report.details["gaussians"], "seconds": report.seconds,
           "seconds_prepare": stages["load"] + stages["setup"], "seconds_optimise": stages["optimise"],
           "seconds_evaluate": stages["evaluate"], "peak_memory_mb": report.peak_memory_mb, "steps": report.steps,
           "size": report.details["size"], "views_per_step": report.details["views_per_step"],
           "renderer": report.details["renderer"], "device": report.device,
           "style_distance": report.evaluation["style_distance"], "weights": report.weights}
    return out


def machine() -> dict[str, str | int]:
    info: dict[str, str | int] = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
                                  "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                                  "cpu_count": os.cpu_count() or 0, "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import gsplat

        info["gsplat"] = gsplat.__version__
    except ImportError:
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10000,30000,100000", help="Gaussian counts (CPU table)")
    parser.add_argument("--sizes", default="128,256", help="square render sizes in px (CPU table)")
    parser.add_argument("--views", type=int, default=1, help="views per render")
    parser.add_argument("--repeats", type=int, default=2, help="best of N")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--ply", type=Path, help="benchmark this splat instead of synthetic ones (CPU table)")
    parser.add_argument("--gpu", action="store_true", help="gsplat timings and the full ~1M / 512^2 stylization")
    parser.add_argument("--gpu-count", type=int, default=1_000_000)
    parser.add_argument("--gpu-size", type=int, default=512)
    parser.add_argument("--gpu-steps", type=int, default=300)
    parser.add_argument("--gpu-views", type=int, default=4)
    parser.add_argument("--weights", type=Path, help="VGG-19 weights for the full stylization (default: random)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="torch-ext-"))
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"machine": machine(), "cpu": [], "gpu": []}
    counts = [int(c) for c in args.counts.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    if not args.gpu:
        print("| Gaussians | size | views | plan wall / CPU (s) | shade+backward wall / CPU (s) | total wall / CPU (s) "
              "| weights nnz | coverage |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        scenes = [("ply", ply_scene(args.ply))] if args.ply else [(n, torus_scene(n)) for n in counts]
        for label, scene in scenes:
            for size in sizes:
                r = bench_cpu(scene, size, args.views, args.repeats)
                r.update({"gaussians": len(scene["means"]), "size": size, "views": args.views, "scene": str(label)})
                results["cpu"].append(r)
                print(f"| {r['gaussians']:,} | {size} | {args.views} | {r['plan_s']:.2f} / {r['plan_cpu_s']:.2f} "
                      f"| {r['shade_backward_s']:.2f} / {r['shade_backward_cpu_s']:.2f} "
                      f"| {r['render_backward_s']:.2f} / {r['render_backward_cpu_s']:.2f} | {r['weights_nnz']:,} "
                      f"| {r['coverage']:.2f} |", flush=True)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA GPU")
        print("| Gaussians | size | views | gsplat render+backward (s) |")
        print("|---:|---:|---:|---:|")
        for n in sorted({*counts, args.gpu_count}):
            scene = torus_scene(n, degree=3, device="cuda")
            for size in sorted({*sizes, args.gpu_size}):
                r = bench_gsplat(scene, size, args.views, args.repeats)
                r.update({"gaussians": n, "size": size, "views": args.views})
                results["gpu"].append(r)
                print(f"| {n:,} | {size} | {args.views} | {r['render_backward_s']:.4f} |", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            full = full_stylization(args.gpu_count, args.gpu_size, args.gpu_steps, args.gpu_views, args.weights,
                                    Path(folder))
        results["full_stylization"] = full
        print(f"\nfull stylization: {full['gaussians']:,} Gaussians at {full['size']} px, {full['steps']} steps x "
              f"{full['views_per_step']} views: {full['seconds']:.1f} s (prepare {full['seconds_prepare']:.1f}, "
              f"optimise {full['seconds_optimise']:.1f}, evaluate {full['seconds_evaluate']:.1f}), "
              f"peak {full['peak_memory_mb']:.0f} MB")
    print(json.dumps(results["machine"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
