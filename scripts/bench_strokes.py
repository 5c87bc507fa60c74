"""Strokes at every scale (issue 21): stylize real meshes at `--size 128 --steps 200` (defaults otherwise, the
default stroke scale included) with the per-view baseline, and print, per asset, the held-out style distance
after/before for whole-object and close-up views, consistency above the floor (ours and the baseline's) at both
scales, the training pool, set-up and step time and peak memory, as one Markdown table.

    python scripts/bench_strokes.py --weights ../shared/weights/vgg19-caffe-conv1_1-conv3_4.pth
    python scripts/bench_strokes.py --weights ... --assets spot,fox --steps 50     # quicker

Assets come from ../shared/assets (Spot with its texture, Fox, the bunny, ShapeCollection) and, with
--dense-bunny, the bunny subdivided to about 65k triangles (no UVs: a generated atlas). Outputs go to --out.

--stroke-sizing world runs every asset (and the dot test) with strokes at one world size.
--dots adds the dot test: a style of dark dots on a light ground (made here) on a scene of two spheres of
radius 1 and 0.25 (no UVs), at the default stroke scale and at half of it. The dot size on the surface, per
sphere, is the correlation length of the stylized texture's luminance over the surface: the distance (world
units) at which the luminance of area-sampled surface points, correlated over pairs of points that far apart,
falls to half its variance (for a pattern of dots of one diameter it is proportional to that diameter).
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
from nst3d.schema import STROKE_SIZINGS  # noqa: E402  (this checkout's nst3d, first on the path)

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


def dots_style(path: Path, size: int = 128, diameter: int = 12, seed: int = 0) -> Path:
    """Dark dots (`diameter` px, on a jittered grid two diameters apart) on a light ground."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = np.full((size, size), 235, dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for cy in range(diameter // 2, size, 2 * diameter):
        for cx in range(diameter // 2, size, 2 * diameter):
            y, x = cy + rng.uniform(-diameter / 3, diameter / 3), cx + rng.uniform(-diameter / 3, diameter / 3)
            image[(yy - y) ** 2 + (xx - x) ** 2 <= (diameter / 2) ** 2] = 30
    Image.fromarray(np.repeat(image[..., None], 3, -1)).save(path)
    return path


def two_spheres(path: Path) -> Path:
    """Spheres of radius 1 (at the origin) and 0.25 (at x = 1.75), light grey, no UVs, as one glTF scene."""
    import trimesh

    scene = trimesh.Scene()
    for name, radius, x in (("Big", 1.0, 0.0), ("Small", 0.25, 1.75)):
        sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
        sphere.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
            name=name, baseColorFactor=[230, 230, 230, 255]))
        move = trimesh.transformations.translation_matrix((x, 0, 0))
        scene.add_geometry(sphere, geom_name=name, node_name=name, transform=move)
    scene.export(path)
    return path


def correlation_length(asset, slot: int, count: int, reach: float, seed: int = 0) -> float:
    """The distance at which the luminance of `count` area-sampled points of the slot's triangles, correlated
    over point pairs that far apart, falls to half its variance (see the module docstring)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy.spatial import cKDTree

    from nst3d.backends.mesh.surface import triangle_areas

    world = asset.world()
    faces = np.nonzero(world.face_slot == slot)[0]
    area = triangle_areas(world)[faces]
    rng = np.random.default_rng(seed)
    pick = faces[rng.choice(len(faces), count, p=area / area.sum())]
    s, r = np.sqrt(rng.random(count)), rng.random(count)
    bary = np.stack([1 - s, s * (1 - r), s * r], 1)[:, :, None]
    corners = world.faces[pick]
    points, uv = (world.vertices[corners] * bary).sum(1), (world.uv[corners] * bary).sum(1)
    grid = torch.from_numpy(uv * 2 - 1).float().view(1, 1, -1, 2)
    texture = asset.slots[slot].texture[None]
    luminance = F.grid_sample(texture, grid, align_corners=False, padding_mode="border")[0, :, 0].mean(0).numpy()
    pairs = cKDTree(points).query_pairs(reach, output_type="ndarray")
    distance = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
    x = (luminance - luminance.mean()) / max(luminance.std(), 1e-9)
    bins = 60
    index = np.minimum((distance / reach * bins).astype(int), bins - 1)
    correlation = np.bincount(index, x[pairs[:, 0]] * x[pairs[:, 1]], bins) / np.maximum(
        np.bincount(index, minlength=bins), 1)
    below = np.nonzero(correlation < 0.5)[0]
    if not len(below) or below[0] == 0:
        return float("nan")
    k, width = below[0], reach / bins
    t = (correlation[k - 1] - 0.5) / (correlation[k - 1] - correlation[k])
    return float((k - 0.5 + t) * width)


def dot_test(args) -> list[str]:
    """Rows of the dot test's table: per stroke scale, the correlation length on each sphere and their ratio."""
    from nst3d.backends.mesh.load import load_mesh
    from nst3d.options import StyleOptions
    from nst3d.pipelines.mesh import stylize_mesh_file

    folder = args.out / "dots"
    folder.mkdir(parents=True, exist_ok=True)
    style, scene = dots_style(folder / "dots.png"), two_spheres(folder / "spheres.glb")
    rows, lengths, stroke_scale = [], [], None
    for run in ("default", "half"):
        opts = StyleOptions(styles=[style], size=args.size, steps=args.steps, weights=args.weights,
                            stroke_scale=stroke_scale, stroke_sizing=args.stroke_sizing)
        report = stylize_mesh_file(scene, folder / run, opts)
        asset = load_mesh(next((folder / run).glob("*_styled.glb")))
        slots = {slot.name.split("_")[0]: index for index, slot in enumerate(asset.slots)}
        big = correlation_length(asset, slots["Big"], 64000, 0.3)
        small = correlation_length(asset, slots["Small"], 4000, 0.3)
        versus = "-" if not lengths else f"{big / lengths[0][0]:.2f} / {small / lengths[0][1]:.2f}"
        lengths.append((big, small))
        scale = report.details["stroke_scale"]
        rows.append(f"| {scale:.4g} | {big:.4f} | {small:.4f} | {small / big:.2f} | {versus} |")
        stroke_scale = scale / 2
    return rows


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
    parser.add_argument("--dots", action="store_true", help="also run the dot test (two spheres, two stroke scales)")
    parser.add_argument("--stroke-sizing", choices=STROKE_SIZINGS, default="view")
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
        opts = StyleOptions(styles=[args.style], size=args.size, steps=args.steps, weights=args.weights,
                            stroke_sizing=args.stroke_sizing)
        report = stylize_mesh_file(path, args.out / name.split()[0], opts, texture=texture,
                                   compare_baseline=not args.no_baseline)
        results[name] = report.to_dict()
        print(row(name, report), flush=True)
    (args.out / "bench_strokes.json").write_text(json.dumps(results, indent=1, default=str))
    if args.dots:
        print("\n| stroke scale | dot size (correlation length), big sphere | small sphere | small / big | "
              "vs the default stroke scale, big / small |\n| --- | --- | --- | --- | --- |")
        print("\n".join(dot_test(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
