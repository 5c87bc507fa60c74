"""The stylization options, declared ONCE: each field of `StyleOptions` (shared by every command) and of the
per-backend option classes carries its help, choices and bounds in a `Spec`.

Everything else derives from these declarations or is tested against them:
- the command line: `add_arguments(parser, cls)` adds one argparse option per field;
- the worker's JSON jobs (Blender add-on, headless Blender script): `from_mapping(cls, data, base)` validates a
  job's "options" with the same rules and messages;
- the Blender panel: `blender_copy()` is the text of blender_addon/option_schema.py, the add-on's generated
  copy (the add-on is bpy + stdlib and cannot import this), from which its properties are built;
- the nerfstudio method's config uses the same names (tests/test_schema.py checks defaults, choices and bounds).

Adding an option that reaches the optimiser from the Blender panel: declare it here with `panel=True`,
regenerate the add-on's copy (`python -m nst3d.schema > blender_addon/option_schema.py`), and use it where it
acts. A field default of None means "the backend's default" (nst3d.options.BackendDefaults).
"""

from __future__ import annotations

import argparse
import math
import pprint
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from nst3d.errors import UserError

LOSS_KINDS = ("gram", "adain", "nnfm")
PRESERVE_MODES = ("none", "luminance", "histogram")
OPTIMIZERS = ("adam", "lbfgs")
INITS = ("content", "noise")
PREPROCESS = ("auto", "torchvision", "caffe")
DEVICES = ("auto", "cpu", "cuda")
SHADINGS = ("none", "lambert")
EXPORT_FORMATS = ("glb", "obj")
SPLITS = ("auto", "none")
STROKE_SIZINGS = ("view", "world")

# Far above any useful strength, far below where Adam's squared gradients overflow float32 (about 1e20 here) and
# the parameters silently stop moving.
MAX_STRENGTH = 1e6


@dataclass(frozen=True)
class Spec:
    """How one option is spelled, checked and explained.

    kind: the element type (int, float, str, Path, bool); many: "" (one value), "repeat" (the flag repeats:
    a list) or "csv" (one comma-separated value: a list); minimum/maximum: inclusive bounds, positive: > 0;
    soft_maximum: where a UI slider ends (not a limit); flag: the command-line spelling when it is not
    --name-with-dashes; label: the Blender panel's name; panel: shown in the Blender panel; unit: "length" for a
    size in world units (the panel shows it in the scene's units).
    """

    help: str
    kind: type = str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    soft_maximum: float | None = None
    many: str = ""
    flag: str = ""
    metavar: str | None = None
    label: str = ""
    panel: bool = False
    unit: str = ""


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with its Spec (lists take a fresh copy of `default` per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"spec": Spec(help=help, **spec)})
    return field(default=default, metadata={"spec": Spec(help=help, **spec)})


@dataclass
class StyleOptions:
    """Everything that says how to stylize, whatever the asset. None means "the backend's default"."""

    styles: list[Path] = option([], "style image; repeat for a blend of several", kind=Path, many="repeat",
                                flag="--style", metavar="IMAGE")
    style_weights: list[float] | None = option(None, "blend weights of the styles", kind=float, many="csv",
                                               minimum=0.0, metavar="W1,W2")
    loss: str = option("gram", "style loss: gram (Gatys), adain (mean/std), nnfm (nearest neighbour, ARF)",
                       choices=LOSS_KINDS, label="Loss", panel=True)
    strength: float = option(1.0, "style weight multiplier (the losses are relative: 1 is the default style, "
                                  "10-100 a very strong one)", kind=float, minimum=0.0, maximum=MAX_STRENGTH,
                             soft_maximum=10.0, label="Strength", panel=True)
    content_weight: float | None = option(None, "content weight", kind=float, minimum=0.0)
    tv_weight: float | None = option(None, "total-variation weight", kind=float, minimum=0.0)
    steps: int | None = option(None, "optimisation steps", kind=int, positive=True, soft_maximum=2000,
                               label="Steps", panel=True)
    size: int | None = option(None, "working/render resolution in px", kind=int, positive=True, soft_maximum=4096,
                              label="Resolution", panel=True)
    style_size: int | None = option(None, "style image resolution in px (default: --size)", kind=int, positive=True)
    stroke_scale: float | None = option(None, "the finest scale the style is laid onto the surface at, in the asset's "
                                              "units (glTF: metres; the Blender scene's units): the height of the "
                                              "closest training views, so strokes hold up that close (default: a "
                                              "fifth of the asset's bounding diagonal; a scene shares one); 3D "
                                              "backends", kind=float, positive=True, metavar="LENGTH",
                                        label="Stroke Scale", panel=True, unit="length")
    stroke_sizing: str = option("view", "view (default): every training view lays the style at its own screen scale, "
                                        "the strongest look from every distance; world: every view lays it at the "
                                        "stroke scale's size on the surface, so strokes have one size in world "
                                        "units across a scene (and look small from afar); meshes",
                                choices=STROKE_SIZINGS, label="Stroke Sizing", panel=True)
    views: int | None = option(None, "views per step, 3D backends", kind=int, positive=True, soft_maximum=64,
                               label="Views", panel=True)
    optimizer: str = option("adam", "the optimiser", choices=OPTIMIZERS)
    lr: float | None = option(None, "learning rate", kind=float, positive=True)
    init: str = option("content", "start from the content or noise", choices=INITS)
    preserve_color: str = option("none", "keep the content's colours: luminance-only transfer or style "
                                         "histogram matching", choices=PRESERVE_MODES, label="Preserve Colour",
                                 panel=True)
    weights: Path | None = option(None, "VGG-19 weights file (default: $NST3D_VGG19_WEIGHTS, hub cache, download)",
                                  kind=Path)
    preprocess: str = option("auto", "VGG input convention (auto: caffe for files named *caffe*)",
                             choices=PREPROCESS)
    style_layers: list[str] | None = option(None, "VGG taps for the style loss", many="csv", metavar="A,B,C")
    content_layer: str | None = option(None, "VGG tap for the content loss", metavar="TAP")
    device: str = option("auto", "where to run (auto: a CUDA GPU when there is one)", choices=DEVICES)
    seed: int = option(0, "random seed (runs are repeatable)", kind=int, minimum=0, label="Seed", panel=True)
    report: Path | None = option(None, "write a JSON report of the run here", kind=Path, metavar="JSON")


@dataclass
class MeshOptions:
    """The mesh backend's own options (`nst3d mesh`, worker jobs, the Blender panel, the batch script)."""

    texture_size: int | None = option(None, "resample every texture to N px (longer side; default: each "
                                            "texture's own)", kind=int, minimum=8, maximum=16384, metavar="N",
                                      label="Texture Size", panel=True)
    style_map: list[str] = option([], "a style for one material or object (repeat; the same NAME twice blends)",
                                  many="repeat", metavar="NAME=IMAGE")
    shading: str = option("none", "render with Lambert shading while optimising (default: unlit base colour)",
                          choices=SHADINGS)
    export_format: str = option("glb", "output format", choices=EXPORT_FORMATS, flag="--format")


@dataclass
class SplatOptions:
    """The splat backend's options declared here (`nst3d splat`); its older flags live in nst3d/commands/splat.py."""

    split: str = option("auto", "auto (default): split Gaussians larger than a few pixels of the finest (stroke-scale) "
                                "views into smaller ones that render the same, so strokes can be finer than the "
                                "capture's Gaussians (the count grows, up to 4x); none: keep every Gaussian's geometry "
                                "bit-identical", choices=SPLITS)


@dataclass(frozen=True)
class BackendDefaults:
    """A backend's defaults for the StyleOptions left as None, and the scales its style loss looks at."""

    steps: int = 300
    size: int = 256
    views: int = 1
    content_weight: float = 0.1
    tv_weight: float = 0.0
    lr: float = 0.02
    style_scales: tuple[float, ...] = (1.0,)


#: Each backend's defaults, in one place. Mesh: a total-variation term on the rendered views (not the texels)
#: removes the pixel-scale flecks that no other view or renderer reproduces, so the asset shimmers less.
DEFAULTS = {
    "image": BackendDefaults(steps=300, size=512, views=1, content_weight=0.1, tv_weight=0.0, lr=0.02),
    "mesh": BackendDefaults(steps=300, size=256, views=4, content_weight=0.05, tv_weight=3.0, lr=0.02,
                            style_scales=(1.0, 0.5)),
    "splat": BackendDefaults(steps=300, size=256, views=2, content_weight=0.02, tv_weight=0.0, lr=0.03,
                             style_scales=(1.0, 0.5)),
    "nerf": BackendDefaults(steps=300, size=256, views=1, content_weight=0.05, tv_weight=0.0, lr=0.01),
}
#: NNFM's relu3 features do not see pixel-level colour noise: without smoothing it speckles, so with
#: --loss nnfm the total-variation weight is at least this unless it is set.
NNFM_TV_WEIGHT = 1.0


# ----------------------------------------------------------------------------------------------------------
# Checking one value (the command line and the JSON jobs share these rules and messages)


def check_value(spec: Spec, value: Any) -> Any:
    """`value` converted to the spec's kind and checked; raises ValueError with what is wrong."""
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if spec.kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = spec.kind(value)
        except ValueError:
            raise ValueError(f"expected {'an integer' if spec.kind is int else 'a number'}, got {value!r}") from None
        if spec.kind is int and isinstance(value, float) and number != value:
            raise ValueError(f"expected an integer, got {value!r}")
        _check_bounds(spec, number, value)
        return number
    if not isinstance(value, str | Path):
        raise ValueError(f"expected a {'path' if spec.kind is Path else 'string'}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise ValueError(f"invalid choice {value!r} (choose from {', '.join(spec.choices)})")
    return Path(value) if spec.kind is Path else str(value)


def _check_bounds(spec: Spec, number: float, shown: Any) -> None:
    low = 0 if spec.positive else spec.minimum
    wanted = ("a positive number" if spec.positive else "a number that is not negative" if low == 0
              else f"at least {low:g}" if low is not None else "a finite number")
    if not -math.inf < number < math.inf or (low is not None and (number < low or (spec.positive and number == 0))):
        raise ValueError(f"must be {wanted}, got {shown}")  # nan and infinities too
    if spec.maximum is not None and number > spec.maximum:
        raise ValueError(f"must be at most {spec.maximum:g}, got {shown}")


def check_style_weights(opts: StyleOptions) -> None:
    """Raises ValueError("...") when the blend weights do not fit the styles."""
    weights = opts.style_weights
    if weights is None:
        return
    if len(weights) != len(opts.styles):
        raise ValueError(f"has {len(weights)} values for {len(opts.styles)} style images")
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("must be non-negative and not all zero")


def specs(cls: type) -> dict[str, Spec]:
    """{field name: Spec} of an options dataclass, in declaration order."""
    return {f.name: f.metadata["spec"] for f in fields(cls)}


def default_of(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def flag_of(name: str, spec: Spec) -> str:
    return spec.flag or "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------------------------------------
# The command line


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, shown_defaults: dict[str, Any] | None = None,
                  required: tuple[str, ...] = (), title: str | None = None) -> None:
    """One argparse option per field of `cls`. shown_defaults: {name: the backend's default} for the help of
    fields whose declared default is None; required: fields that must be given."""
    shown_defaults = shown_defaults or {}
    group = parser.add_argument_group(title) if title else parser
    for name, spec in specs(cls).items():
        default = default_of(cls, name)
        shown = shown_defaults.get(name, default)
        help_text = spec.help + ("" if shown in (None, [], False) or "default" in spec.help
                                 else f" (default {shown:g})" if isinstance(shown, float) else f" (default {shown})")
        kwargs: dict[str, Any] = {"dest": name, "help": help_text, "metavar": spec.metavar}
        if spec.kind is bool:
            group.add_argument(flag_of(name, spec), action="store_true", dest=name, help=spec.help)
            continue
        if spec.choices:
            kwargs.update(choices=spec.choices, metavar=None)
        if spec.many == "repeat":
            kwargs.update(action="append", type=_argparse_type(spec), default=None)
        elif spec.many == "csv":
            kwargs.update(type=_csv_type(spec), default=None)
        else:
            kwargs.update(type=_argparse_type(spec), default=None if default is None else default)
        group.add_argument(flag_of(name, spec), required=name in required, **kwargs)


def _argparse_type(spec: Spec):
    def parse(text: str) -> Any:
        try:
            return check_value(spec, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _csv_type(spec: Spec):
    def parse(text: str) -> list[Any]:
        try:
            return [check_value(spec, item.strip()) for item in text.split(",") if item.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc} in '{text}'") from None
    return parse


def subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    """The parser of sub-command `name` in build_parser()'s parser, or None if there is no such command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return None


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """An options instance from parsed arguments (fields not given keep their declared defaults)."""
    values = {name: getattr(args, name) for name in specs(cls) if getattr(args, name, None) is not None}
    return cls(**values)


def parse_style_map(entries: list[str] | None) -> dict[str, list[Path]]:
    """MeshOptions.style_map ["Wood=b.jpg", "Wood=c.jpg", "Body=d.png"] -> {"Wood": [b.jpg, c.jpg], "Body": [d.png]}."""
    out: dict[str, list[Path]] = {}
    for entry in entries or []:
        name, sep, image = entry.partition("=")
        if not sep or not name.strip() or not image.strip():
            raise UserError(f"--style-map expects NAME=IMAGE, got '{entry}'")
        out.setdefault(name.strip(), []).append(Path(image.strip()))
    return out


# ----------------------------------------------------------------------------------------------------------
# JSON (worker jobs)


def from_mapping(cls: type, data: Any, base: Path, what: str = "job option") -> Any:
    """An options instance from a JSON object with the field names; paths are resolved against `base`.
    Raises ValueError("<what> NAME ...") naming the first bad entry."""
    if not isinstance(data, dict):
        raise ValueError(f"{what}s must be a JSON object")
    known = specs(cls)
    if unknown := sorted(set(data) - set(known)):
        raise ValueError(f"{what}s have unknown names {', '.join(unknown)}; known: {', '.join(known)}")
    values = {}
    for name, value in data.items():
        if value is None:
            continue
        spec = known[name]
        try:
            if spec.many:
                if not isinstance(value, list):
                    raise ValueError(f"must be a list, got {value!r}")
                checked = [check_value(spec, item) for item in value]
            else:
                checked = check_value(spec, value)
        except ValueError as exc:
            raise ValueError(f"{what} {name} {exc}") from None
        values[name] = _resolved(checked, base) if spec.kind is Path else checked
    return cls(**values)


def resolve_path(value: Path, base: Path) -> Path:
    """`value` with ~ expanded, relative to `base` unless absolute (a job file's paths are relative to its folder)."""
    value = value.expanduser()
    return value if value.is_absolute() else base / value


def _resolved(value: Path | list[Path], base: Path) -> Path | list[Path]:
    return [resolve_path(v, base) for v in value] if isinstance(value, list) else resolve_path(value, base)


def to_mapping(options: Any) -> dict[str, Any]:
    """The JSON form of an options instance (paths as absolute strings); inverse of from_mapping."""
    out = {}
    for name, spec in specs(type(options)).items():
        value = getattr(options, name)
        if spec.kind is Path and value is not None:
            value = [str(Path(v).resolve()) for v in value] if spec.many else str(Path(value).resolve())
        out[name] = list(value) if isinstance(value, list) else value
    return out


# ----------------------------------------------------------------------------------------------------------
# The Blender add-on's copy


def blender_copy() -> str:
    """The text of blender_addon/option_schema.py: the panel options of StyleOptions and MeshOptions, with the
    mesh backend's defaults (what the panel runs), as plain data."""
    panel = {}
    for group, cls in (("options", StyleOptions), ("mesh", MeshOptions)):
        for name, spec in specs(cls).items():
            if not spec.panel:
                continue
            default = default_of(cls, name)
            if default is None:
                default = getattr(DEFAULTS["mesh"], name, None)
            entry: dict[str, Any] = {"label": spec.label, "help": spec.help, "kind": spec.kind.__name__,
                                     "default": default, "group": group}
            if spec.choices:
                entry["choices"] = list(spec.choices)
            for bound in ("minimum", "maximum", "soft_maximum"):
                if getattr(spec, bound) is not None:
                    entry[bound] = getattr(spec, bound)
            if spec.positive:
                entry["minimum"] = 1 if spec.kind is int else entry.get("minimum", 0.0)
            if spec.unit:
                entry["unit"] = spec.unit
            panel[name] = entry
    body = pprint.pformat(panel, width=116, sort_dicts=False)
    header = ('"""Generated by `python -m nst3d.schema` from nst3d/schema.py: do not edit (tests/test_schema.py checks '
              'it).\n\nThe panel\'s options, in panel order: name -> label, help, kind, default (the mesh backend\'s), '
              'group\n("options": a job\'s "options", "mesh": a top-level job field), choices, bounds.\nA default of '
              'None is shown as 0 in the panel and means "the backend\'s own" (e.g. each texture\'s size).\n"""\n')
    return f"{header}\nPANEL_OPTIONS = {body}\n"


if __name__ == "__main__":
    sys.stdout.write(blender_copy())
