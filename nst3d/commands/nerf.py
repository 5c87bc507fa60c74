"""`nst3d nerf --load-config outputs/<scene>/nerfacto/<run>/config.yml --style STYLE -o OUT`: stylize a trained
nerfstudio nerfacto scene. Geometry (density, proposal networks) stays frozen; the appearance is optimised on
the capture's training views with deferred back-propagation. Writes a new nerfstudio run under OUT
(OUT/<experiment>/nst3d-nerfacto/<timestamp>/config.yml + checkpoint, beside the original, never over it) that
ns-viewer, ns-render and ns-export load, with nst3d_report.json (held-out metrics) and nst3d_preview.png
(held-out views: original, stylized[, per-view 2D baseline]) in it. Needs nerfstudio (pip install nst3d[nerf]).
Splatfacto scenes: `ns-export gaussian-splat`, then `nst3d splat`."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from nst3d.backends.nerf import GEOMETRY_CACHE_MB, JITTER_DEGREES, PATCH_RAYS
from nst3d.errors import UserError
from nst3d.events import EventSink, ProgressBar, ignore
from nst3d.files import check_output, write_json
from nst3d.options import (
    StyleOptions,
    add_style_options,
    build_objective,
    load_styles,
    loop_config,
    options_from_args,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    vgg_for,
    with_defaults,
)
from nst3d.schema import DEFAULTS as BACKEND_DEFAULTS

DEFAULTS = BACKEND_DEFAULTS["nerf"]
#: views smaller than this (px) stylize much less: 0.24x of the start style distance at 64 px vs 0.16x at 96
SMALL_VIEW = 96


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
        write_json(report, opts.report)
    style = report["evaluation"]["style_distance"]
    print(f"wrote {report['output']} (held-out style distance {style['before']:.3g} -> {style['after']:.3g}; "
          f"{report['seconds']:.0f} s)\nview it: ns-viewer --load-config {report['output']}")
    return 0


def stylize_nerf_run(config_path: Path, output: Path, opts: StyleOptions, *, data: Path | None = None,
                     patch_rays: int = PATCH_RAYS, jitter: float = JITTER_DEGREES, pool: int | None = None,
                     geometry_cache_mb: float = GEOMETRY_CACHE_MB, held_out: int = 4,
                     compare_baseline: bool = False, on_event: EventSink = ignore, should_stop=None
                     ) -> dict[str, Any]:
    """Stylize the run at config_path; writes the stylized run under `output`; returns the report."""
    from nst3d.backends.nerf import backend_for_run, content_palette
    from nst3d.eval import baseline_config, evaluate_with_renders, held_out_views
    from nst3d.integrations.nerfstudio.run import load_run, save_run
    from nst3d.preview import contact_sheet
    from nst3d.stylize import stylize

    if opts.init == "noise":
        raise UserError("--init noise is not supported for NeRFs (the appearance starts from the scene)")
    started = time.perf_counter()
    device = resolve_device(opts.device)
    reset_peak_memory(device)
    run = load_run(config_path, device, data)
    vgg = vgg_for(opts, device)
    styles = load_styles(opts)
    if opts.size < SMALL_VIEW:  # said once the inputs are known good, so it does not precede their errors
        on_event({"event": "warning", "text": f"--size {opts.size} leaves VGG's relu3_1 a {opts.size // 4}x"
                  f"{opts.size // 4} map, too little for the style statistics; use {SMALL_VIEW} or more for a real "
                  "stylization"})
    backend = backend_for_run(run, opts.size, opts.views, jitter, patch_rays, opts.lr, pool, opts.seed,
                              geometry_cache_mb)
    run.model.field.reset_appearance()  # a stylized run is stylized again from its original appearance
    train = backend.train_cameras
    objective = build_objective(opts, vgg, styles, content_palette(backend), DEFAULTS)
    prepared = time.perf_counter()
    history = stylize(backend, objective, loop_config(opts), on_event, should_stop)
    optimised = time.perf_counter()
    held = held_out_views(backend.frame.framer(train.width, train.height), count=held_out)
    baseline = baseline_config(opts.steps, opts.seed) if compare_baseline else None
    evaluation, renders = evaluate_with_renders(backend.render, backend.render_content, held, objective,
                                                baseline_config=baseline, on_event=on_event,
                                                should_stop=should_stop)
    evaluated = time.perf_counter()
    style = {"style_image": opts.styles[0], "loss": opts.loss, "strength": opts.strength,
             "content_weight": opts.content_weight, "tv_weight": opts.tv_weight, "size": opts.size,
             "style_size": opts.style_size, "views": opts.views, "jitter_degrees": jitter,
             "patch_rays": patch_rays, "geometry_cache_mb": geometry_cache_mb,
             "preserve_color": opts.preserve_color, "weights": opts.weights,
             "preprocess": opts.preprocess, "style_layers": tuple(objective.target.layers),
             "content_layer": objective.content_layer, "seed": opts.seed}
    report: dict[str, Any] = {
        "command": "nerf",
        "load_config": str(config_path),
        "styles": [str(s) for s in opts.styles],
        "evaluation": evaluation,
        "final_loss": history[-1] if history else None,
        "seconds_prepare": prepared - started,
        "seconds_optimise": optimised - prepared,
        "seconds_per_step": (optimised - prepared) / max(1, len(history)),
        "seconds_evaluate": evaluated - optimised,
        "steps": opts.steps,
        "size": [train.width, train.height],
        "views_per_step": opts.views,
        "training_cameras": len(train),
        "pool": len(backend.pool),
        "geometry_cache_mb": backend.geometry_bytes / 2**20,
        "patch_rays": patch_rays,
        "jitter_degrees": jitter,
        "trainable_parameters": sum(p.numel() for p in run.model.appearance_parameters()),
        "device": str(device),
        "loss": opts.loss,
        "strength": opts.strength,
        "content_weight": opts.content_weight,
        "lr": opts.lr,
        "style_layers": objective.target.layers,
        "content_layer": objective.content_layer,
        "weights": vgg.source,
        "seed": opts.seed,
        "torch_threads": torch.get_num_threads(),
    }

    def extras(folder: Path, final_config: Path) -> None:
        """The report and the preview, written inside the run folder before it appears."""
        report["output"] = str(final_config)
        report["preview"] = str(final_config.parent / "nst3d_preview.png")
        n = held.count
        rows = [renders["content"].rgb[:n], renders["stylized"].rgb[:n]]
        labels = ["original", "stylized"]
        if "baseline" in renders:
            rows.append(renders["baseline"].rgb[:n])
            labels.append("per-view 2D")
        contact_sheet(rows, folder / "nst3d_preview.png", labels=labels)
        report["seconds"] = time.perf_counter() - started
        report.update(peak_memory(device))
        write_json(report, folder / "nst3d_report.json")

    save_run(run, output, style, len(history), extras)
    return report
