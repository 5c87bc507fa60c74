"""The 2D image pipeline: one content image in, one stylized image per seed out (nst3d.pipelines.run does the
sequence). A single image has no held-out views: the report measures the style and content distance on the
output itself and its consistency is None."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nst3d.color import gray, keep_content_chroma
from nst3d.events import EventSink
from nst3d.files import load_image, resize_to, save_image
from nst3d.losses import Objective, content_distance, style_distance
from nst3d.options import StyleOptions
from nst3d.schema import DEFAULTS as BACKEND_DEFAULTS
from nst3d.stylize import LoopConfig, stylize_image

from .report import Report
from .run import Adapter, Finish, run

DEFAULTS = BACKEND_DEFAULTS["image"]


class ImageAdapter(Adapter):
    """A content image into `outputs` (seeds seed..seed+K-1). Device rule: the content, the results and the VGG
    live on the run's device; the alpha channel stays on the host (it only goes to the file)."""

    command = "image"
    defaults = DEFAULTS

    def __init__(self, content_path: Path, outputs: list[Path], levels: int, report: Path | None = None):
        self.input, self.outputs, self.levels, self.report_path = content_path, outputs, levels, report

    def load(self, opts: StyleOptions, device: torch.device, on_event: EventSink) -> None:
        content, self.alpha = load_image(self.input, "content image")
        self.content = resize_to(content, opts.size).to(device)

    def make_backend(self, opts: StyleOptions, device: torch.device, on_event: EventSink,
                     should_stop: Callable[[], bool] | None) -> None:
        self.opts = opts  # the image backend is made per level and seed by stylize_image
        return None

    def palette(self) -> torch.Tensor:
        return self.content

    def optimise(self, objective: Objective, config: LoopConfig, on_event: EventSink,
                 should_stop: Callable[[], bool] | None) -> list[dict[str, float]]:
        self.results = []
        for index in range(len(self.outputs)):
            seeded = replace(config, seed=config.seed + index)
            self.results.append(stylize_image(self.content, objective, seeded, self.opts.init, self.levels, on_event,
                                              should_stop))
        return []  # stylize_image keeps no per-step history

    def after_optimise(self, opts: StyleOptions) -> None:
        if opts.preserve_color == "luminance":
            self.results = [keep_content_chroma(r, self.content).clamp(0, 1) for r in self.results]

    def held_out(self) -> None:
        return None

    def evaluate_output(self, objective: Objective) -> dict[str, Any]:
        """Style distance of the content and of the first output; in luminance mode the style loss sees (and the
        result keeps) only luminance, so it is measured the same way."""
        vgg = objective.vgg
        seen = gray if self.opts.preserve_color == "luminance" else (lambda rgb: rgb)
        result, content = self.results[0][None], self.content[None]
        return {"style_distance": {"before": style_distance(vgg, seen(content), objective.target),
                                   "after": style_distance(vgg, seen(result), objective.target)},
                "content_distance": content_distance(vgg, result, content, objective.content_layer),
                "consistency": None, "held_out": None, "views": len(self.results),
                "size": list(self.content.shape[-2:])}

    def export(self, opts: StyleOptions, history: list, finish: Finish) -> Report:
        # Written only once everything has been computed: a cancel leaves no partial set of outputs.
        alpha = None if self.alpha is None else resize_to(self.alpha, opts.size)
        for out, result in zip(self.outputs, self.results, strict=True):
            save_image(result.cpu(), out, alpha)
        outputs = {"image": str(self.outputs[0]), "images": [str(o) for o in self.outputs], "contact_sheet": None,
                   "report": None if self.report_path is None else str(self.report_path)}
        return finish(outputs, None, self.report_path)

    def details(self) -> dict[str, Any]:
        return {"size": list(self.content.shape[-2:]), "levels": self.levels}


def stylize_image_files(content_path: Path, outputs: list[Path], opts: StyleOptions, levels: int = 1,
                        on_event=None, should_stop=None, report: Path | None = None) -> Report:
    """Stylize one content image into each of `outputs` (one seed each); writes the report at `report` if
    given; returns it."""
    return run(ImageAdapter(Path(content_path), [Path(o) for o in outputs], levels, report), opts, on_event,
               should_stop)
