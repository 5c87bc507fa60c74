"""`nst3d nerf --load-config outputs/<scene>/nerfacto/<run>/config.yml --style STYLE -o OUT`: stylize a trained
nerfstudio nerfacto scene. Geometry (density, proposal networks) stays frozen; the appearance is optimised on
the capture's training views with deferred back-propagation. Writes a new nerfstudio run under OUT
(OUT/<experiment>/nst3d-nerfacto/<timestamp>/config.yml + checkpoint, beside the original, never over it) that
ns-viewer, ns-render and ns-export load, with nst3d_report.json (held-out metrics) and nst3d_preview.png
(held-out views: original, stylized[, per-view 2D baseline]) in it. Needs nerfstudio (pip install nst3d[nerf]).
Splatfacto scenes: `ns-export gaussian-splat`, then `nst3d splat`."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from nst3d.backends.nerf import GEOMETRY_CACHE_MB, JITTER_DEGREES, PATCH_RAYS
from nst3d.errors import UserError
from nst3d.events import ProgressBar
from nst3d.files import check_output
from nst3d.options import add_style_options, options_from_args, with_defaults
from nst3d.pipelines.nerf import DEFAULTS, stylize_nerf_run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("nerf", help="stylize a trained nerfstudio (nerfacto) scene", description=__doc__)
    p.add_argument("--load-config", type=Path, required=True, metavar="CONFIG",
                   help="config.yml of the trained nerfstudio run")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FOLDER",
                   help="folder for the stylized run (the original run is never changed)")
    p.add_argument("--data", type=Path, help="the scene's data folder, if not where the config says")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also stylize each held-out view on its own in 2D (the per-view baseline) and measure the "
                        "unstylized floor, for the report")
    p.add_argument("--patch-rays", type=int, default=PATCH_RAYS, metavar="N",
                   help=f"rays per patch of the deferred back-propagation: bounds the memory whatever the view "
                        f"size (default {PATCH_RAYS})")
    p.add_argument("--geometry-cache", type=float, default=GEOMETRY_CACHE_MB, metavar="MB",
                   help="memory for the training views' frozen geometry, computed once per view instead of every "
                        f"step (default {GEOMETRY_CACHE_MB:g}; 0: off)")
    p.add_argument("--jitter", type=float, default=JITTER_DEGREES, metavar="DEGREES",
                   help=f"orbit each training view about the scene centre by up to this much (default "
                        f"{JITTER_DEGREES:g})")
    p.add_argument("--pool", type=int, metavar="N",
                   help="training views set up once: the capture's cameras, as captured then jittered (default: "
                        "twice the cameras, up to 128)")
    p.add_argument("--held-out", type=int, default=4, metavar="N", help="held-out anchor views for the report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_style_options(p, DEFAULTS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # nerfstudio 1.1.5 on a recent torch warns on every run about its own deprecated calls; users cannot act
    # on those, and they bury the progress bar.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"nerfstudio\.")
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence", module=r"nerfstudio\.")
    opts = with_defaults(options_from_args(args), DEFAULTS)
    if args.load_config.is_dir():  # a run's folder: its config.yml
        if not (args.load_config / "config.yml").is_file():
            raise UserError(f"{args.load_config} is a folder without a config.yml; pass a trained run's config.yml "
                            "(outputs/<scene>/nerfacto/<timestamp>/config.yml)")
        args.load_config = args.load_config / "config.yml"
    inputs = [args.load_config, *opts.styles]
    if not args.load_config.is_file():
        raise UserError(f"nerfstudio config not found: {args.load_config}")
    check_output(args.output, inputs, is_dir=True)
    if opts.report:
        check_output(opts.report, inputs, (".json",))
    if args.patch_rays < 1 or args.held_out < 1 or (args.pool is not None and args.pool < 1):
        raise UserError("--patch-rays, --pool and --held-out must be at least 1")
    if args.jitter < 0 or args.geometry_cache < 0:
        raise UserError("--jitter and --geometry-cache must not be negative")
    bar = ProgressBar(quiet=args.quiet)
    report = stylize_nerf_run(args.load_config, args.output, opts, data=args.data, patch_rays=args.patch_rays,
                              jitter=args.jitter, pool=args.pool, geometry_cache_mb=args.geometry_cache,
                              held_out=args.held_out,
                              compare_baseline=args.compare_baseline, on_event=bar)
    bar.close()
    if opts.report:
        report.write(opts.report)
    style, config = report.evaluation["style_distance"], report.outputs["run"]
    print(f"wrote {config} (held-out style distance {style['before']:.3g} -> {style['after']:.3g}; "
          f"{report.seconds:.0f} s)\nview it: ns-viewer --load-config {config}")
    return 0
