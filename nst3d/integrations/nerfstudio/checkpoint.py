"""A trained nerfstudio run's files: its config.yml (nerfstudio's own YAML), its checkpoints (loaded with
weights_only=True), its data folder and the model's entries of a checkpoint. nerfstudio is imported lazily,
after the torchvision shim (nst3d.integrations.nerfstudio.tv_shim)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nst3d.errors import UserError


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


def model_state(pipeline_state: dict[str, Any]) -> dict[str, Any]:
    """The model's entries of a pipeline state_dict ("_model." prefix, and DDP's "module." if there)."""
    state = {k[len("_model."):]: v for k, v in pipeline_state.items() if k.startswith("_model.")}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
