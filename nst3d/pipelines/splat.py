"""The splat pipeline: a 3D Gaussian splat (INRIA PLY, SuperSplat compressed PLY, .spz) in, its colours stylized
(geometry and opacity kept), a PLY, a contact sheet and a report out (nst3d.pipelines.run does the sequence)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nst3d.backends.splat.backend import (
    ConsistentObjective,
    SplatBackend,
    SplatScene,
    cleanup_mask,
    robust_bounds,
)
from nst3d.backends.splat.capture import cameras_beside, capture_cameras
from nst3d.backends.splat.close import scene_diagonal
from nst3d.backends.splat.compressed import write_compressed_ply
from nst3d.backends.splat.formats import read_any_splat
from nst3d.backends.splat.ply import GAUSSIAN_PROPERTIES, read_splat, write_splat
from nst3d.backends.splat.scene import render_scene
from nst3d.backends.splat.split import SPLIT_PIXELS, split_extent, split_ply, split_scene
from nst3d.errors import UserError
from nst3d.events import EventSink, ignore
from nst3d.held_out import HeldOutViews
from nst3d.options import StyleOptions
from nst3d.scales import stroke_scale_or_default
from nst3d.schema import DEFAULTS as BACKEND_DEFAULTS

from .report import Report
from .run import Adapter, Finish, run

DEFAULT_CONSISTENCY = 20.0
#: The share of the training pool made of close views at the stroke scale's octaves (the rest frame the object):
#: on the donut, half the pool left the close-up held-out style at 0.49x of its start (its finest views covered
#: a seventh of the surface), so two thirds, most of them at the finest octave (close.octave_shares).
CLOSE_SHARE = 2 / 3
DEFAULTS = BACKEND_DEFAULTS["splat"]


class SplatAdapter(Adapter):
    """A splat file into `output` (+ the contact sheet and report where given). Device rule: the scene, the
    backend and its renders live on the run's device; the file's own arrays stay on the host."""

    command = "splat"
    defaults = DEFAULTS

    def __init__(self, scene_path: Path, output: Path, *, cameras: Path | None, dataparser_transforms: Path | None,
                 view_dependent: bool, compare_baseline: bool, up: str, pool: int, held_out: int, cleanup: bool,
                 color_field: int, consistency_weight: float, sheet: Path | None, report: Path | None,
                 split: str = "auto"):
        self.input, self.output, self.cameras = scene_path, output, cameras
        self.dataparser_transforms, self.view_dependent, self.up = dataparser_transforms, view_dependent, up
        self.compare_baseline, self.pool, self.held_out_count = compare_baseline, pool, held_out
        self.cleanup, self.color_field, self.consistency_weight = cleanup, color_field, consistency_weight
        self.sheet, self.report_path = sheet, report
        self.compressed_out = output.name.lower().endswith(".compressed.ply")
        self.split_mode, self.split = split, None

    def load(self, opts: StyleOptions, device: torch.device, on_event: EventSink) -> None:
        self.ply = ply = read_any_splat(self.input)
        if ply.source_format != "INRIA PLY":
            on_event({"event": "message", "text": f"read {self.input.name} ({ply.source_format}, {ply.count} "
                      f"Gaussians); the output is {'a compressed' if self.compressed_out else 'an INRIA'} PLY"})
        if self.cameras is None and (found := cameras_beside(self.input)) is not None:
            self.cameras = found
            on_event({"event": "message", "text": f"using the 3DGS training cameras in {found} (the splat's output "
                      "folder); give --cameras to choose others"})
        self.capture = (capture_cameras(self.cameras, opts.size, self.dataparser_transforms, on_event)
                        if self.cameras else None)
        self.scene, self.keep = SplatScene.from_ply(ply), None
        if self.cleanup:
            self.keep = cleanup_mask(self.scene, robust_bounds(self.scene.means)[1])
            self.scene = self.scene.subset(self.keep)
            if len(self.scene) == 0:
                raise UserError("--cleanup would remove every Gaussian; run without it")
        self.diagonal = scene_diagonal(self.scene)
        self.stroke_scale = stroke_scale_or_default(opts.stroke_scale, self.diagonal)
        on_event({"event": "message", "text": f"stroke scale {self.stroke_scale:.4g} (scene units; bounding diagonal "
                  f"{self.diagonal:.4g}){'' if opts.stroke_scale else ': the default, give --stroke-scale to choose'}"})
        if self.split_mode == "auto":
            self.unsplit = self.scene
            self.split = split_scene(self.scene, split_extent(self.stroke_scale, opts.size))
            if self.split.rounds:
                self.scene = self.split.scene
                on_event({"event": "message", "text": f"split Gaussians larger than {self.split.max_extent:.3g} "
                          f"(3 sigma; {SPLIT_PIXELS:g} px of the finest views): {len(self.unsplit)} -> "
                          f"{len(self.scene)}{' (the cap)' if self.split.capped else ''}; --split none keeps them"})

    def make_backend(self, opts: StyleOptions, device: torch.device, on_event: EventSink,
                     should_stop: Callable[[], bool] | None) -> SplatBackend:
        self.opts = opts
        return SplatBackend(self.scene, size=opts.size, views_per_step=opts.views, pool_size=self.pool,
                            view_dependent=self.view_dependent, capture=self.capture, up=self.up, lr=opts.lr,
                            init=opts.init, device=device, seed=opts.seed, field_resolution=self.color_field,
                            held_out=self.held_out_count, on_event=on_event, should_stop=should_stop,
                            stroke_scale=self.stroke_scale, close_share=CLOSE_SHARE)

    def palette(self) -> torch.Tensor:
        return torch.cat([b.content.permute(1, 0, 2, 3)[:, b.mask[:, 0] > 0.5] for b in self.backend.batches], dim=1)

    def training_objective(self, objective):
        return ConsistentObjective(objective, self.backend, self.consistency_weight)

    def after_optimise(self, opts: StyleOptions) -> None:
        self.backend.keep_chroma = opts.preserve_color == "luminance"

    def held_out(self) -> HeldOutViews:
        held = self.backend.held_out(self.held_out_count)
        if self.split is not None and self.split.rounds:
            self.split_psnr = split_psnr(self.unsplit, self.backend, held.anchors)
        return held

    def close_ups(self) -> HeldOutViews | None:
        return self.backend.close_ups(self.held_out_count, self.opts.seed)

    def render_stylized(self, cameras):
        return self.backend.render_cameras(cameras, "stylized")

    def render_original(self, cameras):
        return self.backend.render_cameras(cameras, "original")

    def export(self, opts: StyleOptions, history: list, finish: Finish) -> Report:
        ply, keep = self.ply, self.keep
        if self.split is not None and self.split.rounds:  # the file holds the split Gaussians (dropped ones gone)
            kept_rows = torch.arange(ply.count) if keep is None else torch.nonzero(keep.cpu()).squeeze(1)
            ply, keep = split_ply(ply, kept_rows[self.split.parent.cpu()].numpy(), self.scene), None
        sh_dc, sh_rest = full_colors(ply, self.backend, keep)
        kept = None if keep is None else keep.cpu().numpy()
        if self.compressed_out:
            order = write_compressed_ply(self.output, ply, sh_dc, sh_rest, kept)
            self.check = verify_compressed_output(ply, self.output, order)
        else:
            write_splat(self.output, ply, sh_dc, sh_rest, kept)
            self.check = verify_output(ply, self.output, keep)
        outputs = {"asset": str(self.output), "contact_sheet": None if self.sheet is None else str(self.sheet),
                   "report": None if self.report_path is None else str(self.report_path)}
        return finish(outputs, self.sheet, self.report_path)

    def sheet_rows(self, held: HeldOutViews, renders: dict) -> tuple[list[torch.Tensor], list[str]]:
        """The anchors and their 45-degree partners: original, stylized[, per-view 2D baseline]."""
        n = held.count
        columns = [*range(n), *range(2 * n, 3 * n)]
        names = [("content", "original"), ("stylized", "stylized"), ("baseline", "per-view 2D")]
        rows = [(renders[key].rgb[columns], label) for key, label in names if key in renders]
        return [r for r, _ in rows], [label for _, label in rows]

    def details(self) -> dict[str, Any]:
        backend, ply, keep = self.backend, self.ply, self.keep
        return {
            "scene_format": ply.source_format, "gaussians": len(self.scene), "gaussians_in": ply.count,
            "removed_by_cleanup": 0 if keep is None else int((~keep).sum()), "sh_degree": ply.sh_degree,
            "view_dependent": backend.view_dependent, "properties": ply.property_names, "output_check": self.check,
            "cameras": "capture" if self.capture is not None else "orbit",
            "camera_file": None if self.cameras is None else str(self.cameras),
            "color_field": None if backend.field is None else {
                "resolutions": backend.field.resolutions, "entries": [len(v) for v in backend.field.values]},
            "up": backend.up.tolist(), "size": self.opts.size, "views_per_step": self.opts.views,
            "pool": len(backend.batches) * self.opts.views,
            "renderer": "gsplat" if backend.engine == "gsplat" else "nst3d tiled PyTorch compositor",
            "consistency_weight": self.consistency_weight,
            "stroke_scale": self.stroke_scale, "bounding_diagonal": self.diagonal, "octave_heights": backend.octaves,
            "close_views": (len(backend.batches) - backend.whole_batches) * self.opts.views,
            "split": self._split_details(),
        }

    def _split_details(self) -> dict[str, Any]:
        split = self.split
        if split is None:
            return {"mode": "none"}
        return {"mode": "auto", "max_extent": split.max_extent, "pixels": SPLIT_PIXELS, "rounds": split.rounds,
                "before": len(self.unsplit), "after": len(self.scene), "cap": split.cap, "capped": split.capped,
                "psnr_db_on_held_out_anchors": getattr(self, "split_psnr", None)}


def stylize_splat_file(scene_path: Path, output: Path, opts: StyleOptions, *, cameras: Path | None = None,
                       dataparser_transforms: Path | None = None, view_dependent: bool = False,
                       compare_baseline: bool = False, up: str = "auto", pool: int = 48, held_out: int = 4,
                       cleanup: bool = False, color_field: int = 0,
                       consistency_weight: float = DEFAULT_CONSISTENCY, sheet: Path | None = None,
                       report: Path | None = None, on_event: EventSink = ignore, should_stop=None,
                       split: str = "auto") -> Report:
    """Stylize the splat at scene_path into `output` (and the contact sheet `sheet` and report `report` where
    given); returns the report. Nothing is written if anything fails or the run is cancelled."""
    adapter = SplatAdapter(Path(scene_path), Path(output), cameras=cameras,
                           dataparser_transforms=dataparser_transforms, view_dependent=view_dependent,
                           compare_baseline=compare_baseline, up=up, pool=pool, held_out=held_out, cleanup=cleanup,
                           color_field=color_field, consistency_weight=consistency_weight, sheet=sheet,
                           report=report, split=split)
    return run(adapter, opts, on_event, should_stop)


def full_colors(ply, backend: SplatBackend, keep: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sh_dc [N, 3], sh_rest [N, K - 1, 3]) for every Gaussian of the file (dropped ones keep theirs)."""
    dc, rest = backend.stylized_sh()
    if keep is None:
        return dc, rest
    full_dc, full_rest = ply.sh_dc(), ply.sh_rest()
    full_dc[keep.cpu()] = dc
    full_rest[keep.cpu()] = rest
    return full_dc, full_rest


def verify_output(source, output: Path, keep: torch.Tensor | None) -> dict[str, Any]:
    """Re-read the output: same properties, same count (or the kept count), geometry and opacity bit-identical."""
    out = read_splat(output)
    rows = source.vertices if keep is None else source.vertices[keep.cpu().numpy()]
    fixed = [name for name in source.property_names if not name.startswith(("f_dc_", "f_rest_"))]
    identical = all(np.array_equal(_bytes(out.vertices[name]), _bytes(rows[name]))
                    for name in fixed)
    before = source.columns(["f_dc_0", "f_dc_1", "f_dc_2"])
    before = before if keep is None else before[keep.cpu().numpy()]
    changed = float(np.mean(np.any(out.columns(["f_dc_0", "f_dc_1", "f_dc_2"]) != before, axis=1)))
    return {"count": out.count, "same_properties": out.property_names == source.property_names,
            "geometry_and_opacity_identical": identical, "bit_identical_properties": fixed,
            "fraction_of_colours_changed": changed,
            "gaussian_properties_present": all(p in out.property_names for p in GAUSSIAN_PROPERTIES)}


def verify_compressed_output(source, output: Path, order: np.ndarray) -> dict[str, Any]:
    """Re-read a compressed-PLY output: count, and geometry and opacity as decoded (bit-identical when the source
    was a compressed PLY whose packed geometry was kept; otherwise within the format's quantisation)."""
    out = read_any_splat(output)
    names = ["x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    before, after = source.columns(names)[order], out.columns(names)
    colours = source.columns(["f_dc_0", "f_dc_1", "f_dc_2"])[order]
    changed = float(np.mean(np.any(out.columns(["f_dc_0", "f_dc_1", "f_dc_2"]) != colours, axis=1)))
    return {"count": out.count, "format": "compressed PLY", "geometry_and_opacity_identical": bool(
                np.array_equal(before, after)), "max_position_error": float(np.abs(after[:, :3] - before[:, :3]).max(
                initial=0.0)), "fraction_of_colours_changed": changed}


def split_psnr(unsplit: SplatScene, backend: SplatBackend, cameras) -> float:
    """PSNR (dB, over white) of the split scene's original colours against the unsplit scene from `cameras`."""
    before, after = render_scene(unsplit, cameras), backend.render_cameras(cameras, "original")
    return float(-10 * torch.log10(((before.rgb - after.rgb) ** 2).mean().clamp(min=1e-12)))


def _bytes(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.uint8)
