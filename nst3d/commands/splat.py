"""`nst3d splat SCENE.ply --style STYLE -o OUT.ply`: stylize a 3D Gaussian splat (INRIA PLY, SuperSplat compressed
PLY or Niantic .spz) by optimising its colours only; geometry and opacity stay as they are. Writes OUT.ply (INRIA;
a name ending in .compressed.ply writes a compressed PLY), a contact sheet OUT.png (held-out
views, original above stylized) and a report OUT.json (or --report) with the held-out metrics."""

from __future__ import annotations

import argparse
import time
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
from nst3d.backends.splat.compressed import write_compressed_ply
from nst3d.backends.splat.formats import read_any_splat
from nst3d.backends.splat.ply import GAUSSIAN_PROPERTIES, read_splat, write_splat
from nst3d.errors import UserError
from nst3d.eval import baseline_config, evaluate_with_renders
from nst3d.events import EventSink, ProgressBar, ignore
from nst3d.files import check_output, write_json
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
from nst3d.schema import DEFAULTS as BACKEND_DEFAULTS
from nst3d.stylize import stylize

DEFAULT_CONSISTENCY = 20.0
DEFAULTS = BACKEND_DEFAULTS["splat"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("splat", help="stylize a 3D Gaussian splat (.ply, .compressed.ply, .spz)", description=__doc__)
    p.add_argument("scene", type=Path, help="Gaussian splat: INRIA .ply (3DGS / gsplat / nerfstudio / Polycam / Luma), "
                   "SuperSplat .compressed.ply or Niantic .spz")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="stylized .ply (INRIA), or NAME.compressed.ply for a SuperSplat compressed PLY (the input is "
                        "never changed)")
    p.add_argument("--cameras", type=Path, metavar="PATH",
                   help="train on the capture's cameras instead of orbits (for scenes seen from the inside): a "
                        "nerfstudio/Blender transforms.json, a 3DGS cameras.json, or a COLMAP model (sparse/0 folder, "
                        "its cameras/images .bin or .txt, or a project folder holding sparse/0); a splat at "
                        "<3DGS output>/point_cloud/iteration_N/ finds the output's cameras.json by itself")
    p.add_argument("--dataparser-transforms", type=Path, metavar="JSON",
                   help="nerfstudio's dataparser_transforms.json, when the splat lives in nerfstudio's frame")
    p.add_argument("--view-dependent", action="store_true",
                   help="also optimise the higher SH bands (default: zero them; the style looks the same from "
                        "every side)")
    p.add_argument("--compare-baseline", action="store_true",
                   help="also stylize each held-out view on its own in 2D (the per-view baseline) and measure the "
                        "unstylized floor, for the report")
    p.add_argument("--up", default="auto", choices=("auto", "x", "y", "z", "-x", "-y", "-z"),
                   help="the scene's up axis for orbits (auto: the capture's, else the thinnest axis); write a "
                        "negative axis as --up=-x")
    p.add_argument("--pool", type=int, default=48, metavar="N", help="training views set up once (default 48)")
    p.add_argument("--held-out", type=int, default=4, metavar="N",
                   help="held-out anchor views for the report (with --cameras: capture cameras, at most a fifth)")
    p.add_argument("--color-field", type=int, default=0, metavar="RES",
                   help="paint the style into a sparse multi-resolution 3D colour field of this finest resolution, "
                        "read at the Gaussian centres (smoother, coarser strokes); default 0: every Gaussian has "
                        "its own colour")
    p.add_argument("--consistency-weight", type=float, default=DEFAULT_CONSISTENCY, metavar="W",
                   help="weight of the multi-view consistency term between each batch's overlapping views "
                        f"(default {DEFAULT_CONSISTENCY:g}; 0 turns it off)")
    p.add_argument("--cleanup", action="store_true",
                   help="drop huge and needle-like Gaussians that smear the style (changes the count; off by "
                        "default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_style_options(p, DEFAULTS)
    p.set_defaults(run=run)


def side_paths(output: Path, report: Path | None) -> tuple[Path, Path]:
    """(contact sheet, report) beside the output unless --report says otherwise."""
    return output.with_suffix(".png"), report or output.with_suffix(".json")


def run(args: argparse.Namespace) -> int:
    opts = with_defaults(options_from_args(args), DEFAULTS)
    inputs = [args.scene, *opts.styles, *(p for p in (args.cameras, args.dataparser_transforms) if p)]
    check_output(args.output, inputs, (".ply",))
    sheet, report_path = side_paths(args.output, opts.report)
    check_output(sheet, inputs, (".png",))
    check_output(report_path, inputs, (".json",))
    if args.pool < 1 or args.held_out < 1:
        raise UserError("--pool and --held-out must be at least 1")
    if args.dataparser_transforms and not args.cameras:
        raise UserError("--dataparser-transforms maps the --cameras file into the splat's frame; give --cameras too")
    if args.color_field < 0 or args.color_field == 1:
        raise UserError(f"--color-field must be 0 (off) or a resolution of at least 2, got {args.color_field}")
    if not 0 <= args.consistency_weight < float("inf"):
        raise UserError(f"--consistency-weight must be a number that is not negative, got {args.consistency_weight}")
    bar = ProgressBar(quiet=args.quiet)
    report = stylize_splat_file(args.scene, args.output, opts, cameras=args.cameras,
                                dataparser_transforms=args.dataparser_transforms, view_dependent=args.view_dependent,
                                compare_baseline=args.compare_baseline, up=args.up, pool=args.pool,
                                held_out=args.held_out, cleanup=args.cleanup, color_field=args.color_field,
                                consistency_weight=args.consistency_weight, sheet=sheet,
                                on_event=bar)
    bar.close()
    write_json(report, report_path)
    style = report["evaluation"]["style_distance"]
    print(f"wrote {args.output}, {sheet}, {report_path} ({report['gaussians']} Gaussians; held-out style distance "
          f"{style['before']:.3g} -> {style['after']:.3g}; {report['seconds']:.0f} s)")
    return 0


def stylize_splat_file(scene_path: Path, output: Path, opts: StyleOptions, *, cameras: Path | None = None,
                       dataparser_transforms: Path | None = None, view_dependent: bool = False,
                       compare_baseline: bool = False, up: str = "auto", pool: int = 48, held_out: int = 4,
                       cleanup: bool = False, color_field: int = 0,
                       consistency_weight: float = DEFAULT_CONSISTENCY, sheet: Path | None = None,
                       on_event: EventSink = ignore,
                       should_stop=None) -> dict[str, Any]:
    """Stylize the splat at scene_path into `output` (and the contact sheet); returns the report."""
    started = time.perf_counter()
    device = resolve_device(opts.device)
    reset_peak_memory(device)
    ply = read_any_splat(scene_path)
    compressed_out = output.name.lower().endswith(".compressed.ply")
    if ply.source_format != "INRIA PLY":
        on_event({"event": "message", "text": f"read {scene_path.name} ({ply.source_format}, {ply.count} Gaussians); "
                  f"the output is {'a compressed' if compressed_out else 'an INRIA'} PLY"})
    vgg = vgg_for(opts, device)
    styles = load_styles(opts)
    if cameras is None and (found := cameras_beside(scene_path)) is not None:
        cameras = found
        on_event({"event": "message", "text": f"using the 3DGS training cameras in {found} (the splat's output "
                  "folder); give --cameras to choose others"})
    capture = capture_cameras(cameras, opts.size, dataparser_transforms, on_event) if cameras else None
    scene = SplatScene.from_ply(ply)
    keep = None
    if cleanup:
        keep = cleanup_mask(scene, robust_bounds(scene.means)[1])
        scene = scene.subset(keep)
        if len(scene) == 0:
            raise UserError("--cleanup would remove every Gaussian; run without it")
    backend = SplatBackend(scene, size=opts.size, views_per_step=opts.views, pool_size=pool,
                           view_dependent=view_dependent, capture=capture, up=up, lr=opts.lr, init=opts.init,
                           device=device, seed=opts.seed, field_resolution=color_field, held_out=held_out,
                           on_event=on_event, should_stop=should_stop)
    prepared = time.perf_counter()
    palette = torch.cat([b.content.permute(1, 0, 2, 3)[:, b.mask[:, 0] > 0.5] for b in backend.batches], dim=1)
    objective = build_objective(opts, vgg, styles, palette, DEFAULTS)
    training = ConsistentObjective(objective, backend, consistency_weight)
    history = stylize(backend, training, loop_config(opts), on_event, should_stop)
    optimised = time.perf_counter()
    backend.keep_chroma = opts.preserve_color == "luminance"
    held = backend.held_out(held_out)
    baseline = baseline_config(opts.steps, opts.seed) if compare_baseline else None
    evaluation, renders = evaluate_with_renders(
        lambda cams: backend.render_cameras(cams, "stylized"), lambda cams: backend.render_cameras(cams, "original"),
        held, objective, baseline_config=baseline, on_event=on_event, should_stop=should_stop)
    evaluated = time.perf_counter()
    # Everything is computed: write the outputs (each atomically).
    sh_dc, sh_rest = full_colors(ply, backend, keep)
    kept = None if keep is None else keep.cpu().numpy()
    if compressed_out:
        order = write_compressed_ply(output, ply, sh_dc, sh_rest, kept)
    else:
        order = None
        write_splat(output, ply, sh_dc, sh_rest, kept)
    if sheet is not None:
        n = held.count
        columns = [*range(n), *range(2 * n, 3 * n)]  # the anchors and their 45-degree partners
        names = [("content", "original"), ("stylized", "stylized"), ("baseline", "per-view 2D")]
        rows = [(renders[key].rgb[columns], label) for key, label in names if key in renders]
        contact_sheet([r for r, _ in rows], sheet, labels=[label for _, label in rows])
    check = verify_output(ply, output, keep) if order is None else verify_compressed_output(ply, output, order)
    return {
        "command": "splat",
        "scene": str(scene_path),
        "scene_format": ply.source_format,
        "output": str(output),
        "contact_sheet": None if sheet is None else str(sheet),
        "styles": [str(s) for s in opts.styles],
        "gaussians": len(scene),
        "gaussians_in": ply.count,
        "removed_by_cleanup": 0 if keep is None else int((~keep).sum()),
        "sh_degree": ply.sh_degree,
        "view_dependent": backend.view_dependent,
        "properties": ply.property_names,
        "output_check": check,
        "cameras": "capture" if capture is not None else "orbit",
        "camera_file": None if cameras is None else str(cameras),
        "color_field": None if backend.field is None else {
            "resolutions": backend.field.resolutions, "entries": [len(v) for v in backend.field.values]},
        "up": backend.up.tolist(),
        "evaluation": evaluation,
        "final_loss": history[-1] if history else None,
        "seconds": evaluated - started,
        "seconds_prepare": prepared - started,
        "seconds_optimise": optimised - prepared,
        "seconds_evaluate": evaluated - optimised,
        "steps": opts.steps,
        "size": opts.size,
        "views_per_step": opts.views,
        "pool": len(backend.batches) * opts.views,
        "renderer": "gsplat" if backend.engine == "gsplat" else "nst3d tiled PyTorch compositor",
        "device": str(device),
        **peak_memory(device),
        "loss": opts.loss,
        "strength": opts.strength,
        "preserve_color": opts.preserve_color,  # luminance: the style distance is measured on luminance only
        "content_weight": opts.content_weight,
        "lr": opts.lr,
        "consistency_weight": consistency_weight,
        "style_layers": objective.target.layers,
        "content_layer": objective.content_layer,
        "weights": vgg.source,
        "seed": opts.seed,
        "torch_threads": torch.get_num_threads(),
    }


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


def _bytes(column: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(column).view(np.uint8)
