"""The stroke scale is a length in world units (issue 21's dot test): a style of dark dots on a light ground,
stylized onto a scene of two spheres of radius 1 and 0.25, gives dots of the same diameter (in world units) on
both spheres, and halving --stroke-scale halves them. Real VGG-19 weights (../shared/weights), real ray casting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nst3d.backends.mesh.load import load_mesh
from nst3d.backends.mesh.render import MeshRenderer
from nst3d.files import save_image
from nst3d.options import StyleOptions
from nst3d.pipelines.mesh import stylize_mesh_file
from nst3d.scales import surface_cameras
from tests.mesh_data import write_glb

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "vgg19-caffe-conv1_1-conv3_4.pth"
SMALL_AT = torch.tensor([1.75, 0.0, 0.0])
SIZE, STEPS = 64, 150


def dots_style(path: Path, side: int = 256, diameter: int = 24, spacing: int = 48) -> Path:
    """Dark dots (diameter px) on a light ground, on a jittered grid; seeded."""
    rng = np.random.default_rng(0)
    image = torch.full((3, side, side), 0.92)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    for cy in range(spacing // 2, side, spacing):
        for cx in range(spacing // 2, side, spacing):
            jy, jx = rng.uniform(-8, 8, 2)
            image[:, (yy - cy - jy) ** 2 + (xx - cx - jx) ** 2 <= (diameter / 2) ** 2] = 0.1
    save_image(image, path)
    return path


def two_spheres(path: Path) -> Path:
    import trimesh

    big = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    small = trimesh.creation.icosphere(subdivisions=3, radius=0.25)
    small.apply_translation(SMALL_AT.numpy())
    return write_glb(path, [{"name": "Big", "positions": big.vertices, "faces": big.faces, "uv": None},
                            {"name": "Small", "positions": small.vertices, "faces": small.faces, "uv": None}])


def dot_diameters(asset: Path, view_height: float, size: int = 256) -> dict[str, list[float]]:
    """Per sphere, the equivalent diameters (world units) of the dark blobs seen in views of view_height along
    six directions (blobs cut by the image border or the silhouette left out; dark: below the midpoint of the
    view's 5th and 95th luminance percentiles)."""
    from scipy import ndimage

    renderer = MeshRenderer(load_mesh(asset), shading="none")
    directions = torch.nn.functional.normalize(torch.tensor(
        [[0, 0, 1.0], [0, 0, -1], [0, 1, 0], [-1, 0.3, 0.5], [0.3, 0.5, -1], [0.5, -0.5, 1]]), dim=1)
    out = {}
    for name, centre, radius in (("big", torch.zeros(3), 1.0), ("small", SMALL_AT, 0.25)):
        render = renderer.render(surface_cameras(centre + radius * directions, directions, view_height, size, size))
        diameters = []
        for rgb, mask in zip(render.rgb, render.mask, strict=True):
            luminance, covered = rgb.mean(0).numpy(), mask[0].numpy() > 0.99
            low, high = np.percentile(luminance[covered], [5, 95])
            labels, count = ndimage.label((luminance < (low + high) / 2) & covered)
            for index in range(1, count + 1):
                blob = labels == index
                rows, cols = np.nonzero(blob)
                if blob.sum() < 4 or min(rows.min(), cols.min()) == 0 or max(rows.max(), cols.max()) == size - 1:
                    continue
                if ndimage.binary_dilation(blob, iterations=2)[~covered].any():
                    continue
                diameters.append(2 * float(np.sqrt(blob.sum() / np.pi)) * view_height / size)
        out[name] = diameters
    return out


@pytest.mark.slow
@pytest.mark.skipif(not WEIGHTS.is_file(), reason="needs the real VGG-19 weights in ../shared/weights")
def test_dots_have_one_size_in_world_units_and_follow_the_stroke_scale(tmp_path):
    style, scene = dots_style(tmp_path / "dots.png"), two_spheres(tmp_path / "spheres.glb")
    medians = {}
    for stroke in (0.8, 0.4):
        opts = StyleOptions(styles=[style], size=SIZE, steps=STEPS, weights=WEIGHTS, stroke_scale=stroke)
        report = stylize_mesh_file(scene, tmp_path / f"s{stroke}", opts, held_out=1)
        assert report.details["stroke_scale"] == stroke
        found = dot_diameters(tmp_path / f"s{stroke}" / "spheres_styled.glb", view_height=1.0)
        assert all(len(d) >= 5 for d in found.values()), found
        medians[stroke] = {name: float(np.median(d)) for name, d in found.items()}
    for stroke, size in medians.items():
        assert size["small"] == pytest.approx(size["big"], rel=0.25), (stroke, medians)
    for name in ("big", "small"):
        assert medians[0.4][name] == pytest.approx(medians[0.8][name] / 2, rel=0.25), medians
