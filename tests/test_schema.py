"""The options are declared once (nst3d.schema): the command line, the worker's JSON, the Blender add-on's copy and
the nerfstudio method's config all agree with the declarations."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from nst3d import schema
from nst3d.color import PRESERVE_MODES
from nst3d.errors import UserError
from nst3d.losses import LOSS_KINDS
from nst3d.options import add_style_options, options_from_args, with_defaults
from nst3d.stylize import OPTIMIZERS
from nst3d.worker import job_from_dict, options_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_choices_are_the_engines_own():
    assert schema.LOSS_KINDS == LOSS_KINDS
    assert schema.PRESERVE_MODES == PRESERVE_MODES
    assert schema.OPTIMIZERS == OPTIMIZERS


def test_the_blender_addon_carries_the_generated_copy():
    """blender_addon/option_schema.py is exactly what `python -m nst3d.schema` writes: regenerate it after a
    change to nst3d/schema.py."""
    assert (REPO / "blender_addon" / "option_schema.py").read_text() == schema.blender_copy()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_style_options(parser, schema.DEFAULTS["mesh"])
    schema.add_arguments(parser, schema.MeshOptions)
    return parser


# (field, bad value): each refused by both the command line and the worker's JSON, with the same reason.
BAD_VALUES = [("loss", "sharp"), ("strength", -1), ("strength", 2e6), ("steps", 0), ("size", 0), ("views", -1),
              ("lr", 0), ("seed", -3), ("preserve_color", "sepia"), ("optimizer", "sgd"), ("device", "tpu"),
              ("content_weight", float("nan")), ("style_size", 2.5)]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_cli_and_worker_refuse_the_same_values(tmp_path, name, value):
    spec = schema.specs(schema.StyleOptions)[name]
    with pytest.raises(argparse.ArgumentError) as cli:
        _parser().parse_args(["--style", "s.png", schema.flag_of(name, spec), str(value)])
    with pytest.raises(UserError) as job:
        options_from_dict({"styles": ["s.png"], name: value}, tmp_path)
    reason = str(job.value).split(f"job option {name} ")[1]
    assert reason.split(",")[0].split(" got")[0] in str(cli.value), (reason, str(cli.value))


def test_cli_and_worker_accept_the_same_options(tmp_path):
    """The same options through argparse and through a job's JSON give equal StyleOptions."""
    argv = ["--style", str(tmp_path / "a.png"), "--style", str(tmp_path / "b.png"), "--style-weights", "1,3",
            "--loss", "nnfm", "--strength", "2.5", "--steps", "40", "--size", "96", "--views", "2", "--lr", "0.05",
            "--preserve-color", "luminance", "--style-layers", "relu1_1,relu2_1", "--seed", "7"]
    from_cli = options_from_args(_parser().parse_args(argv))
    from_job = options_from_dict(schema.to_mapping(from_cli), tmp_path)
    assert from_job == from_cli
    assert from_cli.style_weights == [1.0, 3.0] and from_cli.style_layers == ["relu1_1", "relu2_1"]


def test_worker_mesh_fields_follow_the_schema(tmp_path):
    job = {"nst3d_job": 1, "kind": "mesh", "input": "in.glb", "output_dir": "out", "options": {"styles": ["s.png"]}}
    assert job_from_dict({**job, "texture_size": 64}, tmp_path).texture_size == 64
    for key, value in (("texture_size", 4), ("shading", "phong"), ("export_format", "fbx")):
        with pytest.raises(UserError, match=f"job {key} "):
            job_from_dict({**job, key: value}, tmp_path)


def test_every_option_has_help_and_a_valid_default():
    for cls in (schema.StyleOptions, schema.MeshOptions):
        for name, spec in schema.specs(cls).items():
            assert spec.help, name
            default = schema.default_of(cls, name)
            if default not in (None, []) and not spec.many:
                assert schema.check_value(spec, default) == default, name


needs_nerfstudio = pytest.mark.skipif(importlib.util.find_spec("nerfstudio") is None, reason="needs nerfstudio")


@pytest.mark.nerf
@needs_nerfstudio
def test_nerfstudio_config_agrees_with_the_schema():
    """StylePipelineConfig uses the schema's names (no style_weight / vgg_weights / views_per_step), with
    `nst3d nerf`'s defaults and the schema's choices."""
    from typing import get_args

    from nst3d.integrations.nerfstudio.method import StylePipelineConfig

    config = StylePipelineConfig()
    names = {f.name: f for f in dataclasses.fields(StylePipelineConfig)}
    assert not {"style_weight", "vgg_weights", "views_per_step"} & set(names)
    shared = [n for n in schema.specs(schema.StyleOptions) if n in names]
    assert {"loss", "strength", "content_weight", "tv_weight", "size", "style_size", "views", "preserve_color",
            "weights", "preprocess", "style_layers", "content_layer", "seed"} <= set(shared)
    nerf = schema.DEFAULTS["nerf"]
    for name in shared:
        spec = schema.specs(schema.StyleOptions)[name]
        default = schema.default_of(schema.StyleOptions, name)
        expected = getattr(nerf, name, None) if default is None and name != "tv_weight" else default
        value = getattr(config, name)
        assert (list(value) or None if name == "style_layers" else value) == expected, name
        if spec.choices:
            hints = StylePipelineConfig.__annotations__[name]
            assert tuple(get_args(eval(hints, vars(__import__("typing"))))) == spec.choices, name


@pytest.mark.nerf
@needs_nerfstudio
def test_ns_train_nnfm_gets_the_total_variation_floor():
    """`ns-train nst3d-nerfacto --pipeline.loss nnfm` smooths as `nst3d nerf --loss nnfm` does (its tv_weight was
    0 there: the NNFM speckle floor never applied)."""
    from nst3d.integrations.nerfstudio.method import StylePipelineConfig
    from nst3d.integrations.nerfstudio.pipeline import options_from_config

    config = StylePipelineConfig(style_image=Path("s.png"), loss="nnfm")
    opts = with_defaults(options_from_config(config), schema.DEFAULTS["nerf"])
    cli = with_defaults(schema.StyleOptions(styles=[Path("s.png")], loss="nnfm"), schema.DEFAULTS["nerf"])
    assert opts.tv_weight == cli.tv_weight == schema.NNFM_TV_WEIGHT
    assert (opts.content_weight, opts.size, opts.views, opts.strength) == (cli.content_weight, cli.size, cli.views,
                                                                          cli.strength)
