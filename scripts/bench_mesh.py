"""Benchmarks of the mesh backend (issue 3, item 8), all measured in one run:

1. G-buffer build: open3d ray casting + shading data for 64 views at 512x512 of a ~100k-triangle mesh
   (1 ray per pixel, and the 2x2-supersampled build the training pool uses).
2. Step overhead: a full stylization step (render the residual textures through the G-buffer, style/content
   losses, backward into the texture pyramid, Adam) vs the bare VGG forward+backward on the same views'
   images, interleaved step by step and compared by medians.
3. Peak memory: a 1M-triangle mesh with a 4096^2 texture at 512^2 views (pool build + two steps), in a
   fresh process (peak resident set).

    python scripts/bench_mesh.py --weights ../shared/weights/vgg19-caffe-conv1_1-conv3_4.pth
    python scripts/bench_mesh.py --skip-memory --steps 4          # quicker

Meshes and textures are generated here (a bumpy latitude-longitude sphere with UVs); --overhead-mesh can
point the overhead measurement at a real asset instead (e.g. ../shared/assets/meshes/spot/...obj with
--overhead-texture). Prints a Markdown table; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def bumpy_sphere(triangles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lat-long sphere with ~`triangles` triangles, radius modulated by a few sines, with UVs."""
    side = max(4, int(round((triangles / 2) ** 0.5)))
    rows, cols = side, side
    theta = np.linspace(0, np.pi, rows + 1)
    phi = np.linspace(0, 2 * np.pi, cols + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    radius = 1 + 0.08 * np.sin(5 * t) * np.cos(7 * p) + 0.04 * np.sin(17 * p)
    positions = np.stack([np.sin(t) * np.cos(p), np.cos(t), -np.sin(t) * np.sin(p)], -1) * radius[..., None]
    uv = np.stack([p / (2 * np.pi), t / np.pi], -1).reshape(-1, 2)
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    a, b = (i * (cols + 1) + j).reshape(-1), ((i + 1) * (cols + 1) + j).reshape(-1)
    faces = np.concatenate([np.stack([a, b, a + 1], 1), np.stack([a + 1, b, b + 1], 1)])
    return positions.reshape(-1, 3), faces.astype(np.int64), uv


def procedural_texture(size: int) -> torch.Tensor:
    """[3, size, size]: a checker with colour gradients (enough structure for VGG)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    cells = ((x * 32).floor() + (y * 16).floor()) % 2
    return torch.stack([0.3 + 0.5 * cells * x, 0.3 + 0.4 * y, 0.6 - 0.3 * cells]).clamp(0, 1)


def generated_asset(triangles: int, texture_size: int):
    from nst3d.backends.mesh.asset import Instance, MeshAsset, Primitive, Slot
    from nst3d.backends.mesh.uv import vertex_normals

    positions, faces, uv = bumpy_sphere(triangles)
    prim = Primitive("sphere", positions, faces, uv, vertex_normals(positions, faces), 0, ("bench",))
    slot = Slot("sphere", {"sphere"}, procedural_texture(texture_size), None, False, None, "sphere")
    return MeshAsset(Path("generated"), [prim], [Instance(0, np.eye(4), "sphere")], [slot])


def objective_for(weights: str | None, size: int):
    from nst3d.features import load_vgg, random_vgg
    from nst3d.losses import Objective, StyleTarget
    from nst3d.pipelines.mesh import DEFAULTS

    vgg = load_vgg(weights) if weights else random_vgg(0, "relu3_4")
    style = procedural_texture(size).flip(0)
    scales = DEFAULTS.style_scales
    target = StyleTarget.from_images(vgg, [style], ["relu1_1", "relu2_1", "relu3_1"], scales=scales)
    objective = Objective(vgg, target, "relu3_2", content_weight=DEFAULTS.content_weight,
                          tv_weight=DEFAULTS.tv_weight, style_scales=scales)
    return objective, vgg.source


def bench_gbuffer(triangles: int, views: int, size: int) -> dict:
    from nst3d.backends.mesh.gbuffer import Rasterizer
    from nst3d.backends.mesh.render import frame_on_silhouette, framing_points
    from nst3d.cameras import fibonacci_directions

    asset = generated_asset(triangles, 256)
    world = asset.world()
    started = time.perf_counter()
    raster = Rasterizer(world)
    setup = time.perf_counter() - started
    cameras = frame_on_silhouette(framing_points(world.vertices), fibonacci_directions(views), size, size)
    out = {"triangles": int(len(world.faces)), "views": views, "size": size, "scene_setup_s": setup}
    for ss in (1, 2):
        started = time.perf_counter()
        for start in range(0, views, 8):
            raster.rasterize(cameras[list(range(start, min(start + 8, views)))], ss, normals=True)
        out[f"build_{ss}x_s"] = time.perf_counter() - started
    # The ray cast alone (open3d), for reference.
    import open3d as o3d

    started = time.perf_counter()
    for index in range(views):
        origins, dirs = cameras[index].rays()
        raster.scene.cast_rays(o3d.core.Tensor(torch.cat([origins, dirs], -1).reshape(-1, 6).numpy()))
    out["cast_only_1x_s"] = time.perf_counter() - started
    return out


def bench_overhead(asset, objective, size: int, views: int, steps: int, warmup: int) -> dict:
    from nst3d.backends.mesh.backend import MeshBackend
    from nst3d.stylize import LoopConfig, make_optimizer

    backend = MeshBackend(asset, size=size, views_per_step=views, pool_size=views * 4, lr=0.02)
    optimizer = make_optimizer(backend.parameters(), LoopConfig(lr=0.02))
    generator = torch.Generator().manual_seed(0)
    content = {b.key: objective.content_features(b.content) for b in backend.batches}
    full, bare, render = [], [], []
    for step in range(warmup + steps):
        views_ = backend.train_views(step, generator)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = backend.render(views_)
        t1 = time.perf_counter()
        terms = objective(out.rgb, out.mask, content[views_.key])
        terms["total"].backward()
        optimizer.step()
        t2 = time.perf_counter()
        image = views_.content.detach().clone().requires_grad_(True)
        t3 = time.perf_counter()
        terms = objective(image, views_.mask, content[views_.key])
        terms["total"].backward()
        t4 = time.perf_counter()
        if step >= warmup:
            full.append(t2 - t0)
            bare.append(t4 - t3)
            render.append(t1 - t0)
    pairs = [f / b for f, b in zip(full, bare, strict=True)]
    return {"size": size, "views_per_step": views, "steps": steps, "full_step_s": statistics.median(full),
            "bare_vgg_s": statistics.median(bare), "render_forward_s": statistics.median(render),
            "ratio_of_medians": statistics.median(full) / statistics.median(bare),
            "median_pair_ratio": statistics.median(pairs), "residual_sides": backend.residual_sides}


def memory_child(triangles: int, texture_size: int, size: int, weights: str | None) -> dict:
    """Runs in a fresh process: pool build + 2 steps; peak RSS after each stage."""
    from nst3d.backends.mesh.backend import MeshBackend
    from nst3d.stylize import LoopConfig, stylize

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    marks = {"start_mb": rss()}
    started = time.perf_counter()
    asset = generated_asset(triangles, texture_size)
    marks["mesh_and_texture_mb"] = rss()
    backend = MeshBackend(asset, size=size, views_per_step=4, pool_size=8, lr=0.02)
    marks["pool_built_mb"] = rss()
    marks["pool_build_s"] = time.perf_counter() - started
    objective, _ = objective_for(weights, size)
    started = time.perf_counter()
    stylize(backend, objective, LoopConfig(steps=2, lr=0.02))
    marks["two_steps_s"] = time.perf_counter() - started
    marks["peak_mb"] = rss()
    textures = backend.stylized_textures(dilate_texels=0)
    marks["final_texture"] = list(textures[0].shape)
    marks["triangles"] = asset.face_count
    marks["residual_sides"] = backend.residual_sides
    return marks


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("NST3D_VGG19_WEIGHTS"),
                        help="VGG-19 weights (default: $NST3D_VGG19_WEIGHTS, else a random-weight VGG)")
    parser.add_argument("--steps", type=int, default=8, help="measured steps for the overhead ratio")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="training render size for the overhead ratio")
    parser.add_argument("--views", type=int, default=4, help="views per step for the overhead ratio")
    parser.add_argument("--overhead-mesh", type=Path, help="a real mesh for the overhead ratio")
    parser.add_argument("--overhead-texture", type=Path, help="its texture, if the file does not name one")
    parser.add_argument("--skip-gbuffer", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--memory-child", nargs=4, metavar=("TRIANGLES", "TEXTURE", "SIZE", "WEIGHTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        tri, tex, size, weights = args.memory_child
        print(json.dumps(memory_child(int(tri), int(tex), int(size), None if weights == "-" else weights)))
        return 0
    results: dict = {"date": datetime.date.today().isoformat(), "machine": machine(), "weights": args.weights}
    if not args.skip_gbuffer:
        results["gbuffer"] = bench_gbuffer(100_000, 64, 512)
        print(json.dumps(results["gbuffer"]), flush=True)
    if not args.skip_overhead:
        from nst3d.backends.mesh.load import load_mesh

        asset = (load_mesh(args.overhead_mesh, texture=args.overhead_texture) if args.overhead_mesh
                 else generated_asset(20_000, 1024))
        objective, source = objective_for(args.weights, args.size)
        results["overhead"] = bench_overhead(asset, objective, args.size, args.views, args.steps, args.warmup)
        results["overhead"]["mesh"] = str(args.overhead_mesh or "generated bumpy sphere, 20k triangles, 1024^2")
        results["overhead"]["vgg"] = source
        print(json.dumps(results["overhead"]), flush=True)
    if not args.skip_memory:
        child = subprocess.run([sys.executable, __file__, "--memory-child", "1000000", "4096", "512",
                                args.weights or "-"], capture_output=True, text=True, check=False)
        if child.returncode != 0:
            print(child.stderr[-2000:], file=sys.stderr)
            return child.returncode
        results["memory"] = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps(results["memory"]), flush=True)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def markdown(r: dict) -> str:
    lines = [f"Machine: {r['machine']}; date {r['date']}.", "", "| measurement | value |", "|---|---|"]
    if "gbuffer" in r:
        g = r["gbuffer"]
        lines += [f"| G-buffer build, {g['views']} views at {g['size']}x{g['size']}, {g['triangles']:,} triangles, "
                  f"1 ray/pixel | {g['build_1x_s']:.1f} s (ray casting alone {g['cast_only_1x_s']:.1f} s; "
                  f"scene set-up {g['scene_setup_s']:.2f} s) |",
                  f"| same, 2x2 supersampled (as the training pool) | {g['build_2x_s']:.1f} s |"]
    if "overhead" in r:
        o = r["overhead"]
        lines += [f"| step overhead ratio, {o['views_per_step']} views at {o['size']} px (full step / bare VGG "
                  f"fwd+bwd, medians of {o['steps']}) | **{o['ratio_of_medians']:.3f}** (median of per-step ratios "
                  f"{o['median_pair_ratio']:.3f}; full {o['full_step_s']:.2f} s, bare {o['bare_vgg_s']:.2f} s, "
                  f"render forward {o['render_forward_s'] * 1000:.0f} ms) |"]
    if "memory" in r:
        m = r["memory"]
        lines += [f"| peak memory, {m['triangles']:,} triangles, {m['final_texture'][1]}^2 texture, 512^2 views "
                  f"(8-view pool, 4 views/step, 2 steps) | **{m['peak_mb']:.0f} MB** peak RSS (mesh+texture "
                  f"{m['mesh_and_texture_mb']:.0f} MB, after pool {m['pool_built_mb']:.0f} MB; pool build "
                  f"{m['pool_build_s']:.0f} s, 2 steps {m['two_steps_s']:.0f} s) |"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
