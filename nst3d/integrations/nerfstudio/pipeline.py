"""The nst3d-nerfacto pipeline and trainer (see method.py for the method and its options).

StylePipeline is nerfstudio's VanillaPipeline with one override: the training step. Each step computes the
stylization gradient exactly as `nst3d nerf` does (nst3d.stylize.accumulate_gradients over a NerfBackend:
deferred back-propagation in ray patches), then hands it to nerfstudio's trainer as a loss whose backward
replays that gradient, so the trainer's optimiser, gradient scaler, checkpoints, viewer and logging work as
for any method. Viewing or rendering a stylized run needs neither the style image nor VGG weights: they are
loaded on the first training step only.

StyleTrainer differs from nerfstudio's Trainer in loading: it requires a checkpoint (--load-dir or
--load-checkpoint), accepts a plain nerfacto one (whose optimiser state does not fit the appearance
optimiser), and takes the model and dataparser settings of the run being stylized from its config.yml.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from nerfstudio.engine.trainer import Trainer
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline

from nst3d.errors import UserError


class _ReplayGradients(torch.autograd.Function):
    """A scalar whose backward writes precomputed gradients into `params` (times the incoming gradient, so
    nerfstudio's gradient scaler still applies)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: list[torch.Tensor | None], *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return (None, None, *[None if g is None else g * grad_output for g in ctx.grads])


class _Stylizer:
    """What a training step needs, built once: the backend over the pipeline's model and the objective."""

    def __init__(self, pipeline: StylePipeline):
        from nst3d.backends.nerf import (
            NerfBackend,
            SceneFrame,
            content_palette,
            from_nerfstudio,
            working_size,
        )
        from nst3d.options import build_objective, configure_cuda, load_styles, vgg_for, with_defaults
        from nst3d.schema import DEFAULTS

        config = pipeline.config
        if config.style_image is None:
            raise UserError("nst3d-nerfacto needs a style image: pass --pipeline.style-image IMAGE")
        opts = with_defaults(options_from_config(config), DEFAULTS["nerf"])
        cameras = pipeline.datamanager.train_dataset.cameras
        width, height = working_size(int(cameras[0:1].width), int(cameras[0:1].height), config.size)
        train = from_nerfstudio(cameras, width, height)
        self.backend = NerfBackend(pipeline.model, train, SceneFrame.from_cameras(train), opts.views,
                                   config.jitter_degrees, config.patch_rays, seed=config.seed,
                                   geometry_cache_mb=config.geometry_cache_mb)
        device = torch.device(pipeline.model.device)  # everything below lives on the model's device
        if device.type == "cuda":
            configure_cuda()  # as `nst3d nerf --device cuda` does
        vgg = vgg_for(opts, device)
        self.objective = build_objective(opts, vgg, load_styles(opts), content_palette(self.backend),
                                         DEFAULTS["nerf"])
        self.options = opts
        self.generator = torch.Generator().manual_seed(config.seed)


def options_from_config(config: Any) -> Any:
    """The nst3d.schema.StyleOptions a StylePipelineConfig asks for (the same names; None: nst3d nerf's default)."""
    from nst3d.schema import StyleOptions, specs

    declared = {f.name for f in dataclasses.fields(config)}
    shared = {name: getattr(config, name) for name in specs(StyleOptions) if name in declared}
    shared["style_layers"] = list(config.style_layers) or None
    return StyleOptions(**{**shared, "styles": [Path(config.style_image)]})


class StylePipeline(VanillaPipeline):
    """VanillaPipeline whose training step is nst3d's stylization step (the model: StyleNerfactoModel)."""

    def __init__(self, config, device, test_mode="val", world_size=1, local_rank=0, grad_scaler=None):
        super().__init__(config, device, test_mode=test_mode, world_size=world_size, local_rank=local_rank,
                         grad_scaler=grad_scaler)
        self._stylizer: _Stylizer | None = None

    def get_train_loss_dict(self, step: int):
        from nst3d.stylize import accumulate_gradients

        if self._stylizer is None:
            self._stylizer = _Stylizer(self)
        stylizer = self._stylizer
        params = self.model.appearance_parameters()
        for p in params:
            p.grad = None
        views = stylizer.backend.train_views(step, stylizer.generator)
        terms = accumulate_gradients(stylizer.backend, stylizer.objective, views)
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        loss = _ReplayGradients.apply(terms["total"].detach(), grads, *params)
        metrics = {f"nst3d_{name}": value.detach() for name, value in terms.items()}
        return {}, {"nst3d_loss": loss}, metrics


def checkpoint_to_load(config: Any) -> Path | None:
    """The checkpoint file --load-dir/--load-step or --load-checkpoint point at (None if neither)."""
    from nst3d.integrations.nerfstudio.checkpoint import latest_checkpoint

    if config.load_dir is not None:
        return latest_checkpoint(Path(config.load_dir), config.load_step)
    if config.load_checkpoint is not None:
        return Path(config.load_checkpoint)
    return None


def adopt_trained_settings(config: Any, checkpoint: Path) -> None:
    """Copy the model settings and dataparser of the run that wrote `checkpoint` (its config.yml, one folder
    up) into `config`, keeping --data if given: the stylized model must have the trained model's shape, and
    the cameras must be in the frame it was trained in."""
    from nst3d.integrations.nerfstudio.checkpoint import read_config

    original_path = checkpoint.parent.parent / "config.yml"
    if not original_path.is_file():
        return  # nothing to adopt: the command-line settings must match the checkpoint
    original = read_config(original_path)
    if not isinstance(original.pipeline.model, NerfactoModelConfig):
        raise UserError(f"{original_path} is not a nerfacto run ({type(original.pipeline.model).__name__})")
    for f in dataclasses.fields(NerfactoModelConfig):
        if f.name != "_target":
            setattr(config.pipeline.model, f.name, getattr(original.pipeline.model, f.name))
    data = config.pipeline.datamanager.data
    config.pipeline.datamanager.dataparser = original.pipeline.datamanager.dataparser
    if data is None:
        config.pipeline.datamanager.data = original.pipeline.datamanager.data
    config.pipeline.datamanager.camera_res_scale_factor = original.pipeline.datamanager.camera_res_scale_factor


class StyleTrainer(Trainer):
    """nerfstudio's Trainer, loading the scene to stylize (see the module docstring)."""

    def __init__(self, config, local_rank: int = 0, world_size: int = 1) -> None:
        checkpoint = checkpoint_to_load(config)
        if checkpoint is None:
            raise UserError("nst3d-nerfacto stylizes a trained scene: pass --load-dir "
                            "outputs/<scene>/nerfacto/<timestamp>/nerfstudio_models")
        adopt_trained_settings(config, checkpoint)
        super().__init__(config, local_rank, world_size)
        if local_rank == 0:
            config.save_config()  # ns-train saved it before the trained run's settings were adopted

    def _load_checkpoint(self) -> None:
        from nerfstudio.utils.rich_utils import CONSOLE

        from nst3d.integrations.nerfstudio.checkpoint import load_checkpoint

        path = checkpoint_to_load(self.config)
        state = load_checkpoint(path)
        self.pipeline.load_pipeline(state["pipeline"], int(state["step"]))
        optimizers = state.get("optimizers") or {}
        resuming = bool(optimizers) and set(optimizers) == set(self.optimizers.optimizers)
        if resuming:  # a stylization run of this method: carry on where it stopped
            self.optimizers.load_optimizers(optimizers)
            if state.get("scalers"):
                self.grad_scaler.load_state_dict(state["scalers"])
        # stylization steps count from 0 (nerfstudio's progress and ETA read --max-num-iterations that way)
        self._start_step = int(state["step"]) + 1 if resuming else 0
        CONSOLE.print(f"nst3d: stylizing the scene from {path}")
