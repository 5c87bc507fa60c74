"""`nst3d render ASSET --turntable -o out.gif|out.mp4` (or `-o still.png`): render a mesh or a Gaussian
splat, e.g. a stylized result, as a turntable or a single view.

Assets are dispatched by kind (`asset_kind`) to a loader in LOADERS, `loader(path, shading, device, texture)`, that
returns a Renderable working on `device` (--device; auto: a CUDA GPU when there is one): anything with
`render(cameras) -> Render` (on the CPU), `turntable(frames, size, elevation_degrees) -> Cameras` and
`still(size, elevation_degrees, azimuth_degrees) -> Cameras` and `diagonal() -> float` (the bounding
diagonal, for close-ups: `--close-up F` zooms the still onto the surface point nearest its centre until the
view's height covers F x the diagonal there, as the reports' close-up held-out views do with F = 0.2).
Adding a kind is one function and one LOADERS entry.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from nst3d.backends.base import Render
from nst3d.backends.splat.formats import SPLAT_SUFFIXES, splat_format
from nst3d.cameras import Cameras
from nst3d.errors import UserError
from nst3d.events import EventSink, ProgressBar, ignore
from nst3d.files import check_output, save_image
from nst3d.preview import STILL_SUFFIXES, TURNTABLE_SUFFIXES, composite, write_turntable
from nst3d.scales import bounding_diagonal, zoomed

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


class Renderable(Protocol):
    def render(self, cameras: Cameras) -> Render: ...

    def turntable(self, frames: int, size: int, elevation_degrees: float = 20.0) -> Cameras: ...

    def still(self, size: int, elevation_degrees: float = 20.0, azimuth_degrees: float = 30.0) -> Cameras: ...

    def diagonal(self) -> float: ...


def asset_kind(path: Path) -> str:
    """'mesh' or 'splat' (a 3DGS PLY, compressed PLY or .spz: splat.formats.splat_format decides)."""
    if not path.is_file():
        raise UserError(f"asset not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SPLAT_SUFFIXES and splat_format(path):
        return "splat"
    if suffix in MESH_SUFFIXES:
        return "mesh"
    raise UserError(f"cannot render '{path.suffix or path.name}' files; use a mesh ({', '.join(MESH_SUFFIXES)}) "
                    "or a Gaussian splat (.ply, .compressed.ply, .spz)")


def _load_mesh(path: Path, shading: str, device: torch.device, texture: Path | None = None) -> Renderable:
    from nst3d.backends.mesh.load import load_mesh
    from nst3d.backends.mesh.render import MeshRenderer

    return MeshRenderer(load_mesh(path, texture=texture), shading=shading, device=device)


class _Splat:
    """Adapter over the splat backend's own scene loading, framing and rendering (the scene on `device`)."""

    def __init__(self, path: Path, device: torch.device):
        from nst3d.backends.splat.backend import SplatScene
        from nst3d.backends.splat.formats import read_any_splat

        self.scene = SplatScene.from_ply(read_any_splat(path)).to(device)

    def render(self, cameras: Cameras) -> Render:
        from nst3d.backends.splat.backend import render_scene

        r = render_scene(self.scene, cameras)  # already blended over white by opacity: no second blend
        return Render(r.rgb, None, r.depth)

    def turntable(self, frames: int, size: int, elevation_degrees: float = 20.0) -> Cameras:
        from nst3d.backends.splat.backend import turntable_cameras

        return turntable_cameras(self.scene, frames, size, elevation_degrees=elevation_degrees)

    def still(self, size: int, elevation_degrees: float = 20.0, azimuth_degrees: float = 30.0) -> Cameras:
        from nst3d.backends.splat.backend import still_camera

        return still_camera(self.scene, size, elevation_degrees, azimuth_degrees)

    def diagonal(self) -> float:
        return bounding_diagonal(self.scene.means.detach().cpu())


LOADERS: dict[str, Callable[[Path, str, torch.device, Path | None], Renderable]] = {
    "mesh": _load_mesh,
    "splat": lambda path, shading, device, texture: _Splat(path, device),
}


def load_renderable(path: str | Path, shading: str = "lambert", device: torch.device | str = "cpu",
                    texture: Path | None = None) -> Renderable:
    """The Renderable for an asset file (see LOADERS), working on `device`; texture: as `nst3d mesh --texture`."""
    path = Path(path)
    return LOADERS[asset_kind(path)](path, shading, torch.device(device), texture)


def close_up_camera(asset: Renderable, still: Cameras, fraction: float) -> Cameras:
    """The still [1] magnified (scales.zoomed) onto the covered pixel nearest its centre, so that the view's
    height covers `fraction` of the asset's bounding diagonal at that pixel's depth."""
    probe = asset.render(still)
    if probe.depth is None:
        raise UserError("this asset renders no depth; a close-up needs one")
    depth = probe.depth[0, 0]
    covered = torch.nonzero(depth > 0)
    if covered.numel() == 0:
        raise UserError("the asset is not in view; try another --azimuth or --elevation")
    centre = torch.tensor([still.height / 2, still.width / 2])
    row, col = covered[((covered + 0.5) - centre).norm(dim=1).argmin()].tolist()
    seen = float(depth[row, col]) * still.height / float(still.K[0, 1, 1])  # the still's height at that depth
    factor = max(1.0, seen / (fraction * asset.diagonal()))
    return zoomed(still, factor, torch.tensor([[col + 0.5, row + 0.5]]))


def render_turntable(asset: Renderable, path: Path, frames: int = 48, size: int = 384, elevation: float = 20.0,
                     fps: int = 20, on_event: EventSink = ignore, batch: int = 4) -> Path:
    """Render `frames` views around the asset and write them as a GIF/MP4."""
    cameras = asset.turntable(frames, size, elevation)
    images = []
    for start in range(0, frames, batch):
        images.append(composite(asset.render(cameras[list(range(start, min(start + batch, frames)))])))
        on_event({"event": "progress", "stage": "rendering", "step": min(start + batch, frames), "total": frames,
                  "unit": "frame"})
    return write_turntable(torch.cat(images), path, fps)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render a mesh or splat as a turntable (GIF/MP4) or a still",
                       description="`nst3d render ASSET -o out.gif|out.mp4|out.png`: render a mesh or a Gaussian "
                                   "splat, e.g. a stylized result, as a turntable (an orbit at one distance) or a "
                                   "single view framed on the asset.")
    p.add_argument("asset", type=Path, help="mesh (.glb, .gltf, .obj, .ply, .stl) or 3DGS .ply")
    p.add_argument("-o", "--output", type=Path, required=True, help="out.gif / out.mp4 (turntable) or out.png")
    p.add_argument("--turntable", action="store_true", help="an orbit of frames (implied by .gif/.mp4)")
    p.add_argument("--frames", type=int, default=48, help="turntable frames (default 48)")
    p.add_argument("--fps", type=int, default=20, help="turntable frame rate (default 20)")
    p.add_argument("--size", type=int, default=384, help="image size in px (default 384)")
    p.add_argument("--elevation", type=float, default=20.0, help="camera elevation in degrees (default 20)")
    p.add_argument("--azimuth", type=float, default=30.0, help="still: camera azimuth in degrees (default 30)")
    p.add_argument("--texture", type=Path, metavar="IMAGE",
                   help="meshes: texture for triangles that have UVs but no texture (e.g. an OBJ without its .mtl)")
    p.add_argument("--close-up", type=float, metavar="F",
                   help="still: zoom onto the surface at the view's centre until the image height covers F x the "
                        "bounding diagonal (the reports' close-ups: 0.2)")
    p.add_argument("--shading", choices=("lambert", "none"), default="lambert",
                   help="meshes: Lambert shading from a fixed light, or the plain base colour")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to render: auto takes a CUDA GPU when there is one")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    suffix = args.output.suffix.lower()
    animated = suffix in TURNTABLE_SUFFIXES
    if args.turntable and not animated:
        raise UserError(f"--turntable writes .gif or .mp4, not '{args.output.suffix}'")
    check_output(args.output, [args.asset], TURNTABLE_SUFFIXES + STILL_SUFFIXES)
    if args.close_up is not None and (animated or not 0 < args.close_up <= 1):
        raise UserError("--close-up F makes a still (.png) and needs 0 < F <= 1, e.g. 0.2")
    for option, value, low, high in (("--size", args.size, 16, 4096), ("--frames", args.frames, 1, 1000),
                                     ("--fps", args.fps, 1, 120), ("--elevation", args.elevation, -90, 90)):
        if not low <= value <= high:
            raise UserError(f"{option} must be {low}..{high}, got {value:g}")
    from nst3d.options import resolve_device

    asset = load_renderable(args.asset, args.shading, resolve_device(args.device), args.texture)
    if animated:
        render_turntable(asset, args.output, args.frames, args.size, args.elevation, args.fps,
                         ProgressBar("rendering", quiet=args.quiet))
    else:
        cameras = asset.still(args.size, args.elevation, args.azimuth)
        if args.close_up is not None:
            cameras = close_up_camera(asset, cameras, args.close_up)
        save_image(composite(asset.render(cameras))[0], args.output)
    print(f"wrote {args.output}")
    return 0
