"""The stylization options every command shares (image, mesh, splat, nerf, batch, the Blender worker),
spelled the same everywhere, and the set-up they imply (device, VGG, style target, objective)."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields, replace

import torch

from nst3d.color import prepare_styles
from nst3d.errors import UserError
from nst3d.features import VGGFeatures, default_layers, load_vgg
from nst3d.files import load_image, resize_to
from nst3d.losses import Objective, StyleTarget
from nst3d.schema import (
    DEFAULTS,
    NNFM_TV_WEIGHT,
    BackendDefaults,
    StyleOptions,
    add_arguments,
    check_style_weights,
    from_args,
)
from nst3d.stylize import LoopConfig

__all__ = ["DEFAULTS", "BackendDefaults", "StyleOptions", "add_style_options", "options_from_args", "with_defaults"]


def add_style_options(parser: argparse.ArgumentParser, defaults: BackendDefaults, style_required: bool = True) -> None:
    """Add the shared options (nst3d.schema.StyleOptions) to a sub-command's parser; help texts show this
    backend's defaults."""
    add_arguments(parser, StyleOptions, vars(defaults), required=("styles",) if style_required else (),
                  title="stylization")


def options_from_args(args: argparse.Namespace) -> StyleOptions:
    """The StyleOptions a parsed command line asks for."""
    opts = from_args(StyleOptions, args)
    try:
        check_style_weights(opts)
    except ValueError as exc:
        raise UserError(f"--style-weights {exc}") from None
    return opts


def with_defaults(opts: StyleOptions, defaults: BackendDefaults) -> StyleOptions:
    """A copy of opts with the backend's defaults filled in."""
    filled = replace(opts)
    for name in ("steps", "size", "views", "content_weight", "tv_weight", "lr"):
        if getattr(filled, name) is None:
            setattr(filled, name, getattr(defaults, name))
    if opts.tv_weight is None and filled.loss == "nnfm":
        # NNFM's relu3 features do not see pixel-level colour noise: without smoothing it speckles.
        filled.tv_weight = max(filled.tv_weight, NNFM_TV_WEIGHT)
    if filled.style_size is None:
        filled.style_size = filled.size
    return filled


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for cuda without one is a user error. A CUDA device is
    set up for speed once here (configure_cuda)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    device = torch.device(name)
    if device.type == "cuda":
        configure_cuda()
    return device


def configure_cuda() -> None:
    """Process-wide CUDA settings for stylization (they change nothing on a CPU):

    - cudnn.benchmark stays off: on an H200 (BENCHMARKS.md, "First GPU runs") its algorithm search made the first
      step 4 s longer and took the peak to 33 GB (image 512²; 37 GB mesh) against 0.7 / 5.7 GB without it, for
      no faster steady step (7.7 vs 6.3 ms image, 82 vs 83 ms mesh): a user's GPU is often shared with Blender.
    - TF32 for float32 convolutions (Ampere and later): VGG's features with a 10-bit mantissa. The losses are
      ratios of feature statistics and the optimiser only follows their gradients, so figures move in the third
      digit at most. Matrix products stay IEEE float32: the renderers project points with them (the splat
      compositor, the mesh rasterizer), and TF32 there moves a point by ~1e-3 of its distance from the origin,
      which showed as 1e-3 colour differences from gsplat on an H200.
    """
    torch.backends.cudnn.benchmark = False
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the per-backend API (not mixed with the old one)
        matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True


def load_styles(opts: StyleOptions) -> list[torch.Tensor]:
    """The style images [3, h, w], resized so their longer side is opts.style_size."""
    if not opts.styles:
        raise UserError("no style image: pass --style IMAGE")
    return [resize_to(load_image(path, "style image")[0], opts.style_size) for path in opts.styles]


def vgg_for(opts: StyleOptions, device: torch.device) -> VGGFeatures:
    """The frozen VGG-19 for these options, checked against the taps they ask for and against the memory the
    device has free (fails before any work)."""
    check_memory(opts, device)
    vgg = load_vgg(opts.weights, opts.preprocess, device)
    style_layers, content_layer = taps_for(opts, vgg)
    vgg.check_taps([*style_layers, content_layer])
    return vgg


def taps_for(opts: StyleOptions, vgg: VGGFeatures) -> tuple[list[str], str]:
    """(style taps, content tap): the options' own, else defaults that the weights cover.
    NNFM defaults to the relu3 block, as ARF does."""
    style_layers, content_layer = default_layers(vgg)
    if opts.loss == "nnfm":
        style_layers = [t for t in ("relu3_1", "relu3_2", "relu3_3", "relu3_4") if t in vgg.available] or style_layers
    return opts.style_layers or style_layers, opts.content_layer or content_layer


def build_objective(opts: StyleOptions, vgg: VGGFeatures, styles: list[torch.Tensor], palette: torch.Tensor,
                    defaults: BackendDefaults, style_levels: tuple[float, ...] = (1.0,)) -> Objective:
    """The objective for these options. palette: [3, ...] content colours for colour preservation;
    style_levels: the style image's scales the views may ask for (Objective.style_levels)."""
    style_layers, content_layer = taps_for(opts, vgg)
    vgg.check_taps([*style_layers, content_layer])
    styles = prepare_styles(styles, palette.cpu(), opts.preserve_color)
    scales = sorted({s * level for s in defaults.style_scales for level in (1.0, *style_levels)}, reverse=True)
    target = StyleTarget.from_images(vgg, styles, style_layers, opts.style_weights, scales)
    return Objective(vgg, target, content_layer, loss=opts.loss, style_weight=opts.strength,
                     content_weight=opts.content_weight, tv_weight=opts.tv_weight,
                     style_scales=defaults.style_scales, style_levels=tuple(style_levels))


def loop_config(opts: StyleOptions, stage: str = "stylizing") -> LoopConfig:
    """The loop's settings: every LoopConfig field that StyleOptions declares, by name (a new loop option declared
    in the schema reaches the loop with no change here)."""
    shared = {f.name: getattr(opts, f.name) for f in fields(LoopConfig) if hasattr(opts, f.name)}
    return LoopConfig(**shared, stage=stage)


# VGG's working set per pixel of a view (forward + backward to relu3, float32): about 2 KB measured (BENCHMARKS,
# 4 x 512² mesh views); half of it here, so that only runs which cannot fit are refused.
VGG_BYTES_PER_PIXEL = 1024


def free_memory_bytes(device: torch.device) -> int | None:
    """What the device can still allocate: free GPU memory, or MemAvailable on Linux; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(opts: StyleOptions, device: torch.device) -> None:
    """Refuse sizes whose VGG working set alone is above the free memory: a one-line error now instead of an
    allocation failure, or the system killing the process, later. opts: with the backend's defaults filled."""
    free = free_memory_bytes(device)
    if free is None or opts.size is None:
        return
    needs = {"--size": opts.size ** 2 * (opts.views or 1) * VGG_BYTES_PER_PIXEL,
             "--style-size": (opts.style_size or opts.size) ** 2 * VGG_BYTES_PER_PIXEL}
    if sum(needs.values()) > free:
        biggest = max(needs, key=needs.get)
        views = f" with {opts.views} views per step" if biggest == "--size" and (opts.views or 1) > 1 else ""
        value = opts.size if biggest == "--size" else opts.style_size
        raise UserError(f"{biggest} {value}{views} needs about {sum(needs.values()) / 2**30:.0f} GB of memory for "
                        f"VGG, and {free / 2**30:.0f} GB is free on {device.type}; lower {biggest}"
                        + (" or --views" if views else ""))


def reset_peak_memory(device: torch.device) -> None:
    """Start this run's peak-memory counts (see peak_memory): the CUDA allocator's peak statistics and, on
    Linux, the process's peak resident set (VmHWM, reset through /proc/self/clear_refs where allowed)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the host peak then counts from the start of the process


def host_peak_mb() -> float:
    """The process's peak resident set in MB since reset_peak_memory (Linux), else since it started."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """The report's peak memory since reset_peak_memory, in MB: "peak_memory_mb" is the host's (the process's
    peak resident set, every device), "peak_device_memory_mb" the GPU's (what the CUDA caching allocator
    reserved at most, torch.cuda.max_memory_reserved: tensors plus the allocator's cache, without the CUDA
    context; None on a CPU)."""
    device_peak = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None
    return {"peak_memory_mb": host_peak_mb(), "peak_device_memory_mb": device_peak}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
