"""The one report every stylization writes (image, mesh, splat, nerf): the same top-level keys whatever the
backend, backend-specific figures under "details". Pure data (stdlib only), so readers such as the batch runner
can load it without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nst3d.errors import UserError
from nst3d.files import write_json


@dataclass
class Report:
    """What a run did and how well.

    command: "image", "mesh", "splat" or "nerf"; input: the asset (content image, mesh, splat, run's config.yml);
    outputs: {"asset" | "image" | "run": the result, "contact_sheet": path or None, "report": path or None, and
    per backend "textures" (mesh) or "images" (image)}; styles: the style images; options: the filled
    StyleOptions (nst3d.schema.to_mapping); evaluation: {"style_distance": {"before", "after"},
    "content_distance", "consistency": {"short_range", "long_range", "covisible"} or None (a 2D image has no
    views to compare), "held_out": {"count", "short_degrees", "long_degrees"} or None, "views", "size"; with
    --compare-baseline also "baseline", "floor", "consistency_above_floor", "half_pixel_style_distance"};
    seconds / seconds_by_stage: wall-clock time, whole and per stage; step_seconds: {"first", "steady"}, the
    first optimisation step's seconds (warm-up) and the mean of the others (nst3d.pipelines.run.step_timing);
    final_loss: the last step's loss terms;
    peak_memory_mb / peak_device_memory_mb: host and GPU peaks (None on a CPU); warnings: what the run warned
    about; details: the backend's own figures (mesh: triangles, textures, shading, ...; splat: gaussians,
    sh_degree, output_check, renderer, cameras, ...; nerf: pool, patch_rays, ...).
    """

    command: str
    input: str
    outputs: dict[str, Any]
    styles: list[str]
    options: dict[str, Any]
    evaluation: dict[str, Any]
    seconds: float
    seconds_by_stage: dict[str, float]
    steps: int
    step_seconds: dict[str, float]
    final_loss: dict[str, float] | None
    device: str
    peak_memory_mb: float | None
    peak_device_memory_mb: float | None
    weights: str
    style_layers: list[str]
    content_layer: str
    seed: int
    torch_threads: int
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what report.json holds)."""
        return asdict(self)

    def write(self, path: str | os.PathLike) -> None:
        """Write the report as JSON at `path` (atomically; NaN becomes null)."""
        write_json(self.to_dict(), path)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "report") -> Report:
        """A Report from its JSON form; a document without the schema's keys is a UserError naming them."""
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [name for name in names if name not in data]
        if missing:
            raise UserError(f"{source}: not an nst3d report (missing {', '.join(missing)}); was it written by an "
                            "older nst3d? Run the job again")
        return cls(**{name: data[name] for name in names})


REPORT_KEYS = tuple(f.name for f in fields(Report))


def read_report(path: str | os.PathLike) -> Report:
    """The report at `path` (UserError when it is not valid JSON or not a report)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the report {path}: {exc}") from None
    return Report.from_mapping(data, str(path))
