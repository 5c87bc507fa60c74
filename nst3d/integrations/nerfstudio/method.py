"""The `nst3d-nerfacto` nerfstudio method: stylize a trained nerfacto scene with `ns-train`.

    ns-train nst3d-nerfacto --data data/scene --pipeline.style-image wave.jpg \\
        --load-dir outputs/scene/nerfacto/<timestamp>/nerfstudio_models

Registered through the `nerfstudio.method_configs` entry point (`nst3d-nerfacto =
"nst3d.integrations.nerfstudio.method:nst3d_nerfacto"`). nerfstudio imports every plugin module while it
builds its method list and does not guard errors, so this module imports only nerfstudio's own config classes
(already imported by then); the model, pipeline and trainer classes live in model.py and pipeline.py and are
imported only when a run of this method is set up (`_target` below are small factories).

The pipeline overrides only what stylization needs: its training step renders a training view without
autograd, takes d loss / d image from nst3d's objective (VGG-19 style + content) and back-propagates it in ray
patches into the appearance branch (nst3d.backends.nerf); geometry stays frozen. The trainer loads the run to
stylize from --load-dir (a plain nerfacto checkpoint is fine) and takes that run's model and dataparser
settings from the config.yml beside it, so only the style options need to be given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nst3d.schema import DEFAULTS

NERF = DEFAULTS["nerf"]  # the option names and defaults are nst3d's (nst3d.schema; tests/test_schema.py checks)


def _style_model(config, **kwargs):
    from nst3d.integrations.nerfstudio.model import StyleNerfactoModel

    return StyleNerfactoModel(config, **kwargs)


def _style_pipeline(config, **kwargs):
    from nst3d.integrations.nerfstudio.pipeline import StylePipeline

    return StylePipeline(config, **kwargs)


def _style_trainer(config, **kwargs):
    from nst3d.integrations.nerfstudio.pipeline import StyleTrainer

    return StyleTrainer(config, **kwargs)


@dataclass
class StyleNerfactoModelConfig(NerfactoModelConfig):
    """nerfacto with frozen geometry and a trainable appearance branch (nst3d)."""

    _target: type = field(default_factory=lambda: _style_model)


@dataclass
class StylePipelineConfig(VanillaPipelineConfig):
    """Stylization of a trained nerfacto scene (nst3d). Options are named as nst3d's (nst3d.schema) and default
    as `nst3d nerf`."""

    _target: type = field(default_factory=lambda: _style_pipeline)
    model: NerfactoModelConfig = field(default_factory=lambda: StyleNerfactoModelConfig())
    style_image: Path | None = None
    """Style image (required to train)."""
    loss: Literal["gram", "adain", "nnfm"] = "gram"
    """Style loss: gram (Gatys), adain (mean/std), nnfm (nearest neighbour, ARF)."""
    strength: float = 1.0
    """Style weight multiplier."""
    content_weight: float = NERF.content_weight
    """Content weight."""
    tv_weight: float | None = None
    """Total-variation weight (default: 0, or 1 with --pipeline.loss nnfm, as `nst3d nerf`)."""
    size: int = NERF.size
    """Render size of the training views (longer side, px)."""
    style_size: int | None = None
    """Style image size (longer side, px); default: size."""
    views: int = NERF.views
    """Training views rendered per step."""
    jitter_degrees: float = 5.0
    """Each training view is orbited about the scene centre by up to this many degrees."""
    patch_rays: int = 4096
    """Rays per patch of the deferred back-propagation (bounds the memory, whatever the view size)."""
    geometry_cache_mb: float = 1024.0
    """Memory for the training views' frozen geometry (samples and weights, computed once per view; 0: off)."""
    preserve_color: Literal["none", "luminance", "histogram"] = "none"
    """Keep the scene's colours: luminance-only style, or style histogram matched to the scene."""
    weights: Path | None = None
    """VGG-19 weights file (default: $NST3D_VGG19_WEIGHTS, the torch hub cache, or a download)."""
    preprocess: Literal["auto", "torchvision", "caffe"] = "auto"
    """VGG input convention (auto: caffe for files named *caffe*)."""
    style_layers: tuple[str, ...] = ()
    """VGG taps for the style loss (default: nst3d's for the weights)."""
    content_layer: str | None = None
    """VGG tap for the content loss (default: nst3d's)."""
    seed: int = 0
    """Random seed of the view sampling."""


nst3d_nerfacto = MethodSpecification(
    config=TrainerConfig(
        _target=_style_trainer,
        method_name="nst3d-nerfacto",
        steps_per_eval_batch=500,
        steps_per_eval_image=100,
        steps_per_save=100,
        max_num_iterations=NERF.steps,
        mixed_precision=False,
        pipeline=StylePipelineConfig(
            datamanager=VanillaDataManagerConfig(dataparser=NerfstudioDataParserConfig(),
                                                 train_num_rays_per_batch=4096, eval_num_rays_per_batch=4096),
            model=StyleNerfactoModelConfig(eval_num_rays_per_chunk=1 << 15, average_init_density=0.01,
                                           camera_optimizer=CameraOptimizerConfig(mode="SO3xR3")),
        ),
        optimizers={"appearance": {"optimizer": AdamOptimizerConfig(lr=NERF.lr, eps=1e-15), "scheduler": None}},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="nst3d: neural style transfer of a trained nerfacto scene (--load-dir); geometry frozen, "
                "appearance optimised with deferred back-propagation",
)
