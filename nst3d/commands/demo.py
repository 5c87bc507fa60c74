"""`nst3d demo`: the main job on a built-in sample the project makes itself, no arguments needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from nst3d.commands.image import DEFAULTS, stylize_image_files
from nst3d.events import ProgressBar
from nst3d.files import check_output, load_image, save_image, write_json
from nst3d.options import StyleOptions, with_defaults
from nst3d.samples import write_samples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="stylize a built-in sample (no arguments needed)", description=__doc__)
    p.add_argument("-o", "--output", type=Path, default=Path("nst3d-demo"), help="output folder (default nst3d-demo)")
    p.add_argument("--steps", type=int, default=150, help="optimisation steps (default 150)")
    p.add_argument("--size", type=int, default=256, help="working resolution (default 256)")
    p.add_argument("--weights", type=Path,
                   help="VGG-19 weights file (default: $NST3D_VGG19_WEIGHTS, hub cache, download)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = check_output(args.output, is_dir=True)
    content, style = write_samples(out / "inputs", size=args.size)
    opts = with_defaults(StyleOptions(styles=[style], steps=args.steps, size=args.size, weights=args.weights,
                                      device=args.device), DEFAULTS)
    result = out / "stylized.png"
    report = stylize_image_files(content, [result], opts, on_event=ProgressBar(quiet=args.quiet))
    sheet = out / "contact_sheet.png"
    save_image(side_by_side([load_image(p)[0] for p in (content, style, result)]), sheet)
    write_json(report, out / "report.json")
    print(f"wrote {result}, {sheet} and {out / 'report.json'} (style distance "
          f"{report['style_distance']['before']:.3g} -> {report['style_distance']['after']:.3g})")
    return 0


def side_by_side(images: list, gap: int = 4):
    """Images [3, H, W] (same height after resizing) in a row on a white background, [3, H, W_total]."""
    import torch

    from nst3d.files import resize_to

    height = min(img.shape[1] for img in images)
    resized = [resize_to(img, round(height * max(img.shape[1:]) / img.shape[1])) if img.shape[1] != height
               else img for img in images]
    spacer = torch.ones(3, height, gap)
    parts = [p for img in resized for p in (img[:, :height], spacer)][:-1]
    return torch.cat(parts, dim=2)
