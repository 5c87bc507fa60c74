"""`run(adapter, options)`: the one stylization sequence, whatever the asset.

device -> VGG -> styles -> load -> backend -> objective -> loop -> held-out evaluation -> export -> contact sheet
-> report. An `Adapter` (one per backend: nst3d.pipelines.image/mesh/splat/nerf) does only what differs.
Device rule: the backend, the VGG and the objective all live on `resolve_device(options.device)`; evaluation
moves every Render to the VGG's device (nst3d.eval).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nst3d.errors import UserError
from nst3d.eval import HeldOutViews, baseline_config, evaluate_with_renders
from nst3d.events import Event, EventSink, ignore
from nst3d.features import VGGFeatures
from nst3d.losses import Objective
from nst3d.options import (
    BackendDefaults,
    StyleOptions,
    build_objective,
    load_styles,
    loop_config,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    vgg_for,
    with_defaults,
)
from nst3d.preview import contact_sheet
from nst3d.schema import to_mapping
from nst3d.stylize import LoopConfig, stylize

from .report import Report

#: finish(outputs, sheet_at, report_at) -> Report: an adapter's export calls it once its files are written
#: (nerf: inside the run folder before it appears) to write the contact sheet and the report there.
Finish = Callable[[dict[str, Any], Path | None, Path | None], Report]


class Adapter:
    """What one backend does differently; `run` calls these in order. Subclasses set `command`, `defaults`,
    `input` and override what they need; `backend` is set by make_backend."""

    command: str = ""
    defaults: BackendDefaults
    input: Path
    compare_baseline: bool = False
    baseline_stage: str = "per-view baseline"
    backend: Any = None
    #: whether the backend can lay strokes at one world size (--stroke-sizing world)
    world_strokes: bool = False

    def check(self, opts: StyleOptions) -> None:
        """Refuse bad options or outputs before any work (UserError)."""

    def stage_text(self, stage: str) -> str | None:
        """The message shown when `stage` (load, setup, evaluate, export) starts, or None for none."""
        return None

    def styles(self, opts: StyleOptions) -> list[torch.Tensor]:
        return load_styles(opts)

    def load(self, opts: StyleOptions, device: torch.device, on_event: EventSink) -> None:
        """Read the asset."""

    def make_backend(self, opts: StyleOptions, device: torch.device, on_event: EventSink,
                     should_stop: Callable[[], bool] | None) -> Any:
        raise NotImplementedError

    def palette(self) -> torch.Tensor:
        """[3, N] the content's colours (for --preserve-color)."""
        raise NotImplementedError

    def objective(self, opts: StyleOptions, vgg: VGGFeatures, styles: list[torch.Tensor]) -> Objective:
        return build_objective(opts, vgg, styles, self.palette(), self.defaults)

    def training_objective(self, objective: Objective) -> Any:
        """What the loop minimises (the evaluation always measures `objective` itself)."""
        return objective

    def optimise(self, objective: Any, config: LoopConfig, on_event: EventSink,
                 should_stop: Callable[[], bool] | None) -> list[dict[str, float]]:
        return stylize(self.backend, objective, config, on_event, should_stop)

    def after_optimise(self, opts: StyleOptions) -> None:
        """Read the result out of the backend (e.g. the mesh's textures)."""

    def held_out(self) -> HeldOutViews | None:
        """The held-out views to evaluate on, or None (a 2D image: see evaluate_output)."""
        raise NotImplementedError

    def close_ups(self) -> HeldOutViews | None:
        """Close-up held-out views (nst3d.held_out.close_up_views at a fifth of the bounding diagonal), evaluated
        as evaluation["close_up"] and shown in the contact sheet's last rows; None for none."""
        return None

    def render_stylized(self, cameras: Any) -> Any:
        raise NotImplementedError

    def render_original(self, cameras: Any) -> Any:
        raise NotImplementedError

    def evaluate_output(self, objective: Objective) -> dict[str, Any]:
        """The evaluation block when there are no held-out views."""
        raise NotImplementedError

    def export(self, opts: StyleOptions, history: list[dict[str, float]], finish: Finish) -> Report:
        """Write the outputs, then return finish(outputs, contact sheet path, report path)."""
        raise NotImplementedError

    def sheet_rows(self, held: HeldOutViews | None, renders: dict[str, Any]) -> tuple[list[torch.Tensor], list[str]]:
        """The contact sheet's rows [V, 3, H, W] and their labels."""
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """The report's backend-specific figures."""
        return {}


def step_timing(step_ends: list[float]) -> dict[str, float]:
    """{"first": the first optimisation step's seconds (cuDNN's algorithm search, lazy CUDA modules, the
    caches' first fill), "steady": the mean of the others}, from each step's end time since the optimise stage
    began; {} for a run without step events."""
    if not step_ends:
        return {}
    timing = {"first": step_ends[0]}
    if len(step_ends) > 1:
        timing["steady"] = (step_ends[-1] - step_ends[0]) / (len(step_ends) - 1)
    return timing


class _Clock:
    """Stage start times; `durations` gives each stage's seconds."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()

    def durations(self) -> dict[str, float]:
        names, now = list(self.marks), time.perf_counter()
        return {name: (self.marks[names[k + 1]] if k + 1 < len(names) else now) - self.marks[name]
                for k, name in enumerate(names)}


def run(adapter: Adapter, options: StyleOptions, on_event: EventSink | None = None,
        should_stop: Callable[[], bool] | None = None) -> Report:
    """Stylize `adapter`'s asset with `options` (None fields take the backend's defaults); returns the report.
    Raises UserError for bad input, nst3d.stylize.Cancelled when should_stop() turns true; nothing is
    written unless the run gets to its export."""
    clock, warned, step_ends = _Clock(), [], []
    sink = on_event or ignore

    def send(event: Event) -> None:
        if event.get("event") == "warning":
            warned.append(str(event.get("text", "")))
        if event.get("event") == "progress" and "loss" in event and list(clock.marks)[-1:] == ["optimise"]:
            step_ends.append(time.perf_counter() - clock.marks["optimise"])
        sink(event)

    def stage(name: str) -> None:
        clock.mark(name)
        text = adapter.stage_text(name)
        if text:
            send({"event": "message", "stage": name, "text": text})

    opts = with_defaults(options, adapter.defaults)
    if opts.stroke_sizing == "world" and not adapter.world_strokes:
        raise UserError(f"--stroke-sizing world is built for meshes so far, not for `nst3d {adapter.command}`; "
                        "leave it at view")
    adapter.check(opts)
    device = resolve_device(opts.device)
    reset_peak_memory(device)
    vgg = vgg_for(opts, device)  # checks the sizes against free memory before anything large is allocated
    styles = adapter.styles(opts)
    stage("load")
    adapter.load(opts, device, send)
    stage("setup")
    adapter.backend = adapter.make_backend(opts, device, send, should_stop)
    objective = adapter.objective(opts, vgg, styles)
    stage("optimise")
    history = adapter.optimise(adapter.training_objective(objective), loop_config(opts), send, should_stop)
    adapter.after_optimise(opts)
    stage("evaluate")
    held, renders, close, close_renders = adapter.held_out(), {}, None, {}
    if held is None:
        evaluation = adapter.evaluate_output(objective)
    else:
        baseline = baseline_config(opts.steps, opts.seed, adapter.baseline_stage) if adapter.compare_baseline else None
        evaluation, renders = evaluate_with_renders(adapter.render_stylized, adapter.render_original, held, objective,
                                                    baseline_config=baseline, on_event=send, should_stop=should_stop)
        close = adapter.close_ups()
        if close is not None:
            send({"event": "message", "stage": "evaluate", "text": "evaluating on close-up held-out views"})
            close_baseline = None if baseline is None else baseline_config(
                opts.steps, opts.seed, f"{adapter.baseline_stage} (close-ups)")
            evaluation["close_up"], close_renders = evaluate_with_renders(
                adapter.render_stylized, adapter.render_original, close, objective, baseline_config=close_baseline,
                on_event=send, should_stop=should_stop)
    stage("export")

    def finish(outputs: dict[str, Any], sheet_at: Path | None, report_at: Path | None) -> Report:
        if sheet_at is not None:
            rows, labels = adapter.sheet_rows(held, renders)
            if close is not None:
                rows += [close_renders["content"].rgb[:close.count], close_renders["stylized"].rgb[:close.count]]
                labels += ["original, close-up", "stylized, close-up"]
            contact_sheet(rows, sheet_at, labels)
        memory = peak_memory(device)
        report = Report(
            command=adapter.command, input=str(adapter.input), outputs=outputs,
            styles=[str(s) for s in opts.styles], options=to_mapping(opts), evaluation=evaluation,
            seconds=time.perf_counter() - clock.started, seconds_by_stage=clock.durations(), steps=opts.steps,
            step_seconds=step_timing(step_ends),
            final_loss=history[-1] if history else None, device=str(device),
            peak_memory_mb=memory["peak_memory_mb"], peak_device_memory_mb=memory["peak_device_memory_mb"],
            weights=vgg.source, style_layers=list(objective.target.layers), content_layer=objective.content_layer,
            seed=opts.seed, torch_threads=torch.get_num_threads(), warnings=warned, details=adapter.details())
        if report_at is not None:
            report.write(report_at)
        return report

    return adapter.export(opts, history, finish)
