"""nerfstudio runs for the NeRF backend (nst3d.backends.nerf): read a trained nerfacto run's config.yml and
checkpoint and build its model as a StyleNerfactoModel (`load_run`), and write a stylized run that ns-viewer,
ns-render and ns-export load (`save_run`), never over the original. nerfstudio is imported lazily.

The backend only renders and optimises the model a LoadedRun carries (`nst3d.backends.nerf.backend_for_run`);
the run's files are read and written here (checkpoint.py: config, checkpoints, data folder)."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from nst3d.errors import UserError
from nst3d.integrations.nerfstudio.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    model_state,
    read_config,
    resolve_data,
)

METHOD_NAME = "nst3d-nerfacto"


@dataclass
class LoadedRun:
    """A nerfstudio run loaded for stylization."""

    config_path: Path
    config: Any  # nerfstudio TrainerConfig, as read from config.yml (data path resolved)
    model: Any  # StyleNerfactoModel
    train_cameras: Any  # nerfstudio Cameras [N] of the training split (dataparser frame)
    checkpoint: dict[str, Any]  # the loaded checkpoint ("step", "pipeline", ...)
    step: int


def style_model_config(model_config: Any) -> Any:
    """The StyleNerfactoModelConfig with every setting of a nerfacto(-like) model config."""
    from nerfstudio.models.nerfacto import NerfactoModelConfig

    from nst3d.integrations.nerfstudio.method import StyleNerfactoModelConfig

    if not isinstance(model_config, NerfactoModelConfig):
        name = type(model_config).__name__
        hint = (" Export a splatfacto scene with `ns-export gaussian-splat` and use `nst3d splat`."
                if "splat" in name.lower() else "")
        raise UserError(f"only nerfacto scenes can be stylized as NeRFs, this run's model is {name}.{hint}")
    settings = {f.name: copy.deepcopy(getattr(model_config, f.name)) for f in dataclasses.fields(NerfactoModelConfig)
                if f.name != "_target" and hasattr(model_config, f.name)}
    return StyleNerfactoModelConfig(**settings)


def load_run(config_path: str | Path, device: torch.device | str = "cpu", data: Path | None = None,
             step: int | None = None) -> LoadedRun:
    """Load a trained nerfacto run for stylization (see the module docstring)."""
    config_path = Path(config_path)
    config = read_config(config_path)
    data_path = resolve_data(config, config_path, data)
    checkpoint_dir = config_path.parent / config.relative_model_dir
    checkpoint_path = latest_checkpoint(checkpoint_dir, step)
    model_config = style_model_config(config.pipeline.model)
    datamanager = config.pipeline.datamanager
    datamanager.data = data_path
    datamanager.dataparser.data = data_path
    config.data = data_path
    try:
        outputs = datamanager.dataparser.setup().get_dataparser_outputs(split="train")
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the scene's data in {data_path} ({exc.__class__.__name__}: {exc})") from None
    metadata = copy.deepcopy(outputs.metadata)
    seed_points = None
    if "points3D_xyz" in metadata:
        seed_points = (metadata["points3D_xyz"], metadata["points3D_rgb"])
    model = model_config.setup(scene_box=copy.deepcopy(outputs.scene_box), num_train_data=len(outputs.image_filenames),
                               metadata=metadata, device=device, grad_scaler=None, seed_points=seed_points)
    checkpoint = load_checkpoint(checkpoint_path)
    state = model_state(checkpoint["pipeline"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"the checkpoint {checkpoint_path} does not match its config "
                        f"({str(exc).splitlines()[0][:160]})") from None
    model.update_to_step(int(checkpoint["step"]))
    model.to(device)
    model.eval()
    config.pipeline.model = model_config
    return LoadedRun(config_path, config, model, outputs.cameras, checkpoint, int(checkpoint["step"]))


def _vanilla_datamanager(datamanager: Any) -> Any:
    """The same data settings as a VanillaDataManagerConfig (ParallelDataManager spawns worker processes,
    which only slows down ns-viewer/ns-render of a stylized scene)."""
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    if type(datamanager) is VanillaDataManagerConfig or not isinstance(datamanager, VanillaDataManagerConfig):
        return datamanager
    return VanillaDataManagerConfig(**{f.name: getattr(datamanager, f.name)
                                       for f in dataclasses.fields(VanillaDataManagerConfig) if f.name != "_target"})


def stylized_config(run: LoadedRun, output_dir: Path, style: dict[str, Any]) -> Any:
    """The stylized run's TrainerConfig: the original's, as method nst3d-nerfacto under `output_dir` with a new
    timestamp; `style` records the pipeline's style settings (StylePipelineConfig fields)."""
    from nst3d.integrations.nerfstudio.method import StylePipelineConfig, nst3d_nerfacto

    config = copy.deepcopy(run.config)
    spec = nst3d_nerfacto.config
    config._target = spec._target
    config.method_name = METHOD_NAME
    config.output_dir = Path(output_dir).resolve()
    config.timestamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
    config.load_dir = config.load_step = config.load_config = config.load_checkpoint = None
    config.optimizers = copy.deepcopy(spec.optimizers)
    config.pipeline = StylePipelineConfig(datamanager=_vanilla_datamanager(config.pipeline.datamanager),
                                          model=run.model.config, **style)
    while config.get_base_dir().exists():  # two runs in the same second: never reuse a folder
        config.timestamp += "_1"
    return config


def save_run(run: LoadedRun, output_dir: Path, style: dict[str, Any], steps: int,
             extras: Callable[[Path, Path], None] | None = None) -> Path:
    """Write the stylized run (config.yml, nerfstudio_models/step-N.ckpt, dataparser_transforms.json) into a new
    folder under output_dir, atomically (a temporary folder renamed at the end). `extras(folder, final config
    path)` may add files to the folder before it appears. Returns the run's config.yml."""
    import yaml

    config = stylized_config(run, output_dir, style)
    base = config.get_base_dir()
    original_base = run.config_path.resolve().parent
    if base.resolve() == original_base:
        raise UserError(f"the stylized run would overwrite the original at {original_base}; choose another -o")
    step = steps  # stylization steps, counted from 0 as `ns-train nst3d-nerfacto` does
    pipeline_state = {k: v for k, v in run.checkpoint["pipeline"].items() if not k.startswith("_model.")}
    pipeline_state.update({f"_model.{k}": v.detach().cpu() for k, v in run.model.state_dict().items()})
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = base.parent / f".{base.name}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / config.relative_model_dir).mkdir(parents=True)
        (tmp / "config.yml").write_text(yaml.dump(config), "utf8")
        torch.save({"step": step, "pipeline": pipeline_state, "optimizers": {}, "schedulers": {}, "scalers": {}},
                   tmp / config.relative_model_dir / f"step-{step:09d}.ckpt")
        transforms = original_base / "dataparser_transforms.json"
        if transforms.is_file():
            shutil.copyfile(transforms, tmp / "dataparser_transforms.json")
        if extras is not None:
            extras(tmp, base / "config.yml")
        tmp.rename(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base / "config.yml"
