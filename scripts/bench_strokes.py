"""Strokes at every scale (issue 21): stylize real meshes at `--size 128 --steps 200` (defaults otherwise, the
default stroke scale included) with the per-view baseline, and print, per asset, the held-out style distance
after/before for whole-object and close-up views, consistency above the floor (ours and the baseline's) at both
scales, the training pool, set-up and step time and peak memory, as one Markdown table.

    python scripts/bench_strokes.py --weights ../shared/weights/vgg19-caffe-conv1_1-conv3_4.pth
    python scripts/bench_strokes.py --weights ... --assets spot,fox --steps 50     # quicker

Assets come from ../shared/assets (Spot with its texture, Fox, the bunny, ShapeCollection) and, with
--dense-bunny, the bunny subdivided to about 65k triangles (no UVs: a generated atlas). Outputs go to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
MESHES = {
    "spot": ("meshes/spot/spot_triangulated.obj", "meshes/spot/spot_texture.png"),
    "fox": ("meshes/Fox.glb", None),
    "bunny": ("meshes/bunny.ply", None),
    "shapes": ("meshes/scenes/ShapeCollection.glb", None),
}


def dense_bunny(folder: Path, triangles: int = 60_000) -> Path:
    """The shared bunny subdivided (flat, 4 triangles per triangle) until it has at least `triangles`."""
    import trimesh

    mesh = trimesh.load(ASSETS / "meshes" / "bunny.ply")
    while len(mesh.faces) < triangles:
        mesh = mesh.subdivide()
    path = folder / "bunny_dense.ply"
    mesh.export(path)
    return path


def ratio(block: dict) -> float:
    return block["style_distance"]["after"] / block["style_distance"]["before"]


def row(name: str, report) -> str:
    e, d = report.evaluation, report.details
    cells = [name, f"{d['triangles']:,}", f"{d['stroke_scale']:.3g}"]
    for block in (e, e["close_up"]):
        ours, base = block.get("consistency_above_floor"), block.get("baseline", {}).get("consistency_above_floor")
        cells.append(f"**{ratio(block):.3f}**")
        if ours and base:
            cells.append(" / ".join(f"{ours[k]:.4f} vs {base[k]:.4f} ({ours[k] / max(base[k], 1e-9):.2f})"
                                    for k in ("short_range", "long_range")))
        else:
            cells.append("-")
    views = " + ".join(f"{count} {scale}" for scale, count in d["view_scales"].items())
    sides = ", ".join(str(t["residual_size"][0]) for t in d["textures"][:3]) + (" ..." if len(d["textures"]) > 3
                                                                               else "")
    stage = report.seconds_by_stage
    cells += [views, sides, f"{stage['setup']:.1f}", f"{stage['optimise'] / report.steps:.2f}",
              f"{report.peak_memory_mb:.0f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--style", type=Path, default=ASSETS / "styles" / "starry_night.jpg")
    parser.add_argument("--assets", default="spot,fox,bunny,shapes")
    parser.add_argument("--dense-bunny", action="store_true")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-baseline", action="store_true", help="skip the per-view baseline (half the time)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "nst3d_bench_strokes")
    args = parser.parse_args()

    from nst3d.options import StyleOptions
    from nst3d.pipelines.mesh import stylize_mesh_file

    names = [n for n in args.assets.split(",") if n]
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = {n: (ASSETS / MESHES[n][0], MESHES[n][1] and ASSETS / MESHES[n][1]) for n in names}
    if args.dense_bunny:
        inputs["bunny 65k, no UVs"] = (dense_bunny(args.out), None)
    print(f"{datetime.date.today()}, {platform.machine()} CPU, torch threads default; --size {args.size} "
          f"--steps {args.steps}, style {args.style.name}\n")
    print("| asset | triangles | stroke scale | whole: after/before | whole: consistency above floor, ours vs "
          "baseline, 5 / 45 deg (ratio) | close-up: after/before | close-up: consistency above floor | training "
          "views | residual side | set-up s | s/step | peak MB |")
    print("|" + " --- |" * 12)
    results = {}
    for name, (path, texture) in inputs.items():
        opts = StyleOptions(styles=[args.style], size=args.size, steps=args.steps, weights=args.weights)
        report = stylize_mesh_file(path, args.out / name.split()[0], opts, texture=texture,
                                   compare_baseline=not args.no_baseline)
        results[name] = report.to_dict()
        print(row(name, report), flush=True)
    (args.out / "bench_strokes.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
