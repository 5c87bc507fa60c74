"""`nst3d mesh INPUT --style STYLE -o OUTDIR`: stylize a textured mesh or a multi-object scene.

Writes OUTDIR/<stem>_styled.glb (or .obj + .mtl with --format obj), one PNG per stylized texture, a contact
sheet (original vs stylized on held-out views) and report.json (style/content distance and multi-view
consistency on held-out views; with --compare-baseline also the per-view 2D baseline and the floor).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nst3d.backends.mesh.backend import MeshBackend
from nst3d.backends.mesh.export import FORMATS, export_asset
from nst3d.backends.mesh.load import load_mesh
from nst3d.backends.mesh.regions import match_style_map
from nst3d.errors import UserError
from nst3d.eval import baseline_config, evaluate_with_renders, held_out_views
from nst3d.events import EventSink, ProgressBar, ignore
from nst3d.files import check_output, write_json
from nst3d.losses import Objective
from nst3d.options import (
    StyleOptions,
    add_style_options,
    build_objective,
    load_styles,
    loop_config,
    options_from_args,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    vgg_for,
    with_defaults,
)
from nst3d.preview import contact_sheet
from nst3d.sampling import evenly_spaced_indices
from nst3d.schema import DEFAULTS as BACKEND_DEFAULTS
from nst3d.schema import MeshOptions, add_arguments, from_args
from nst3d.stylize import stylize

DEFAULTS = BACKEND_DEFAULTS["mesh"]
HELD_OUT = 4
CONTACT_SHEET = "contact_sheet.png"
REPORT = "report.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mesh", help="stylize a textured mesh or scene (GLB/glTF/OBJ/PLY/STL)", description=__doc__)
    p.add_argument("input", type=Path, help="mesh or scene file (.glb, .gltf, .obj, .ply, .stl, .off)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--texture", type=Path, metavar="IMAGE",
                   help="texture for triangles that have UVs but no texture (e.g. an OBJ without its .mtl)")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also stylize each held-out view alone (2D baseline) and report both (slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_arguments(p, MeshOptions, title="mesh")
    add_style_options(p, DEFAULTS)
    p.set_defaults(run=run)


def parse_style_map(entries: list[str] | None) -> dict[str, list[Path]]:
    """["Wood=b.jpg", "Wood=c.jpg", "Body=d.png"] -> {"Wood": [b.jpg, c.jpg], "Body": [d.png]}."""
    out: dict[str, list[Path]] = {}
    for entry in entries or []:
        name, sep, image = entry.partition("=")
        if not sep or not name.strip() or not image.strip():
            raise UserError(f"--style-map expects NAME=IMAGE, got '{entry}'")
        out.setdefault(name.strip(), []).append(Path(image.strip()))
    return out


def run(args: argparse.Namespace) -> int:
    opts, mesh = options_from_args(args), from_args(MeshOptions, args)
    report = stylize_mesh_file(args.input, args.output, opts, parse_style_map(mesh.style_map),
                               texture_size=mesh.texture_size, export_format=mesh.export_format,
                               compare_baseline=args.compare_baseline, texture=args.texture, shading=mesh.shading,
                               on_event=ProgressBar(quiet=args.quiet))
    if opts.report:
        write_json(report, opts.report)
    sd, held = report["style_distance"], report["held_out"]
    print(f"wrote {report['outputs']['asset']} (style distance {sd['before']:.3g} -> {sd['after']:.3g}, "
          f"view-to-view RMSE {report['consistency']['short_range']:.3f} at {held['short_degrees']:g} deg / "
          f"{report['consistency']['long_range']:.3f} at {held['long_degrees']:g} deg, "
          f"{report['seconds']:.0f} s)")
    return 0


def _objective(opts: StyleOptions, style_map: dict[str, list[Path]], vgg, palette: torch.Tensor) -> Objective:
    """The Objective; with --style-map, one StyleTarget per style group (group 0: the --style images). Groups
    that name the same images with the same weights share one target, so they are one style over their
    pixels together (every name mapped to the --style images is the run without --style-map)."""
    main = build_objective(opts, vgg, load_styles(opts), palette, DEFAULTS)
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
            targets[key] = build_objective(group_opts, vgg, load_styles(group_opts), palette, DEFAULTS).target
        channel_targets.append(targets[key])
    return replace(main, channel_targets=tuple(channel_targets))


def _palette(textures: list[torch.Tensor], limit: int = 65536) -> torch.Tensor:
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


def stylize_mesh_file(input_path: str | Path, out_dir: str | Path, opts: StyleOptions,
                      style_map: dict[str, list[Path]] | None = None, *, texture_size: int | None = None,
                      export_format: str = "glb", compare_baseline: bool = False,
                      on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                      texture: str | Path | None = None, shading: str = "none",
                      pool_size: int = 48, held_out: int = HELD_OUT, keep_uv_layouts: bool = False
                      ) -> dict[str, Any]:
    """Stylize a mesh file; write out_dir/<stem>_styled.glb (or .obj), texture PNGs, contact_sheet.png and
    report.json, and return the report. Nothing is written if anything fails or the run is cancelled.

    opts: the shared options (None fields take the mesh defaults); style_map: {material or object name:
    style images}; texture_size: resample textures (longer side); texture: an image for UV'd triangles
    without a texture; keep_uv_layouts: see load_mesh. Raises UserError for bad input,
    nst3d.stylize.Cancelled when should_stop() turns true.
    """
    started = time.perf_counter()
    stages: dict[str, float] = {}
    on_event = on_event or ignore
    input_path, out_dir = Path(input_path), Path(out_dir)
    style_map = style_map or {}
    opts = with_defaults(opts, DEFAULTS)
    if export_format not in FORMATS:
        raise UserError(f"unknown --format '{export_format}'; use one of {', '.join(FORMATS)}")
    styles = [*opts.styles, *(p for paths in style_map.values() for p in paths)]
    stem = f"{input_path.stem}_styled"
    check_output(out_dir, [input_path], is_dir=True)
    check_output(out_dir / f"{stem}.{export_format}", [input_path, *styles])
    device = resolve_device(opts.device)
    reset_peak_memory(device)
    vgg = vgg_for(opts, device)
    for path in styles:
        if not Path(path).is_file():
            raise UserError(f"style image not found: {path}")

    def stage(name: str, text: str) -> None:
        stages[name] = time.perf_counter()
        on_event({"event": "message", "stage": name, "text": text})

    stage("load", f"loading {input_path.name}")
    asset = load_mesh(input_path, texture_size, texture, keep_uv_layouts)
    for warning in asset.warnings:  # now, so a user can stop and fix the input before a long run
        on_event({"event": "warning", "text": warning})
    groups = match_style_map(list(style_map), [s.aliases for s in asset.slots]) if style_map else None
    objective = _objective(opts, style_map, vgg, _palette([s.texture for s in asset.slots]))
    stage("setup", f"rasterizing {pool_size} training views of {asset.face_count} triangles, "
                   f"{len(asset.slots)} texture(s)")
    backend = MeshBackend(asset, size=opts.size, views_per_step=opts.views, pool_size=pool_size, lr=opts.lr,
                          shading=shading, groups=groups, device=device, seed=opts.seed, init=opts.init)
    held = held_out_views(backend.frame, held_out)
    stages["optimise"] = time.perf_counter()
    history = stylize(backend, objective, loop_config(opts), on_event, should_stop)
    textures = backend.stylized_textures(keep_chroma=opts.preserve_color == "luminance")
    stage("evaluate", "evaluating on held-out views" + (" (and the per-view 2D baseline)" if compare_baseline
                                                           else ""))
    baseline = baseline_config(opts.steps, opts.seed, stage="baseline") if compare_baseline else None
    figures, renders = evaluate_with_renders(lambda c: backend.render_cameras(c, textures),
                                             backend.render_cameras, held, objective, baseline_config=baseline,
                                             on_event=on_event, should_stop=should_stop)
    stage("export", f"writing {out_dir}")
    written = export_asset(asset, textures, out_dir, stem, export_format)
    rows, labels = _sheet_rows(backend, held, textures, renders)
    sheet = contact_sheet(rows, out_dir / CONTACT_SHEET, labels)
    stages["end"] = time.perf_counter()
    report = {
        "command": "mesh",
        "input": str(input_path),
        "outputs": {"asset": str(written["asset"]), "textures": [str(p) for p in written["textures"]],
                    "contact_sheet": str(sheet), "report": str(out_dir / REPORT)},
        "styles": [str(s) for s in opts.styles],
        "style_map": {name: [str(p) for p in paths] for name, paths in style_map.items()},
        **figures,
        "seconds": time.perf_counter() - started,
        "seconds_by_stage": _durations(stages, started),
        "steps": opts.steps,
        "final_loss": history[-1] if history else None,
        "size": opts.size,
        "views_per_step": opts.views,
        "training_views": pool_size,
        "triangles": asset.face_count,
        "textures": backend.texture_report(),
        "shading": shading,
        "device": str(device),
        **peak_memory(device),
        "loss": opts.loss,
        "strength": opts.strength,
        "preserve_color": opts.preserve_color,
        "content_weight": opts.content_weight,
        "lr": opts.lr,
        "style_layers": objective.target.layers,
        "content_layer": objective.content_layer,
        "weights": vgg.source,
        "seed": opts.seed,
        "torch_threads": torch.get_num_threads(),
        "warnings": list(asset.warnings),
    }
    write_json(report, out_dir / REPORT)
    return report


def _sheet_rows(backend: MeshBackend, held, textures: list[torch.Tensor], renders: dict
                ) -> tuple[list[torch.Tensor], list[str]]:
    """Contact sheet rows on the held-out anchor views: original and stylized, shaded (Lambert) so shapes
    read even where a surface has one flat colour, plus the per-view baseline (unshaded, as optimised)."""
    shaded = "lambert" if backend.shading == "none" else backend.shading
    original = backend.render_cameras(held.anchors, shading=shaded).rgb
    stylized = backend.render_cameras(held.anchors, textures, shading=shaded).rgb
    rows, labels = [original, stylized], ["original (shaded)", "stylized (shaded)"]
    if "baseline" in renders:
        rows += [renders["stylized"].rgb[:held.count], renders["baseline"].rgb[:held.count]]
        labels += ["stylized (unlit, as measured)", "per-view 2D baseline"]
    return rows, labels


def _durations(stages: dict[str, float], started: float) -> dict[str, float]:
    names = list(stages)
    out = {}
    for k, name in enumerate(names[:-1]):
        out[name] = stages[names[k + 1]] - stages[name]
    return out
