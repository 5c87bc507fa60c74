"""nerfstudio runs for the NeRF backend (nst3d.backends.nerf): read a trained nerfacto run's config.yml and
checkpoint and build its model as a StyleNerfactoModel (`load_run`), and write a stylized run that ns-viewer,
ns-render and ns-export load (`save_run`), never over the original. nerfstudio is imported lazily."""

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


def read_config(config_path: Path) -> Any:
    """A nerfstudio TrainerConfig from a run's config.yml (nerfstudio's own format: YAML with Python tags)."""
    import yaml

    from nst3d.integrations.nerfstudio.tv_shim import apply

    apply()
    from nerfstudio.engine.trainer import TrainerConfig

    config_path = Path(config_path)
    if not config_path.is_file():
        raise UserError(f"nerfstudio config not found: {config_path}; pass the config.yml of a trained run "
                        "(outputs/<scene>/nerfacto/<timestamp>/config.yml)")
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)  # noqa: S506 (nerfstudio's format)
    except (yaml.YAMLError, ImportError, AttributeError, TypeError) as exc:
        raise UserError(f"cannot read {config_path} as a nerfstudio config ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0][:120]})") from None
    if not isinstance(config, TrainerConfig):
        raise UserError(f"{config_path} is not a nerfstudio run config (no TrainerConfig inside)")
    return config


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load(weights_only=True) of a nerfstudio checkpoint. nerfstudio's schedulers store numpy scalars,
    which are allowed explicitly (they rebuild plain numbers, nothing executable)."""
    import numpy as np

    numpy_core = np.core if np.lib.NumpyVersion(np.__version__) < "2.0.0" else np._core  # renamed in numpy 2
    kinds = (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)
    allowed = [numpy_core.multiarray.scalar, np.dtype, *{type(np.dtype(kind)) for kind in kinds}]
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, EOFError) as exc:
            raise UserError(f"cannot load checkpoint {path} ({exc.__class__.__name__}); "
                            "is the run's training finished and the file complete?") from None


def latest_checkpoint(folder: Path, step: int | None = None) -> Path:
    """nerfstudio's step-XXXXXXXXX.ckpt in `folder`: the given step, else the latest."""
    if step is not None:
        path = folder / f"step-{step:09d}.ckpt"
        if not path.is_file():
            raise UserError(f"checkpoint {path} not found")
        return path
    found = sorted(folder.glob("step-*.ckpt"))
    if not found:
        raise UserError(f"no checkpoint (step-*.ckpt) in {folder}; has the run saved one yet?")
    return found[-1]


def resolve_data(config: Any, config_path: Path, data: Path | None = None) -> Path:
    """The run's data folder: `data` if given, else the config's, relative to the current folder or to the
    folder the run was trained from (output_dir/<experiment>/<method>/<timestamp>/config.yml)."""
    if data is not None:
        if not Path(data).exists():
            raise UserError(f"--data {data} not found")
        return Path(data).resolve()
    datamanager = config.pipeline.datamanager
    recorded = Path(getattr(datamanager, "data", None) or datamanager.dataparser.data)
    candidates = [recorded]
    if not recorded.is_absolute():
        output_dir = Path(config.output_dir)
        depth = 3 + (0 if output_dir.is_absolute() else len(output_dir.parts))
        parents = config_path.resolve().parents
        if depth < len(parents):
            candidates.append(parents[depth] / recorded)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise UserError(f"the scene's data {recorded} (from {config_path}) was not found; run from the folder the "
                    "scene was trained in, or pass --data")


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


def model_state(pipeline_state: dict[str, Any]) -> dict[str, Any]:
    """The model's entries of a pipeline state_dict ("_model." prefix, and DDP's "module." if there)."""
    state = {k[len("_model."):]: v for k, v in pipeline_state.items() if k.startswith("_model.")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


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
