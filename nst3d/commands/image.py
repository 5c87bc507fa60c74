"""`nst3d image CONTENT --style STYLE -o OUT`: stylize a 2D image (Gatys-style optimisation)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from nst3d.color import gray, keep_content_chroma
from nst3d.errors import UserError
from nst3d.events import ProgressBar
from nst3d.files import IMAGE_SUFFIXES, check_output, load_image, resize_to, save_image, write_json
from nst3d.losses import content_distance, style_distance
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
from nst3d.stylize import MIN_LEVEL_PX, stylize_image

DEFAULTS = BACKEND_DEFAULTS["image"]


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
    report = stylize_image_files(args.content, outputs, opts, args.multiscale, ProgressBar(quiet=args.quiet))
    if opts.report:
        write_json(report, opts.report)
    after = report["style_distance"]["after"]
    print(f"wrote {', '.join(map(str, outputs))} (style distance {report['style_distance']['before']:.3g} -> "
          f"{after:.3g}, {report['seconds']:.1f} s)")
    return 0


def stylize_image_files(content_path: Path, outputs: list[Path], opts: StyleOptions, levels: int = 1,
                        on_event=None, should_stop=None) -> dict:
    """Stylize one content image into each of `outputs` (one seed each); returns the report."""
    started = time.perf_counter()
    device = resolve_device(opts.device)
    reset_peak_memory(device)
    content, alpha = load_image(content_path, "content image")
    vgg = vgg_for(opts, device)  # checks the sizes against free memory before the resize allocates
    content = resize_to(content, opts.size).to(device)
    objective = build_objective(opts, vgg, load_styles(opts), content, DEFAULTS)
    # In luminance mode the style loss sees (and the result keeps) only luminance: measure it the same way.
    seen = gray if opts.preserve_color == "luminance" else (lambda rgb: rgb)
    before = style_distance(vgg, seen(content[None]), objective.target)
    results = []
    for index in range(len(outputs)):
        config = loop_config(opts)
        config.seed = opts.seed + index
        result = stylize_image(content, objective, config, opts.init, levels, on_event, should_stop)
        if opts.preserve_color == "luminance":
            result = keep_content_chroma(result, content).clamp(0, 1)
        results.append(result)
    # Write only once everything has been computed: a cancel leaves no partial set of outputs.
    out_alpha = None if alpha is None else resize_to(alpha, opts.size)
    for out, result in zip(outputs, results, strict=True):
        save_image(result.cpu(), out, out_alpha)
    return {
        "command": "image",
        "content": str(content_path),
        "styles": [str(s) for s in opts.styles],
        "outputs": [str(o) for o in outputs],
        "style_distance": {"before": before, "after": style_distance(vgg, seen(results[0][None]), objective.target)},
        "content_distance": content_distance(vgg, results[0][None], content[None], objective.content_layer),
        "seconds": time.perf_counter() - started,
        "steps": opts.steps,
        "size": list(content.shape[-2:]),
        "device": str(device),
        **peak_memory(device),
        "loss": opts.loss,
        "style_layers": objective.target.layers,
        "content_layer": objective.content_layer,
        "weights": vgg.source,
        "seed": opts.seed,
        "torch_threads": torch.get_num_threads(),
    }
