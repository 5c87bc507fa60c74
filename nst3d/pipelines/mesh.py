"""The mesh pipeline: a textured mesh or multi-object scene (GLB/glTF/OBJ/PLY/STL) in, a stylized asset (GLB or
OBJ + MTL), one PNG per stylized texture, a contact sheet and report.json out (nst3d.pipelines.run does the
sequence; this adapter loads, builds the MeshBackend, exports)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nst3d.backends.mesh.backend import MeshBackend
from nst3d.backends.mesh.export import FORMATS, export_asset
from nst3d.backends.mesh.load import load_mesh
from nst3d.backends.mesh.regions import match_style_map
from nst3d.backends.mesh.surface import visible_surface_views
from nst3d.errors import UserError
from nst3d.events import EventSink
from nst3d.files import check_output
from nst3d.held_out import HeldOutViews, close_up_views, held_out_views
from nst3d.losses import Objective
from nst3d.options import StyleOptions, build_objective, load_styles
from nst3d.sampling import evenly_spaced_indices
from nst3d.scales import CLOSE_UP_FRACTION
from nst3d.schema import DEFAULTS as BACKEND_DEFAULTS

from .report import Report
from .run import Adapter, Finish, run

DEFAULTS = BACKEND_DEFAULTS["mesh"]
HELD_OUT = 4
CLOSE_UP_SEED = 1_000_003  # close-up held-out points come from their own stream, not the training pool's
CONTACT_SHEET = "contact_sheet.png"
REPORT = "report.json"


def mesh_objective(opts: StyleOptions, style_map: dict[str, list[Path]], vgg, palette: torch.Tensor,
                   style_levels: tuple[float, ...] = (1.0,)) -> Objective:
    """The Objective; with --style-map, one StyleTarget per style group (group 0: the --style images). Groups
    that name the same images with the same weights share one target, so they are one style over their
    pixels together (every name mapped to the --style images is the run without --style-map). style_levels: the
    style's scales the views ask for (MeshBackend.style_levels)."""
    main = build_objective(opts, vgg, load_styles(opts), palette, DEFAULTS, style_levels)
    if not style_map:
        return main

    def style_key(paths: list[Path], weights: list[float] | None) -> tuple:
        weights = [1.0] * len(paths) if weights is None else weights
        return tuple(str(Path(p).resolve()) for p in paths), tuple(w / sum(weights) for w in weights)

    targets = {style_key(list(opts.styles), opts.style_weights): main.target}
    channel_targets = [main.target]
    for paths in style_map.values():
        key = style_key(paths, None)
        if key not in targets:
            group_opts = replace(opts, styles=list(paths), style_weights=None)
            targets[key] = build_objective(group_opts, vgg, load_styles(group_opts), palette, DEFAULTS,
                                           style_levels).target
        channel_targets.append(targets[key])
    return replace(main, channel_targets=tuple(channel_targets))


def texture_palette(textures: list[torch.Tensor], limit: int = 65536) -> torch.Tensor:
    """The original textures' colours [3, N <= limit], evenly spaced over all their texels (as if the
    textures [3, H, W] were laid end to end, without copying them into one), for --preserve-color histogram."""
    counts = [t[0].numel() for t in textures]
    picks = evenly_spaced_indices(sum(counts), limit, device=textures[0].device)  # all on the asset's device
    parts, start = [], 0
    for texture, count in zip(textures, counts, strict=True):
        local = picks[(picks >= start) & (picks < start + count)] - start
        parts.append(texture.reshape(3, -1)[:, local])
        start += count
    return torch.cat(parts, dim=1)


class MeshAdapter(Adapter):
    """A mesh file into out_dir. Device rule: the asset's textures, the backend and its renders live on the run's
    device."""

    command = "mesh"
    defaults = DEFAULTS
    world_strokes = True
    baseline_stage = "baseline"

    def __init__(self, input_path: Path, out_dir: Path, style_map: dict[str, list[Path]], *, texture_size: int | None,
                 export_format: str, compare_baseline: bool, texture: Path | None, shading: str, pool_size: int,
                 held_out: int, keep_uv_layouts: bool):
        self.input, self.out_dir, self.style_map = input_path, out_dir, style_map
        self.texture_size, self.export_format, self.texture = texture_size, export_format, texture
        self.compare_baseline, self.shading, self.pool_size = compare_baseline, shading, pool_size
        self.held_out_count, self.keep_uv_layouts = held_out, keep_uv_layouts
        self.stem = f"{input_path.stem}_styled"

    def check(self, opts: StyleOptions) -> None:
        if self.export_format not in FORMATS:
            raise UserError(f"unknown --format '{self.export_format}'; use one of {', '.join(FORMATS)}")
        check_output(self.out_dir, [self.input], is_dir=True)
        check_output(self.out_dir / f"{self.stem}.{self.export_format}", [self.input, *self._style_paths(opts)])

    def _style_paths(self, opts: StyleOptions) -> list[Path]:
        return [*opts.styles, *(p for paths in self.style_map.values() for p in paths)]

    def stage_text(self, stage: str) -> str | None:
        if stage == "load":
            return f"loading {self.input.name}"
        if stage == "setup":
            return (f"rasterizing {self.pool_size} training views of {self.asset.face_count} triangles, "
                    f"{len(self.asset.slots)} texture(s)")
        if stage == "evaluate":
            return "evaluating on held-out views" + (" (and the per-view 2D baseline)" if self.compare_baseline
                                                     else "")
        return f"writing {self.out_dir}" if stage == "export" else None

    def styles(self, opts: StyleOptions) -> list[torch.Tensor]:
        for path in self._style_paths(opts):
            if not Path(path).is_file():
                raise UserError(f"style image not found: {path}")
        return []  # mesh_objective loads each group's images itself

    def load(self, opts: StyleOptions, device: torch.device, on_event: EventSink) -> None:
        self.asset = load_mesh(self.input, self.texture_size, self.texture, self.keep_uv_layouts)
        for warning in self.asset.warnings:  # now, so a user can stop and fix the input before a long run
            on_event({"event": "warning", "text": warning})
        names = [s.aliases for s in self.asset.slots]
        self.groups = match_style_map(list(self.style_map), names) if self.style_map else None

    def make_backend(self, opts: StyleOptions, device: torch.device, on_event: EventSink,
                     should_stop: Callable[[], bool] | None) -> MeshBackend:
        self.opts = opts
        backend = MeshBackend(self.asset, size=opts.size, views_per_step=opts.views, pool_size=self.pool_size,
                              lr=opts.lr, shading=self.shading, groups=self.groups, device=device, seed=opts.seed,
                              init=opts.init, stroke_scale=opts.stroke_scale,
                              raise_textures=not self.texture_size, stroke_sizing=opts.stroke_sizing)
        on_event({"event": "message", "stage": "setup", "text": stroke_scale_text(backend, opts.stroke_scale)})
        for note in backend.notes:
            on_event({"event": "warning", "text": note})
        return backend

    def objective(self, opts: StyleOptions, vgg, styles: list[torch.Tensor]):
        return mesh_objective(opts, self.style_map, vgg, texture_palette([s.texture for s in self.asset.slots]),
                              self.backend.style_levels)

    def after_optimise(self, opts: StyleOptions) -> None:
        self.textures = self.backend.stylized_textures(keep_chroma=opts.preserve_color == "luminance")

    def held_out(self) -> HeldOutViews:
        self.held = held_out_views(self.backend.frame, self.held_out_count)
        return self.held

    def close_ups(self) -> HeldOutViews | None:
        """Close-ups at area-sampled visible points, never trained on (their own random stream); None when no
        surface point can be seen from a close-up's distance."""
        backend = self.backend
        height = CLOSE_UP_FRACTION * backend.diagonal
        generator = torch.Generator().manual_seed(CLOSE_UP_SEED + self.opts.seed)
        points, normals = visible_surface_views(backend.rasterizer, self.held_out_count, height, backend.size,
                                                generator)
        return close_up_views(points, normals, height, backend.size, backend.size) if len(points) else None

    def render_stylized(self, cameras):
        return self.backend.render_cameras(cameras, self.textures)

    def render_original(self, cameras):
        return self.backend.render_cameras(cameras)

    def export(self, opts: StyleOptions, history: list, finish: Finish) -> Report:
        written = export_asset(self.asset, self.textures, self.out_dir, self.stem, self.export_format)
        outputs = {"asset": str(written["asset"]), "textures": [str(p) for p in written["textures"]],
                   "contact_sheet": str(self.out_dir / CONTACT_SHEET), "report": str(self.out_dir / REPORT)}
        return finish(outputs, self.out_dir / CONTACT_SHEET, self.out_dir / REPORT)

    def sheet_rows(self, held: HeldOutViews, renders: dict) -> tuple[list[torch.Tensor], list[str]]:
        """Rows on the held-out anchor views: original and stylized, shaded (Lambert) so shapes read even where
        a surface has one flat colour, plus the per-view baseline (unshaded, as optimised)."""
        backend = self.backend
        shaded = "lambert" if backend.shading == "none" else backend.shading
        original = backend.render_cameras(held.anchors, shading=shaded).rgb
        stylized = backend.render_cameras(held.anchors, self.textures, shading=shaded).rgb
        rows, labels = [original, stylized], ["original (shaded)", "stylized (shaded)"]
        if "baseline" in renders:
            rows += [renders["stylized"].rgb[:held.count], renders["baseline"].rgb[:held.count]]
            labels += ["stylized (unlit, as measured)", "per-view 2D baseline"]
        return rows, labels

    def details(self) -> dict[str, Any]:
        return {"style_map": {name: [str(p) for p in paths] for name, paths in self.style_map.items()},
                "size": self.opts.size, "views_per_step": self.opts.views, "training_views": self.pool_size,
                "triangles": self.asset.face_count, "textures": self.backend.texture_report(),
                "shading": self.shading, **scale_details(self.backend)}


def stroke_scale_text(backend: MeshBackend, given: float | None) -> str:
    """The line that says which stroke scale a run uses and where it came from."""
    source = "--stroke-scale" if given else "a fifth of the bounding diagonal; set --stroke-scale to change it"
    return (f"stroke scale {backend.stroke_scale:.4g} ({source}); bounding diagonal {backend.diagonal:.4g}, "
            f"{len(backend.view_heights)} training views in {len(scale_details(backend)['view_scales'])} scales")


def scale_details(backend: MeshBackend) -> dict[str, Any]:
    """The report's stroke scale, bounding diagonal and training views per scale (view height, 0 = whole)."""
    heights = backend.view_heights.tolist()
    return {"stroke_scale": backend.stroke_scale, "bounding_diagonal": backend.diagonal,
            "view_scales": {("whole" if h == 0 else f"{h:.4g}"): heights.count(h) for h in sorted(set(heights))}}


def stylize_mesh_file(input_path: str | Path, out_dir: str | Path, opts: StyleOptions,
                      style_map: dict[str, list[Path]] | None = None, *, texture_size: int | None = None,
                      export_format: str = "glb", compare_baseline: bool = False,
                      on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                      texture: str | Path | None = None, shading: str = "none",
                      pool_size: int = 48, held_out: int = HELD_OUT, keep_uv_layouts: bool = False,
                      on_adapter: Callable[[MeshAdapter], None] | None = None) -> Report:
    """Stylize a mesh file; write out_dir/<stem>_styled.glb (or .obj), texture PNGs, contact_sheet.png and
    report.json, and return the report. Nothing is written if anything fails or the run is cancelled.

    opts: the shared options (None fields take the mesh defaults); style_map: {material or object name:
    style images}; texture_size: resample textures (longer side); texture: an image for UV'd triangles
    without a texture; keep_uv_layouts: see load_mesh; on_adapter: called with the adapter before the run (the
    worker's live previews render with its backend). Raises UserError for bad input,
    nst3d.stylize.Cancelled when should_stop() turns true.
    """
    adapter = MeshAdapter(Path(input_path), Path(out_dir), style_map or {}, texture_size=texture_size,
                          export_format=export_format, compare_baseline=compare_baseline,
                          texture=None if texture is None else Path(texture), shading=shading, pool_size=pool_size,
                          held_out=held_out, keep_uv_layouts=keep_uv_layouts)
    if on_adapter is not None:
        on_adapter(adapter)
    return run(adapter, opts, on_event, should_stop)
