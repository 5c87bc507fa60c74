"""`nst3d splat SCENE.ply --style STYLE -o OUT.ply`: stylize a 3D Gaussian splat (INRIA PLY, SuperSplat compressed
PLY or Niantic .spz) by optimising its colours only; geometry and opacity stay as they are. Writes OUT.ply (INRIA;
a name ending in .compressed.ply writes a compressed PLY), a contact sheet OUT.png (held-out
views, original above stylized) and a report OUT.json (or --report) with the held-out metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from nst3d.errors import UserError
from nst3d.events import ProgressBar
from nst3d.files import check_output
from nst3d.options import add_style_options, options_from_args, with_defaults
from nst3d.pipelines.splat import DEFAULT_CONSISTENCY, DEFAULTS, stylize_splat_file
from nst3d.schema import SplatOptions, add_arguments, from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("splat", help="stylize a 3D Gaussian splat (.ply, .compressed.ply, .spz)", description=__doc__)
    p.add_argument("scene", type=Path, help="Gaussian splat: INRIA .ply (3DGS / gsplat / nerfstudio / Polycam / Luma), "
                   "SuperSplat .compressed.ply or Niantic .spz")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="stylized .ply (INRIA), or NAME.compressed.ply for a SuperSplat compressed PLY (the input is "
                        "never changed)")
    p.add_argument("--cameras", type=Path, metavar="PATH",
                   help="train on the capture's cameras instead of orbits (for scenes seen from the inside): a "
                        "nerfstudio/Blender transforms.json, a 3DGS cameras.json, or a COLMAP model (sparse/0 folder, "
                        "its cameras/images .bin or .txt, or a project folder holding sparse/0); a splat at "
                        "<3DGS output>/point_cloud/iteration_N/ finds the output's cameras.json by itself")
    p.add_argument("--dataparser-transforms", type=Path, metavar="JSON",
                   help="nerfstudio's dataparser_transforms.json, when the splat lives in nerfstudio's frame")
    p.add_argument("--view-dependent", action="store_true",
                   help="also optimise the higher SH bands (default: zero them; the style looks the same from "
                        "every side)")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also stylize each held-out view on its own in 2D (the per-view baseline) and measure the "
                        "unstylized floor, for the report")
    p.add_argument("--up", default="auto", choices=("auto", "x", "y", "z", "-x", "-y", "-z"),
                   help="the scene's up axis for orbits (auto: the capture's, else the thinnest axis); write a "
                        "negative axis as --up=-x")
    p.add_argument("--pool", type=int, default=48, metavar="N", help="training views set up once (default 48)")
    p.add_argument("--held-out", type=int, default=4, metavar="N",
                   help="held-out anchor views for the report (with --cameras: capture cameras, at most a fifth)")
    p.add_argument("--color-field", type=int, default=0, metavar="RES",
                   help="paint the style into a sparse multi-resolution 3D colour field of this finest resolution, "
                        "read at the Gaussian centres (smoother, coarser strokes); default 0: every Gaussian has "
                        "its own colour")
    p.add_argument("--consistency-weight", type=float, default=DEFAULT_CONSISTENCY, metavar="W",
                   help="weight of the multi-view consistency term between each batch's overlapping views "
                        f"(default {DEFAULT_CONSISTENCY:g}; 0 turns it off)")
    p.add_argument("--cleanup", action="store_true",
                   help="drop huge and needle-like Gaussians that smear the style (changes the count; off by "
                        "default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(p, SplatOptions, title="splat")
    add_style_options(p, DEFAULTS)
    p.set_defaults(run=run)


def side_paths(output: Path, report: Path | None) -> tuple[Path, Path]:
    """(contact sheet, report) beside the output unless --report says otherwise."""
    return output.with_suffix(".png"), report or output.with_suffix(".json")


def run(args: argparse.Namespace) -> int:
    opts = with_defaults(options_from_args(args), DEFAULTS)
    inputs = [args.scene, *opts.styles, *(p for p in (args.cameras, args.dataparser_transforms) if p)]
    check_output(args.output, inputs, (".ply",))
    sheet, report_path = side_paths(args.output, opts.report)
    check_output(sheet, inputs, (".png",))
    check_output(report_path, inputs, (".json",))
    if args.pool < 1 or args.held_out < 1:
        raise UserError("--pool and --held-out must be at least 1")
    if args.dataparser_transforms and not args.cameras:
        raise UserError("--dataparser-transforms maps the --cameras file into the splat's frame; give --cameras too")
    if args.color_field < 0 or args.color_field == 1:
        raise UserError(f"--color-field must be 0 (off) or a resolution of at least 2, got {args.color_field}")
    if not 0 <= args.consistency_weight < float("inf"):
        raise UserError(f"--consistency-weight must be a number that is not negative, got {args.consistency_weight}")
    bar = ProgressBar(quiet=args.quiet)
    report = stylize_splat_file(args.scene, args.output, opts, cameras=args.cameras,
                                dataparser_transforms=args.dataparser_transforms, view_dependent=args.view_dependent,
                                compare_baseline=args.compare_baseline, up=args.up, pool=args.pool,
                                held_out=args.held_out, cleanup=args.cleanup, color_field=args.color_field,
                                consistency_weight=args.consistency_weight, sheet=sheet, report=report_path,
                                on_event=bar, split=from_args(SplatOptions, args).split)
    bar.close()
    style = report.evaluation["style_distance"]
    close = report.evaluation.get("close_up", {}).get("style_distance")
    close_text = "" if close is None else f", close-up {close['before']:.3g} -> {close['after']:.3g}"
    print(f"wrote {args.output}, {sheet}, {report_path} ({report.details['gaussians']} Gaussians; held-out style "
          f"distance {style['before']:.3g} -> {style['after']:.3g}{close_text}; {report.seconds:.0f} s)")
    return 0
