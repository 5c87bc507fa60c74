"""A frozen VGG-19 feature extractor in torchvision's `features.N` layout, without torchvision.

Weights, in this order: an explicit path (--weights / NST3D_VGG19_WEIGHTS); torchvision's checkpoint in the
torch hub cache; else a one-time download of torchvision's IMAGENET1K_V1 VGG-19, hash-checked and cached.
A file that covers only the first layers (e.g. conv1_1..conv3_4) works for taps up to those layers.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from nst3d.errors import UserError
from nst3d.files import atomic_path

# (name, kind) for every module of torchvision's vgg19().features, index = position.
_BLOCKS = [(1, 2), (2, 2), (3, 4), (4, 4), (5, 4)]
_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}


def _layer_names() -> list[str]:
    names = []
    for block, convs in _BLOCKS:
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


LAYER_NAMES: list[str] = _layer_names()  # LAYER_NAMES[N] is the name of features.N
LAYER_INDEX: dict[str, int] = {name: i for i, name in enumerate(LAYER_NAMES)}
# The smallest image side (px) that still reaches each layer: every pool up to it halves the image.
MIN_INPUT_SIDE: dict[str, int] = {name: 2 ** sum(n.startswith("pool") for n in LAYER_NAMES[: i + 1])
                                  for i, name in enumerate(LAYER_NAMES)}

TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
TORCHVISION_SHA256_PREFIX = "dcbb9e9d"  # torchvision names files by the first 8 hex digits of the sha256
WEIGHTS_ENV = "NST3D_VGG19_WEIGHTS"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def build_vgg19_features(up_to: int = len(LAYER_NAMES) - 1) -> nn.Sequential:
    """VGG-19 `features` modules 0..up_to (inclusive), randomly initialised, torchvision indices."""
    layers: list[nn.Module] = []
    in_channels = 3
    for name in LAYER_NAMES[: up_to + 1]:
        if name.startswith("conv"):
            out_channels = _CHANNELS[int(name[4])]
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            in_channels = out_channels
        elif name.startswith("relu"):
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def covered_layers(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Layer names (conv, relu and pool) that a features state_dict can compute, in order."""
    names = []
    for index, name in enumerate(LAYER_NAMES):
        if name.startswith("conv") and f"features.{index}.weight" not in state_dict:
            break
        names.append(name)
    while names and names[-1].startswith("pool"):
        names.pop()  # a trailing pool is only useful if the next conv is there
    return names


class VGGFeatures(nn.Module):
    """Frozen VGG-19 that returns named taps. Only the layers up to the deepest tap run.

    forward(rgb [B, 3, H, W] in [0, 1]) -> {tap: [B, C, h, w]}
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], preprocess: str = "torchvision",
                 source: str = "random"):
        super().__init__()
        if preprocess not in ("torchvision", "caffe"):
            raise UserError(f"unknown preprocessing '{preprocess}'; use torchvision or caffe")
        self.available = covered_layers(state_dict)
        if not self.available:
            raise UserError(f"VGG-19 weights {source} contain no usable layer (expected keys like features.0.weight)")
        self.net = build_vgg19_features(LAYER_INDEX[self.available[-1]])
        own = {k[len("features."):]: v for k, v in state_dict.items() if k.startswith("features.")}
        own = {k: v for k, v in own.items() if int(k.split(".")[0]) < len(self.net)}
        try:
            self.net.load_state_dict(own)
        except RuntimeError as exc:
            raise UserError(f"VGG-19 weights {source} do not match the VGG-19 layout: "
                            f"{str(exc).splitlines()[0]}") from None
        self.net.requires_grad_(False).eval()
        self.preprocess = preprocess
        self.source = source
        if preprocess == "torchvision":
            mean, scale = torch.tensor(IMAGENET_MEAN), 1.0 / torch.tensor(IMAGENET_STD)
        else:
            mean, scale = torch.tensor(CAFFE_MEAN_BGR[::-1]) / 255.0, torch.full((3,), 255.0)
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def check_taps(self, taps: Sequence[str]) -> None:
        """Raise a one-line UserError for unknown taps or taps deeper than the weights cover."""
        relus = [n for n in self.available if n.startswith(("relu", "conv"))]
        for tap in taps:
            if tap not in LAYER_INDEX:
                raise UserError(f"unknown VGG-19 layer '{tap}'; use names like relu1_1, relu3_1, conv4_2")
            if tap not in self.available:
                raise UserError(f"layer '{tap}' is deeper than the VGG-19 weights cover ({self.source}); "
                                f"available: {', '.join(relus)}")

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB in [0, 1] -> the network's input space."""
        x = (rgb - self.mean) * self.scale
        return x.flip(1) if self.preprocess == "caffe" else x

    def forward(self, rgb: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        wanted = {LAYER_INDEX[t]: t for t in taps}
        last = max(wanted)
        if min(rgb.shape[-2:]) < MIN_INPUT_SIDE[wanted[last]]:
            h, w = rgb.shape[-2:]
            raise UserError(f"a {w}x{h} px image is too small for VGG layer {wanted[last]} (it needs "
                            f"{MIN_INPUT_SIDE[wanted[last]]} px or more on each side); raise --size or --style-size")
        out: dict[str, torch.Tensor] = {}
        x = self.normalize(rgb)
        for index, layer in enumerate(self.net):
            x = layer(x)
            if index in wanted:
                out[wanted[index]] = x
            if index == last:
                break
        return out


def random_vgg(seed: int = 0, up_to: str = "relu5_1") -> VGGFeatures:
    """A small seeded random-weight VGG for tests of mechanics (not for quality)."""
    generator = torch.Generator().manual_seed(seed)
    net = build_vgg19_features(LAYER_INDEX[up_to])
    state = {}
    for index, module in enumerate(net):
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * 9
            weight = torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
            state[f"features.{index}.weight"] = weight
            state[f"features.{index}.bias"] = torch.zeros(module.out_channels)
    return VGGFeatures(state, "torchvision", source="random")


def hub_checkpoint_path() -> Path:
    """Where torch hub (and torchvision) keep the VGG-19 checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def resolve_weights(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Find the VGG-19 weights file: explicit path, $NST3D_VGG19_WEIGHTS, hub cache, else download."""
    explicit = path or os.environ.get(WEIGHTS_ENV)
    if explicit:
        explicit = Path(explicit).expanduser()
        if not explicit.is_file():
            raise UserError(f"VGG-19 weights file not found: {explicit}")
        return explicit
    cached = hub_checkpoint_path()
    if cached.is_file():
        return cached
    if not download:
        raise UserError(f"no VGG-19 weights: put {TORCHVISION_FILE} in {cached.parent} or pass --weights PATH")
    return download_weights(cached)


def download_weights(target: Path) -> Path:
    """Download torchvision's VGG-19 (~550 MB) to `target`, checking its sha256 prefix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"nst3d: downloading VGG-19 weights (~550 MB, once) to {target}", file=sys.stderr)
    digest = hashlib.sha256()
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(TORCHVISION_URL, timeout=30) as response, \
                open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            from tqdm import tqdm

            with tqdm(total=total or None, unit="B", unit_scale=True, desc="VGG-19", file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            out.flush()
            if not digest.hexdigest().startswith(TORCHVISION_SHA256_PREFIX):
                raise UserError(f"downloaded VGG-19 weights failed the hash check; delete {target} and retry")
    except OSError as exc:
        raise UserError(f"cannot download VGG-19 weights ({exc.__class__.__name__}): no network? Put "
                        f"{TORCHVISION_FILE} in {target.parent}, or pass --weights PATH / set {WEIGHTS_ENV}") from None
    return target


def load_vgg(path: str | os.PathLike | None = None, preprocess: str = "auto",
             device: torch.device | str = "cpu") -> VGGFeatures:
    """Load the frozen VGG-19. preprocess "auto" picks caffe for files with 'caffe' in their name."""
    weights = resolve_weights(path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"cannot read VGG-19 weights {weights}: {exc.__class__.__name__}; "
                        "re-download it or pass another --weights file") from None
    if not isinstance(state, dict):
        raise UserError(f"VGG-19 weights {weights} are not a state_dict")
    if preprocess == "auto":
        preprocess = "caffe" if "caffe" in weights.name.lower() else "torchvision"
    return VGGFeatures(state, preprocess, source=str(weights)).to(device)


def default_layers(vgg: VGGFeatures) -> tuple[list[str], str]:
    """(style taps, content tap): Gatys' set when the weights are complete, else the deepest covered."""
    full_style = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    if "relu5_1" in vgg.available:
        return full_style, "relu4_2"
    style = [t for t in full_style if t in vgg.available]
    content = "relu3_2" if "relu3_2" in vgg.available else style[-1]
    return style, content
