"""G-buffer set-up time, open3d's ray casting vs nst3d's PyTorch rasterizer, on the same views, side by side in one
run (issue 22): the shared meshes (where present) and a generated ~100k-triangle bumpy sphere, each seen from
--views silhouette-framed views at --size px with --supersample (as the training pool), plus the UV coverage
(texel -> triangle) of the sphere's layout. Each timing is the best of --repeat.

    python scripts/bench_raster.py                      # CPU: both engines
    python scripts/bench_raster.py --device cuda        # adds the torch rasterizer on CUDA
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nst3d.backends.mesh.asset import WorldMesh  # noqa: E402
from nst3d.backends.mesh.gbuffer import Rasterizer  # noqa: E402
from nst3d.backends.mesh.raster import open3d_available, rasterize_uv  # noqa: E402
from nst3d.backends.mesh.render import frame_on_silhouette, framing_points  # noqa: E402
from nst3d.backends.mesh.uv import vertex_normals  # noqa: E402
from nst3d.cameras import fibonacci_directions  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "assets" / "meshes"
MESHES = ["spot/spot_triangulated.obj", "bunny.ply", "Fox.glb", "scenes/ShapeCollection.glb"]


def world_of(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None) -> WorldMesh:
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    uv = np.zeros((len(vertices), 2)) if uv is None else uv
    return WorldMesh(vertices, faces, uv, vertex_normals(vertices, faces), np.zeros(len(faces), np.int64))


def meshes(triangles: int) -> list[tuple[str, WorldMesh]]:
    import trimesh

    from scripts.bench_mesh import bumpy_sphere

    out = []
    for name in MESHES:
        if (SHARED / name).is_file():
            mesh = trimesh.load(SHARED / name, force="mesh")
            out.append((Path(name).name, world_of(mesh.vertices, mesh.faces)))
    positions, faces, uv = bumpy_sphere(triangles)
    out.append(("bumpy sphere", world_of(positions, faces, uv)))
    return out


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--supersample", type=int, default=2)
    parser.add_argument("--triangles", type=int, default=100_000)
    parser.add_argument("--uv-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="also time the torch rasterizer on this device (cuda)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    engines = [("open3d", "cpu")] if open3d_available() else []
    engines.append(("torch", "cpu"))
    if args.device != "cpu":
        engines.append(("torch", args.device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.views} views at {args.size}px, "
          f"supersample {args.supersample}; best of {args.repeat}")
    header = " | ".join(f"{e} {d} s" for e, d in engines)
    print(f"| mesh | triangles | {header} | torch cpu / open3d |")
    print("|---|---|" + "---|" * len(engines) + "---|")
    for name, world in meshes(args.triangles):
        cameras = frame_on_silhouette(framing_points(world.vertices), fibonacci_directions(args.views),
                                      args.size, args.size)
        seconds = [best_of(args.repeat, lambda e=engine, d=device, w=world, c=cameras: Rasterizer(w, d, e).rasterize(
            c, args.supersample)) for engine, device in engines]
        ratio = f"{seconds[1] / seconds[0]:.2f}x" if engines[0][0] == "open3d" else "-"
        print(f"| {name} | {len(world.faces):,} | " + " | ".join(f"{s:.2f}" for s in seconds) + f" | {ratio} |")
    _, world = meshes(args.triangles)[-1]
    uv_seconds = [best_of(args.repeat, lambda e=e: rasterize_uv(world.uv, world.faces, args.uv_size, args.uv_size,
                                                                  engine=e)) for e, d in engines if d == "cpu"]
    cells = " | ".join(f"{s:.2f}" for s in uv_seconds) + " | -" * (len(engines) - len(uv_seconds))
    ratio = f"{uv_seconds[1] / uv_seconds[0]:.2f}x" if engines[0][0] == "open3d" else "-"
    print(f"| UV coverage {args.uv_size}^2, bumpy sphere | {len(world.faces):,} | {cells} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
