"""THE stylization loop, written once for every backend (see nst3d.backends.base for the protocol)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from nst3d.backends.base import Backend
from nst3d.backends.image import ImageBackend
from nst3d.errors import UserError
from nst3d.events import CTRL_C, EventSink, ignore
from nst3d.events import Cancelled as Cancelled  # re-exported: its old home
from nst3d.losses import Objective

OPTIMIZERS = ("adam", "lbfgs")
MIN_LEVEL_PX = 16  # stylize_image's coarsest level: smaller images carry too few VGG features


@dataclass
class LoopConfig:
    """How to optimise. lr applies to parameter groups that do not set their own."""

    steps: int = 300
    optimizer: str = "adam"
    lr: float = 0.02
    seed: int = 0
    stage: str = "stylizing"


def _fusable(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused Adam takes these parameters: floating point, all on one CPU or CUDA device."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() for p in params))


def make_optimizer(groups: list[dict[str, Any]], config: LoopConfig) -> torch.optim.Optimizer:
    """Adam over the backend's parameter groups (fused: one kernel over all of them, 3-6x faster than the
    per-tensor loop on a 1024^2 texture pyramid), or L-BFGS (one function evaluation per step)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, fused=_fusable(groups))
    if config.optimizer == "lbfgs":
        params = [p for g in groups for p in g["params"]]
        # One function evaluation per step and no line search: torch's strong-Wolfe search restarted every
        # max_iter=1 call stalls, and per-step evaluations keep progress, cancellation and views per step.
        return torch.optim.LBFGS(params, lr=1.0, max_iter=1, history_size=20)
    raise UserError(f"unknown optimizer '{config.optimizer}'; use adam or lbfgs")


def stylize(backend: Backend, objective: Objective, config: LoopConfig, on_event: EventSink = ignore,
            should_stop: Callable[[], bool] | None = None) -> list[dict[str, float]]:
    """Optimise the backend's appearance parameters to minimise `objective` on its rendered views.

    Emits {"event": "progress", "step", "total", "loss", "terms", "stage"} after every step and returns the
    per-step loss terms. A step waits for the device once: its loss terms come to the host in one copy
    (host_numbers), and the divergence check reads those; the loop reads nothing else from the device (torch's
    L-BFGS reads its loss and gradient norms itself). Raises Cancelled when `should_stop()` turns true or the
    CLI saw Ctrl-C (nst3d.events.CTRL_C; KeyboardInterrupt passes through).
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    optimizer = make_optimizer(backend.parameters(), config)
    content_cache: dict[Any, torch.Tensor] = {}
    history: list[dict[str, float]] = []
    started = time.perf_counter()

    def evaluate(views: Any) -> dict[str, torch.Tensor]:
        return accumulate_gradients(backend, objective, views, content_cache)

    for step in range(config.steps):
        if CTRL_C.is_set() or (should_stop is not None and should_stop()):
            raise Cancelled()
        views = backend.train_views(step, generator)
        terms = _optimizer_step(optimizer, functools.partial(evaluate, views))
        if not math.isfinite(terms["total"]):
            raise UserError("the optimisation diverged (loss is not finite); lower --strength or the learning rate")
        history.append(terms)
        on_event({"event": "progress", "stage": config.stage, "step": step + 1, "total": config.steps,
                  "loss": terms["total"], "terms": terms, "elapsed": time.perf_counter() - started})
    return history


def _optimizer_step(optimizer: torch.optim.Optimizer, evaluate: Callable[[], dict[str, torch.Tensor]]
                    ) -> dict[str, float]:
    """One optimiser step; returns the loss terms evaluated at the parameters before the step."""
    evaluated: list[dict[str, torch.Tensor]] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        evaluated.append(evaluate())
        return evaluated[-1]["total"]

    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()
    return host_numbers(evaluated[0])


def host_numbers(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors (on one device) -> Python floats, with ONE device-to-host copy: the step's only sync."""
    stacked = torch.stack([value.detach().float().reshape(()) for value in terms.values()]).cpu()
    return dict(zip(terms, stacked.tolist(), strict=True))


def accumulate_gradients(backend: Backend, objective: Objective, views: Any,
                         content_cache: dict[Any, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Evaluate the objective on `views` once: adds d loss / d params to the parameters' .grad and returns the
    loss terms. The loop calls it every step; nerfstudio's trainer calls it through the nst3d-nerfacto
    pipeline (nst3d.integrations.nerfstudio), so both routes compute the same gradients."""
    content = _content_features(backend, objective, views, {} if content_cache is None else content_cache)
    render = backend.render(views)
    if not backend.deferred:
        terms = objective(render.rgb, render.mask, content, render.style_levels)
        terms["total"].backward()
        return terms
    # Deferred back-propagation: d loss / d image here, the backend pushes it into its parameters.
    image = render.rgb.detach().requires_grad_(True)
    terms = objective(image, render.mask, content, render.style_levels)
    terms["total"].backward()
    backend.backward_image(views, image.grad)
    return terms


def _content_features(backend: Backend, objective: Objective, views: Any,
                      cache: dict[Any, torch.Tensor]) -> torch.Tensor | None:
    """Content target features for these views, cached when the views carry a key."""
    if objective.content_weight <= 0:
        return None
    key = getattr(views, "key", None)
    if key is not None and key in cache:
        return cache[key]
    features = objective.content_features(backend.render_content(views).rgb)
    if key is not None:
        cache[key] = features
    return features


def stylize_image(content: torch.Tensor, objective, config, init: str = "content", levels: int = 1,
                  on_event=None, should_stop=None) -> torch.Tensor:
    """Stylize content [3, H, W] with `objective`; coarse-to-fine over `levels` scales (each half the next).

    config: a LoopConfig whose steps are shared between the levels. Returns [3, H, W] in [0, 1].
    """
    from nst3d.files import resize_to

    size = max(content.shape[-2:])
    previous = None
    for level in range(levels):
        level_size = max(MIN_LEVEL_PX, size // 2 ** (levels - 1 - level))
        level_content = resize_to(content, level_size) if level < levels - 1 else content
        backend = ImageBackend(level_content, init=init, seed=config.seed)
        if previous is not None:
            upsampled = torch.nn.functional.interpolate(previous[None], size=level_content.shape[-2:],
                                                        mode="bilinear", align_corners=False)
            backend.pixels.data.copy_(upsampled)
        steps = config.steps // levels + (config.steps % levels if level == levels - 1 else 0)
        stage = config.stage if levels == 1 else f"{config.stage} {level_size}px"
        stylize(backend, objective, replace(config, steps=steps, stage=stage), on_event or ignore, should_stop)
        previous = backend.pixels.detach()[0]
    return previous.clamp(0, 1)
