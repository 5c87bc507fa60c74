"""Live previews for the worker (`"preview_every": N` in a job): every N optimisation steps, one held-out view
rendered with the current textures, written as a small PNG next to the job; the worker then sends
{"event": "preview", "step", "total", "path"} after that step's "progress" event.

Device rule: the view renders on the backend's device (MeshBackend.render_cameras returns it on the CPU): one host
transfer every N steps, and only when previews are asked for; never inside a step's own work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nst3d.events import Event, EventSink
from nst3d.files import atomic_path

PREVIEW_PX = 160  # the longer side of a preview image


class Previews:
    """An event sink that forwards every event to `emit` and adds a "preview" event every `every` optimisation
    steps (and after the last). `adapter`: the run's MeshAdapter (its backend exists once steps are reported)."""

    def __init__(self, every: int, folder: Path, emit: EventSink):
        self.every, self.folder, self.emit = every, folder, emit
        self.adapter: Any = None
        self.cameras = None

    def __call__(self, event: Event) -> None:
        self.emit(event)
        if event.get("event") != "progress" or "loss" not in event or self.adapter is None:
            return  # only optimisation steps carry a loss
        step, total = int(event["step"]), int(event["total"])
        if step % self.every == 0 or step == total:
            self.emit({"event": "preview", "step": step, "total": total, "path": str(self.render(step))})

    def render(self, step: int) -> Path:
        """Render the first held-out anchor view with the textures as they are now; the PNG's path."""
        from PIL import Image

        from nst3d.held_out import held_out_views

        backend = self.adapter.backend
        if self.cameras is None:
            self.cameras = held_out_views(backend.frame, 1).anchors
        shading = "lambert" if backend.shading == "none" else backend.shading  # shapes read on flat colours
        with torch.no_grad():
            rgb = backend.render_cameras(self.cameras, backend.stylized_textures(), shading=shading).rgb[0]
        pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(pixels, "RGB")
        image.thumbnail((PREVIEW_PX, PREVIEW_PX))
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"preview_{step:05d}.png"
        with atomic_path(path) as tmp:  # the add-on never reads a half-written file
            image.save(tmp, format="PNG")
        return path
