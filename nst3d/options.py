"""The stylization options every command shares (image, mesh, splat, nerf, batch, the Blender worker),
spelled the same everywhere, and the set-up they imply (device, VGG, style target, objective)."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nst3d.color import PRESERVE_MODES, prepare_styles
from nst3d.errors import UserError
from nst3d.features import VGGFeatures, default_layers, load_vgg
from nst3d.files import load_image, resize_to
from nst3d.losses import LOSS_KINDS, Objective, StyleTarget
from nst3d.stylize import OPTIMIZERS, LoopConfig

NNFM_TV_WEIGHT = 1.0


@dataclass
class StyleOptions:
    """Everything that says how to stylize, whatever the asset. None means "the backend's default"."""

    styles: list[Path] = field(default_factory=list)
    style_weights: list[float] | None = None
    loss: str = "gram"
    strength: float = 1.0
    content_weight: float | None = None
    tv_weight: float | None = None
    steps: int | None = None
    size: int | None = None
    style_size: int | None = None
    views: int | None = None
    optimizer: str = "adam"
    lr: float | None = None
    init: str = "content"
    preserve_color: str = "none"
    weights: Path | None = None
    preprocess: str = "auto"
    style_layers: list[str] | None = None
    content_layer: str | None = None
    device: str = "auto"
    seed: int = 0
    report: Path | None = None


@dataclass
class BackendDefaults:
    """A backend's defaults for the options left as None."""

    steps: int = 300
    size: int = 256
    views: int = 1
    content_weight: float = 0.1
    tv_weight: float = 0.0
    lr: float = 0.02
    style_scales: tuple[float, ...] = (1.0,)


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got '{text}'") from None
    return parse


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not 0 < value < math.inf:  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value
    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 <= value < math.inf:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a number that is not negative, got {text}")
    return value


# Far above any useful strength, far below where Adam's squared gradients overflow float32 (about 1e20 here) and
# the parameters silently stop moving.
MAX_STRENGTH = 1e6


def _strength(text: str) -> float:
    value = _non_negative(text)
    if value > MAX_STRENGTH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_STRENGTH:g}, got {text} (the losses are relative: "
                                         "1 is the default style, 10-100 a very strong one)")
    return value


def add_style_options(parser: argparse.ArgumentParser, defaults: BackendDefaults, style_required: bool = True) -> None:
    """Add the shared options to a sub-command's parser; help texts show this backend's defaults."""
    g = parser.add_argument_group("stylization")
    g.add_argument("--style", dest="styles", action="append", type=Path, required=style_required, default=None,
                   metavar="IMAGE", help="style image; repeat for a blend of several")
    g.add_argument("--style-weights", type=_csv(float), metavar="W1,W2", help="blend weights of the styles")
    g.add_argument("--loss", choices=LOSS_KINDS, default="gram",
                   help="style loss: gram (Gatys), adain (mean/std), nnfm (nearest neighbour, ARF)")
    g.add_argument("--strength", type=_strength, default=1.0, help="style weight multiplier (default 1)")
    g.add_argument("--content-weight", type=_non_negative, help=f"content weight (default {defaults.content_weight})")
    g.add_argument("--tv-weight", type=_non_negative, help=f"total-variation weight (default {defaults.tv_weight})")
    g.add_argument("--steps", type=_positive(int), help=f"optimisation steps (default {defaults.steps})")
    g.add_argument("--size", type=_positive(int), help=f"working/render resolution in px (default {defaults.size})")
    g.add_argument("--style-size", type=_positive(int), help="style image resolution in px (default: --size)")
    g.add_argument("--views", type=_positive(int), help=f"views per step, 3D backends (default {defaults.views})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    g.add_argument("--lr", type=_positive(float), help=f"learning rate (default {defaults.lr})")
    g.add_argument("--init", choices=("content", "noise"), default="content", help="start from the content or noise")
    g.add_argument("--preserve-color", choices=PRESERVE_MODES, default="none",
                   help="keep the content's colours: luminance-only transfer or style histogram matching")
    g.add_argument("--weights", type=Path,
                   help="VGG-19 weights file (default: $NST3D_VGG19_WEIGHTS, hub cache, download)")
    g.add_argument("--preprocess", choices=("auto", "torchvision", "caffe"), default="auto",
                   help="VGG input convention (auto: caffe for files named *caffe*)")
    g.add_argument("--style-layers", type=_csv(str), metavar="A,B,C", help="VGG taps for the style loss")
    g.add_argument("--content-layer", metavar="TAP", help="VGG tap for the content loss")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--seed", type=int, default=0, help="random seed (runs are repeatable)")
    g.add_argument("--report", type=Path, metavar="JSON", help="write a JSON report of the run here")


def options_from_args(args: argparse.Namespace) -> StyleOptions:
    """The StyleOptions a parsed command line asks for."""
    names = StyleOptions.__dataclass_fields__
    opts = StyleOptions(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    if opts.style_weights is not None and len(opts.style_weights) != len(opts.styles):
        raise UserError(f"--style-weights has {len(opts.style_weights)} values for {len(opts.styles)} --style images")
    if opts.style_weights is not None and (min(opts.style_weights) < 0 or sum(opts.style_weights) <= 0):
        raise UserError("--style-weights must be non-negative and not all zero")
    return opts


def with_defaults(opts: StyleOptions, defaults: BackendDefaults) -> StyleOptions:
    """A copy of opts with the backend's defaults filled in."""
    filled = StyleOptions(**vars(opts))
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

    - cudnn.benchmark: cuDNN times its convolution algorithms once per input shape and keeps the fastest; a run
      feeds VGG the same few shapes (views, style scales) every step, so the search pays for itself at once.
    - TF32 for float32 matrix products and convolutions (Ampere and later): VGG features, Gram matrices and the
      NeRF's MLPs with a 10-bit mantissa. The losses are ratios of feature statistics and the optimiser only
      follows their gradients, so figures move in the third digit at most.
    """
    torch.backends.cudnn.benchmark = True
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the per-backend API (not mixed with the old one)
        matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True
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
                    defaults: BackendDefaults) -> Objective:
    """The objective for these options. palette: [3, ...] content colours for colour preservation."""
    style_layers, content_layer = taps_for(opts, vgg)
    vgg.check_taps([*style_layers, content_layer])
    styles = prepare_styles(styles, palette.cpu(), opts.preserve_color)
    target = StyleTarget.from_images(vgg, styles, style_layers, opts.style_weights, defaults.style_scales)
    return Objective(vgg, target, content_layer, loss=opts.loss, style_weight=opts.strength,
                     content_weight=opts.content_weight, tv_weight=opts.tv_weight,
                     style_scales=defaults.style_scales)


def loop_config(opts: StyleOptions, stage: str = "stylizing") -> LoopConfig:
    return LoopConfig(steps=opts.steps, optimizer=opts.optimizer, lr=opts.lr, seed=opts.seed, stage=stage)


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
