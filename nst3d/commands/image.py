"""`nst3d image CONTENT --style STYLE -o OUT`: stylize a 2D image (Gatys-style optimisation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nst3d.errors import UserError
from nst3d.events import ProgressBar
from nst3d.files import IMAGE_SUFFIXES, check_output
from nst3d.options import add_style_options, options_from_args, with_defaults
from nst3d.pipelines.image import DEFAULTS, stylize_image_files
from nst3d.stylize import MIN_LEVEL_PX


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image", help="stylize a 2D image", description=__doc__)
    p.add_argument("content", type=Path, help="content image")
    p.add_argument("-o", "--output", type=Path, required=True, help="output image (.png, .jpg, ...)")
    p.add_argument("--num-outputs", type=int, default=1, metavar="K",
                   help="write K variations with seeds seed..seed+K-1 (OUT_1.png, ...); needs --init noise")
    p.add_argument("--multiscale", type=int, default=1, metavar="LEVELS",
                   help="coarse-to-fine levels, each twice the size of the one before (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_style_options(p, DEFAULTS)
    p.set_defaults(run=run)


def max_multiscale_levels(size: int, steps: int) -> int:
    """How many coarse-to-fine levels fit: each at least MIN_LEVEL_PX (half the next) and one step."""
    levels = 1
    while size // 2 ** levels >= MIN_LEVEL_PX and levels < steps:
        levels += 1
    return levels


def output_paths(output: Path, count: int) -> list[Path]:
    """OUT itself for one output, else OUT_1 ... OUT_K beside it."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{k}{output.suffix}") for k in range(1, count + 1)]


def run(args: argparse.Namespace) -> int:
    opts = with_defaults(options_from_args(args), DEFAULTS)
    if args.num_outputs < 1 or args.multiscale < 1:
        raise UserError("--num-outputs and --multiscale must be at least 1")
    if args.num_outputs > 1 and opts.init == "content":
        raise UserError("--num-outputs needs --init noise: from the content image every seed gives the same result")
    most = max_multiscale_levels(opts.size, opts.steps)
    if args.multiscale > most:
        raise UserError(f"--multiscale {args.multiscale} is too many levels for --size {opts.size} and --steps "
                        f"{opts.steps} (each level needs a step and {MIN_LEVEL_PX} px or more); use at most {most}")
    outputs = output_paths(args.output, args.num_outputs)
    for out in outputs:
        check_output(out, [args.content, *opts.styles], IMAGE_SUFFIXES)
    if opts.report:
        check_output(opts.report, [args.content, *opts.styles], (".json",))
    report = stylize_image_files(args.content, outputs, opts, args.multiscale, ProgressBar(quiet=args.quiet),
                                 report=opts.report)
    style = report.evaluation["style_distance"]
    print(f"wrote {', '.join(map(str, outputs))} (style distance {style['before']:.3g} -> "
          f"{style['after']:.3g}, {report.seconds:.1f} s)")
    return 0
