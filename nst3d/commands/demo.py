"""`nst3d demo`: the main job on a built-in sample the project makes itself, no arguments needed.

By default: a small generated scene (six objects; some with UVs and textures, some without UVs, one without a
material) stylized after a procedural painting, written as a GLB with a contact sheet, a turntable GIF and a
report. `--image` stylizes the built-in 2D picture instead.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from nst3d.events import ProgressBar
from nst3d.files import check_output, load_image, resize_to, save_image
from nst3d.options import StyleOptions
from nst3d.samples import write_samples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="stylize a built-in sample scene (no arguments needed)", description=__doc__)
    p.add_argument("-o", "--output", type=Path, default=Path("nst3d-demo"), help="output folder (default nst3d-demo)")
    p.add_argument("--image", action="store_true", help="stylize the built-in 2D picture instead of the 3D scene")
    p.add_argument("--steps", type=int, help="optimisation steps (default 100 for the scene, 150 for --image)")
    p.add_argument("--size", type=int, help="render/working resolution (default 160 for the scene, 256 for --image)")
    p.add_argument("--weights", type=Path,
                   help="VGG-19 weights file (default: $NST3D_VGG19_WEIGHTS, hub cache, download)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = check_output(args.output, is_dir=True)
    made_here = not out.exists()
    try:
        return run_image(args, out) if args.image else run_scene(args, out)
    except BaseException:  # a failed or cancelled demo leaves no half-made folder (its samples come first)
        if made_here:
            shutil.rmtree(out, ignore_errors=True)
        raise


def run_scene(args: argparse.Namespace, out: Path) -> int:
    from nst3d.commands.render import load_renderable, render_turntable
    from nst3d.pipelines.mesh import stylize_mesh_file
    from nst3d.sample_scene import write_sample_scene

    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    _, style = write_samples(inputs, size=256)
    scene = write_sample_scene(inputs / "scene.glb")
    opts = StyleOptions(styles=[style], steps=args.steps or 100, size=args.size or 160, views=2,
                        weights=args.weights, device=args.device)
    bar = ProgressBar(quiet=args.quiet)
    report = stylize_mesh_file(scene, out, opts, on_event=bar)
    bar.close()
    turntable = out / "turntable.gif"
    render_turntable(load_renderable(report.outputs["asset"]), turntable, frames=24, size=192,
                     on_event=ProgressBar(quiet=args.quiet))
    sd = report.evaluation["style_distance"]
    print(f"wrote {report.outputs['asset']}, {out / 'contact_sheet.png'}, {turntable} and "
          f"{out / 'report.json'} (held-out style distance {sd['before']:.3g} -> {sd['after']:.3g}, "
          f"{report.seconds:.0f} s)")
    return 0


def run_image(args: argparse.Namespace, out: Path) -> int:
    from nst3d.options import with_defaults
    from nst3d.pipelines.image import DEFAULTS, stylize_image_files

    content, style = write_samples(out / "inputs", size=args.size or 256)
    opts = with_defaults(StyleOptions(styles=[style], steps=args.steps or 150, size=args.size or 256,
                                      weights=args.weights, device=args.device), DEFAULTS)
    result = out / "stylized.png"
    report = stylize_image_files(content, [result], opts, on_event=ProgressBar(quiet=args.quiet),
                                 report=out / "report.json")
    sheet = out / "contact_sheet.png"
    save_image(side_by_side([load_image(p)[0] for p in (content, style, result)]), sheet)
    style = report.evaluation["style_distance"]
    print(f"wrote {result}, {sheet} and {out / 'report.json'} (style distance "
          f"{style['before']:.3g} -> {style['after']:.3g})")
    return 0


def side_by_side(images: list[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """Images [3, H, W] scaled to one height, in a row with white gaps, [3, H, W_total]."""
    height = min(img.shape[1] for img in images)
    resized = [img if img.shape[1] == height else resize_to(img, round(height * max(img.shape[1:]) / img.shape[1]))
               for img in images]
    spacer = torch.ones(3, height, gap)
    parts = [p for img in resized for p in (img[:, :height], spacer)][:-1]
    return torch.cat(parts, dim=2)
