"""The NeRF pipeline: a trained nerfstudio nerfacto run in, a new stylized run beside it out, with
nst3d_report.json and nst3d_preview.png inside (nst3d.pipelines.run does the sequence). Needs nerfstudio, imported
only when a run is loaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nst3d.backends.nerf import GEOMETRY_CACHE_MB, JITTER_DEGREES, PATCH_RAYS
from nst3d.errors import UserError
from nst3d.events import EventSink, ignore
from nst3d.held_out import HeldOutViews, held_out_views
from nst3d.options import StyleOptions
from nst3d.scales import CLOSE_UP_FRACTION
from nst3d.schema import DEFAULTS as BACKEND_DEFAULTS

from .report import Report
from .run import Adapter, Finish, run

DEFAULTS = BACKEND_DEFAULTS["nerf"]
#: views smaller than this (px) stylize much less: 0.24x of the start style distance at 64 px vs 0.16x at 96
SMALL_VIEW = 96
PREVIEW = "nst3d_preview.png"
#: The share of the training pool made of zoomed crops of capture cameras at the stroke scale's octaves.
CROP_SHARE = 1 / 3
REPORT = "nst3d_report.json"


class NerfAdapter(Adapter):
    """A nerfstudio run into a new run under `output`. Device rule: the model, its renders and kept geometry
    live on the run's device (nst3d.backends.nerf)."""

    command = "nerf"
    defaults = DEFAULTS

    def __init__(self, config_path: Path, output: Path, *, data: Path | None, patch_rays: int, jitter: float,
                 pool: int | None, geometry_cache_mb: float, held_out: int, compare_baseline: bool):
        self.input, self.output, self.data, self.patch_rays = config_path, output, data, patch_rays
        self.jitter, self.pool, self.geometry_cache_mb = jitter, pool, geometry_cache_mb
        self.held_out_count, self.compare_baseline = held_out, compare_baseline

    def check(self, opts: StyleOptions) -> None:
        if opts.init == "noise":
            raise UserError("--init noise is not supported for NeRFs (the appearance starts from the scene)")

    def load(self, opts: StyleOptions, device: torch.device, on_event: EventSink) -> None:
        from nst3d.integrations.nerfstudio.run import load_run

        self.run = load_run(self.input, device, self.data)
        if opts.size < SMALL_VIEW:  # said once the inputs are known good, so it does not precede their errors
            on_event({"event": "warning", "text": f"--size {opts.size} leaves VGG's relu3_1 a {opts.size // 4}x"
                      f"{opts.size // 4} map, too little for the style statistics; use {SMALL_VIEW} or more for a "
                      "real stylization"})

    def make_backend(self, opts: StyleOptions, device: torch.device, on_event: EventSink,
                     should_stop: Callable[[], bool] | None):
        from nst3d.backends.nerf import backend_for_run

        backend = backend_for_run(self.run, opts.size, opts.views, self.jitter, self.patch_rays, opts.lr, self.pool,
                                  opts.seed, self.geometry_cache_mb, stroke_scale=opts.stroke_scale,
                                  crop_share=CROP_SHARE)
        self.run.model.field.reset_appearance()  # a stylized run is stylized again from its original appearance
        return backend

    def palette(self) -> torch.Tensor:
        from nst3d.backends.nerf import content_palette

        return content_palette(self.backend)

    def objective(self, opts: StyleOptions, vgg, styles: list[torch.Tensor]):
        self.style_objective = super().objective(opts, vgg, styles)
        return self.style_objective

    def optimise(self, objective, config, on_event, should_stop) -> list[dict[str, float]]:
        started = time.perf_counter()
        history = super().optimise(objective, config, on_event, should_stop)
        self.seconds_per_step = (time.perf_counter() - started) / max(1, len(history))
        return history

    def held_out(self) -> HeldOutViews:
        train = self.backend.train_cameras
        self.held = held_out_views(self.backend.frame.framer(train.width, train.height), count=self.held_out_count)
        return self.held

    def render_stylized(self, cameras):
        return self.backend.render(cameras)

    def render_original(self, cameras):
        self.last_original = self.backend.render_content(cameras)  # the held-out views' depth, for close_ups
        return self.last_original

    def close_ups(self) -> HeldOutViews:
        """The held-out views zoomed so each anchor covers CLOSE_UP_FRACTION of the framed extent at its depth."""
        from nst3d.backends.nerf_views import close_up_crops, framed_height

        shown = self.last_original
        return close_up_crops(self.held, shown.depth.cpu(), shown.mask.cpu(),
                              CLOSE_UP_FRACTION * framed_height(self.backend.frame))

    def export(self, opts: StyleOptions, history: list, finish: Finish) -> Report:
        """save_run writes the run in a hidden folder; the preview and report go in before it appears."""
        from nst3d.integrations.nerfstudio.run import save_run

        self.steps_done = len(history)
        objective, done = self.style_objective, []
        style = {"style_image": opts.styles[0], "loss": opts.loss, "strength": opts.strength,
                 "content_weight": opts.content_weight, "tv_weight": opts.tv_weight, "size": opts.size,
                 "style_size": opts.style_size, "views": opts.views, "jitter_degrees": self.jitter,
                 "patch_rays": self.patch_rays, "geometry_cache_mb": self.geometry_cache_mb,
                 "preserve_color": opts.preserve_color, "weights": opts.weights,
                 "preprocess": opts.preprocess, "style_layers": tuple(objective.target.layers),
                 "content_layer": objective.content_layer, "seed": opts.seed}

        def extras(folder: Path, final_config: Path) -> None:
            outputs = {"run": str(final_config), "contact_sheet": str(final_config.parent / PREVIEW),
                       "report": str(final_config.parent / REPORT)}
            done.append(finish(outputs, folder / PREVIEW, folder / REPORT))

        save_run(self.run, self.output, style, len(history), extras)
        return done[0]

    def sheet_rows(self, held: HeldOutViews, renders: dict) -> tuple[list[torch.Tensor], list[str]]:
        n = held.count
        rows, labels = [renders["content"].rgb[:n], renders["stylized"].rgb[:n]], ["original", "stylized"]
        if "baseline" in renders:
            rows.append(renders["baseline"].rgb[:n])
            labels.append("per-view 2D")
        return rows, labels

    def details(self) -> dict[str, Any]:
        backend, train = self.backend, self.backend.train_cameras
        return {"size": [train.width, train.height], "views_per_step": backend.views_per_step,
                "training_cameras": len(train),
                "pool": len(backend.pool), "geometry_cache_mb": backend.geometry_bytes / 2**20,
                "patch_rays": self.patch_rays, "jitter_degrees": self.jitter, "seconds_per_step": self.seconds_per_step,
                "trainable_parameters": sum(p.numel() for p in self.run.model.appearance_parameters()),
                "octave_heights": backend.octaves, "zoomed_crops": 0 if backend.crops is None else len(backend.crops)}


def stylize_nerf_run(config_path: Path, output: Path, opts: StyleOptions, *, data: Path | None = None,
                     patch_rays: int = PATCH_RAYS, jitter: float = JITTER_DEGREES, pool: int | None = None,
                     geometry_cache_mb: float = GEOMETRY_CACHE_MB, held_out: int = 4,
                     compare_baseline: bool = False, on_event: EventSink = ignore, should_stop=None) -> Report:
    """Stylize the run at config_path; writes the stylized run under `output`; returns the report."""
    adapter = NerfAdapter(Path(config_path), Path(output), data=data, patch_rays=patch_rays, jitter=jitter, pool=pool,
                          geometry_cache_mb=geometry_cache_mb, held_out=held_out, compare_baseline=compare_baseline)
    return run(adapter, opts, on_event, should_stop)
