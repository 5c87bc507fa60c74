"""`nst3d bench image`: time one stylization step against the bare VGG forward+backward on the same input,
measured side by side (interleaved) in one run, and print the ratio."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace
from datetime import date

import torch

from nst3d.backends.image import ImageBackend
from nst3d.files import write_json
from nst3d.options import StyleOptions, build_objective, loop_config, resolve_device, vgg_for, with_defaults
from nst3d.pipelines.image import DEFAULTS
from nst3d.samples import content_picture, swirl_style
from nst3d.stylize import stylize


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (step overhead vs the bare VGG)", description=__doc__)
    p.add_argument("what", choices=("image",), metavar="image",
                   help="which backend to measure (image; the mesh, splat and NeRF benchmarks are scripts/bench_*.py)")
    p.add_argument("--size", type=_at_least(16), default=256, help="image size in px (default 256)")
    p.add_argument("--steps", type=_at_least(1), default=10, help="steps per timed block (default 10)")
    p.add_argument("--repeats", type=_at_least(1), default=5, help="interleaved blocks of each kind (default 5)")
    p.add_argument("--loss", default="gram", choices=("gram", "adain", "nnfm"))
    p.add_argument("--weights", help="VGG-19 weights file")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--report", help="write the numbers as JSON here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = bench_image(args.size, args.steps, args.repeats, args.loss, args.weights, args.device)
    for key, value in result.items():
        print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.report:
        write_json(result, args.report)
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value
    return parse


def bench_image(size: int = 256, steps: int = 10, repeats: int = 5, loss: str = "gram", weights=None,
                device_name: str = "auto") -> dict:
    """Seconds per full stylization step (render + losses + backward + optimiser) and per bare VGG
    forward+backward through the same taps, on the same image; their ratio is the loop's overhead."""
    device = resolve_device(device_name)
    opts = with_defaults(StyleOptions(styles=[], loss=loss, size=size, steps=steps, weights=weights,
                                      device=device_name), DEFAULTS)
    vgg = vgg_for(opts, device)
    content = content_picture(size).to(device)
    objective = build_objective(opts, vgg, [swirl_style(size)], content, DEFAULTS)
    taps = objective.taps
    image = content[None].clone().requires_grad_(True)

    def bare_block() -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            feats = vgg(image, taps)
            sum(f.mean() for f in feats.values()).backward()
            image.grad = None
        _sync(device)
        return (time.perf_counter() - start) / steps

    def step_block() -> float:
        # Time from the end of the first step to the end of the last, from the loop's own events: the one-time
        # set-up of a run (optimiser, content features) is not part of a step.
        times: list[float] = []

        def on_event(event: dict) -> None:
            _sync(device)
            times.append(time.perf_counter())

        stylize(ImageBackend(content), objective, replace(loop_config(opts, "bench"), steps=steps + 1), on_event)
        return (times[-1] - times[0]) / steps

    bare_block(), step_block()  # warm-up (allocator, caches, content features)
    bare, step = [], []
    for _ in range(repeats):
        bare.append(bare_block())
        step.append(step_block())
    bare_s, step_s = statistics.median(bare), statistics.median(step)
    return {
        "benchmark": "image step vs bare VGG forward+backward",
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "size": size,
        "loss": loss,
        "taps": ",".join(taps),
        "bare_vgg_fwd_bwd_s": bare_s,
        "stylize_step_s": step_s,
        "overhead_ratio": step_s / bare_s,
    }
