"""`nst3d mesh INPUT --style STYLE -o OUTDIR`: stylize a textured mesh or a multi-object scene.

Writes OUTDIR/<stem>_styled.glb (or .obj + .mtl with --format obj), one PNG per stylized texture, a contact
sheet (original vs stylized on held-out views) and report.json (style/content distance and multi-view
consistency on held-out views; with --compare-baseline also the per-view 2D baseline and the floor).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nst3d.events import ProgressBar
from nst3d.options import add_style_options, options_from_args
from nst3d.pipelines.mesh import DEFAULTS, stylize_mesh_file
from nst3d.schema import MeshOptions, add_arguments, from_args, parse_style_map


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


def run(args: argparse.Namespace) -> int:
    opts, mesh = options_from_args(args), from_args(MeshOptions, args)
    report = stylize_mesh_file(args.input, args.output, opts, parse_style_map(mesh.style_map),
                               texture_size=mesh.texture_size, export_format=mesh.export_format,
                               compare_baseline=args.compare_baseline, texture=args.texture, shading=mesh.shading,
                               on_event=ProgressBar(quiet=args.quiet))
    if opts.report:
        report.write(opts.report)
    evaluation = report.evaluation
    sd, held, consistency = evaluation["style_distance"], evaluation["held_out"], evaluation["consistency"]
    close = evaluation.get("close_up", {}).get("style_distance")
    close_text = f", close-up {close['before']:.3g} -> {close['after']:.3g}" if close else ""
    print(f"wrote {report.outputs['asset']} (style distance {sd['before']:.3g} -> {sd['after']:.3g}{close_text}, "
          f"view-to-view RMSE {consistency['short_range']:.3f} at {held['short_degrees']:g} deg / "
          f"{consistency['long_range']:.3f} at {held['long_degrees']:g} deg, "
          f"{report.seconds:.0f} s)")
    return 0
