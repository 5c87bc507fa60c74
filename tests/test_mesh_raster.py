"""The PyTorch rasterizer against open3d's ray casting (the real engine, where it imports): the same G-buffer and
UV coverage on generated meshes and the shared assets; the mesh command end to end with open3d hidden; CUDA vs
CPU."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nst3d.backends.mesh.asset import WorldMesh
from nst3d.backends.mesh.gbuffer import GBuffer, Rasterizer
from nst3d.backends.mesh.raster import choose_engine, open3d_available, rasterize, rasterize_uv
from nst3d.backends.mesh.uv import vertex_normals
from nst3d.cameras import Cameras, cameras_around, fibonacci_directions, look_at
from tests.conftest import REPO, SHARED
from tests.mesh_data import icosphere, textured_quad_glb, two_object_glb

MESHES = SHARED / "assets" / "meshes"
SHARED_MESHES = ["spot/spot_triangulated.obj", "bunny.ply", "Fox.glb", "scenes/ShapeCollection.glb"]
needs_open3d = pytest.mark.skipif(not open3d_available(), reason="open3d is not installed")


def world_mesh(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None) -> WorldMesh:
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    uv = np.zeros((len(vertices), 2)) if uv is None else uv
    return WorldMesh(vertices, faces, uv, vertex_normals(vertices, faces), np.zeros(len(faces), dtype=np.int64))


def bumpy_sphere(subdivisions: int, seed: int = 0) -> WorldMesh:
    """A rough icosphere (depth order matters: bumps hide one another)."""
    sphere = icosphere(subdivisions)
    rng = np.random.default_rng(seed)
    vertices = np.asarray(sphere.vertices) * (1 + 0.1 * rng.standard_normal((len(sphere.vertices), 1)))
    return world_mesh(vertices, np.asarray(sphere.faces), (np.asarray(sphere.vertices)[:, :2] + 1) / 2)


def views_around(world: WorldMesh, count: int, size: int, distance: float = 2.2) -> Cameras:
    low, high = world.vertices.min(0), world.vertices.max(0)
    center = torch.tensor((low + high) / 2, dtype=torch.float32)
    radius = float(np.linalg.norm(high - low)) / 2
    return cameras_around(center, distance * radius, fibonacci_directions(count), size, size)


def compare(world: WorldMesh, cameras: Cameras, supersample: int = 1, reference: str = "open3d",
            device: str = "cpu") -> tuple[GBuffer, GBuffer]:
    """(torch G-buffer on `device`, the reference engine's on the CPU) at the supersampled resolution, checked;
    the base-resolution buffers (one covered sub-sample per pixel) are checked for their triangle and coverage."""
    ref_base, ref_fine = Rasterizer(world, engine=reference).rasterize(cameras, supersample)
    base, fine = Rasterizer(world, device=device, engine="torch").rasterize(cameras, supersample)
    assert base.face.device.type == torch.device(device).type
    diagonal = float(np.linalg.norm(np.ptp(world.vertices, axis=0)))
    if supersample == 1:
        assert_same_gbuffer(base.to("cpu"), ref_base, diagonal)
        return base, ref_base
    assert_same_gbuffer(fine.to("cpu"), ref_fine, diagonal)
    base = base.to("cpu")
    assert float(((base.face == ref_base.face) | (ref_base.face < 0)).float().mean()) >= 0.999
    assert float((base.coverage - ref_base.coverage).abs().mean()) <= 1e-3
    return fine, ref_fine


def assert_same_gbuffer(mine: GBuffer, ref: GBuffer, diagonal: float) -> None:
    """The same triangle at >= 99.9% of the pixels either covers, depth within 1e-4 of the bounding diagonal and
    barycentrics within 1e-3 where the triangle is the same; the shading data follows."""
    covered = (mine.face >= 0) | (ref.face >= 0)
    same = (mine.face == ref.face) & (ref.face >= 0)
    assert int(covered.sum()) > 100, "the views see the mesh"
    assert float(same.sum()) / float(covered.sum()) >= 0.999
    assert float((mine.depth - ref.depth)[same].abs().max()) <= 1e-4 * diagonal
    # open3d (Embree) works in float32 too: on small, far triangles its barycentrics are off by up to 2e-3
    # (ShapeCollection, checked against float64), ours by half that; the 99.9th percentile is within 1e-4.
    bary_error = (mine.bary - ref.bary)[same].abs().amax(-1)
    assert float(bary_error.max()) <= 5e-3 and float(bary_error.quantile(0.999)) <= 1e-3
    assert torch.equal(mine.slot[same], ref.slot[same])
    assert float((mine.uv - ref.uv)[same].abs().amax(-1).quantile(0.999)) <= 1e-3
    assert float((mine.lod - ref.lod)[same].abs().quantile(0.999)) <= 1e-3
    if ref.normal is not None:  # flipped to face the camera: at grazing angles the flip may differ
        apart = (mine.normal - ref.normal)[same].abs().amax(-1)
        up_to_sign = torch.minimum(apart, (mine.normal + ref.normal)[same].abs().amax(-1))
        assert float(up_to_sign.max()) <= 2e-2 and float(up_to_sign.quantile(0.999)) <= 1e-3  # as bary
        assert float((apart > 1e-3).float().mean()) <= 1e-3
    assert float((mine.coverage - ref.coverage).abs().mean()) <= 1e-3


@needs_open3d
@pytest.mark.parametrize("supersample", [1, 2])
def test_gbuffer_matches_open3d_on_a_rough_sphere(supersample):
    world = bumpy_sphere(4)  # 5120 triangles
    compare(world, views_around(world, 3, 96), supersample)


@needs_open3d
def test_gbuffer_matches_open3d_inside_a_box_and_on_both_sides_of_an_open_quad():
    """Triangles crossing the camera plane (the camera inside a cube: every ray hits, in front only) and
    back faces of an open surface (ray casting sees both sides)."""
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    inside = Cameras(look_at(torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([1.0, 0.4, 0.5])),
                     cameras_around(torch.zeros(3), 1.0, torch.tensor([[0.0, 0.0, 1.0]]), 64, 64).K, 64, 64)
    mine, ref = compare(world_mesh(box.vertices, box.faces), inside)
    assert bool((mine.face >= 0).all()) and bool((ref.face >= 0).all())
    quad = world_mesh(np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]]), np.array([[0, 1, 2], [0, 2, 3]]))
    directions = torch.tensor([[0.2, 0.1, 1.0], [-0.1, 0.3, -1.0]])  # front, then behind
    both = cameras_around(torch.zeros(3), 4.0, torch.nn.functional.normalize(directions, dim=-1), 48, 48)
    mine, _ = compare(quad, both)
    assert bool((mine.face[1] >= 0).any())


@needs_open3d
@pytest.mark.parametrize("name", SHARED_MESHES)
def test_gbuffer_matches_open3d_on_the_shared_meshes(name):
    import trimesh

    path = MESHES / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    mesh = trimesh.load(path, force="mesh")
    compare(world_mesh(mesh.vertices, mesh.faces), views_around(world_mesh(mesh.vertices, mesh.faces), 4, 128), 2)


def test_a_pixel_centre_on_a_shared_edge_belongs_to_one_triangle():
    """A grid of quads whose edges (and diagonals) run through pixel centres: every centre counted once."""
    n = 8
    ys, xs = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    vertices = np.stack([xs * 4 + 0.5, ys * 4 + 0.5, np.ones_like(xs)], -1).reshape(-1, 3).astype(np.float32)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    a = (i * (n + 1) + j).reshape(-1)
    faces = np.concatenate([np.stack([a, a + 1, a + n + 2], 1), np.stack([a, a + n + 2, a + n + 1], 1)])
    hits = rasterize(torch.from_numpy(vertices), torch.from_numpy(faces), torch.eye(3), 40, 40, count=True)
    inner = hits.count.view(40, 40)[:32, :32]  # centres 0.5 .. 31.5, all inside the grid's closed area
    assert torch.equal(inner, torch.ones_like(inner))
    assert int(hits.count.view(40, 40)[33:].sum()) == 0


def random_layout(cells: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A UV layout of jittered grid triangles (non-overlapping), [n, 2] image convention, faces [f, 3]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.meshgrid(np.linspace(0.02, 0.98, cells + 1), np.linspace(0.02, 0.98, cells + 1), indexing="ij")
    uv = np.stack([xs, ys], -1).reshape(-1, 2)
    uv = uv + rng.uniform(-0.3, 0.3, uv.shape) * 0.96 / cells
    i, j = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    a = (i * (cells + 1) + j).reshape(-1)
    return uv, np.concatenate([np.stack([a, a + 1, a + cells + 2], 1), np.stack([a, a + cells + 2, a + cells + 1], 1)])


def assert_same_uv_coverage(uv: np.ndarray, faces: np.ndarray, size: int, overlaps: bool = False) -> None:
    """The same triangle at >= 99.9% of the texels one triangle covers, the same coverage, close barycentrics,
    and (without overlaps: open3d's count_intersections misses some coplanar hits) the same hit counts."""
    face, bary = rasterize_uv(uv, faces, size, size, engine="torch")
    ref_face, ref_bary = rasterize_uv(uv, faces, size, size, engine="open3d")
    hits, _ = rasterize_uv(uv, faces, size, size, count=True, engine="torch")
    ref_hits, _ = rasterize_uv(uv, faces, size, size, count=True, engine="open3d")
    assert ((face >= 0) | (ref_face >= 0)).sum() > 0.2 * size * size
    single = (hits == 1) & (ref_hits == 1)  # where layouts overlap, which triangle a ray reports is arbitrary
    assert (face[single] == ref_face[single]).mean() >= 0.999
    assert ((face >= 0) == (ref_face >= 0)).mean() >= 0.999
    assert overlaps or (hits == ref_hits).mean() >= 0.999
    same = (face == ref_face) & (face >= 0)
    assert np.abs(bary - ref_bary)[same].max() <= 1e-3


def brute_force_counts(uv: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """[size, size] how many triangles of the layout (wrapped into [0, 1]) cover each texel centre, in float64."""
    centres = (np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="xy"), -1).reshape(-1, 2) + 0.5)
    counts = np.zeros(len(centres), dtype=np.int64)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            corners = (uv[faces] + [dx, dy]) * size  # [f, 3, 2]
            a, b, c = corners[:, 0, None], corners[:, 1, None], corners[:, 2, None]  # [f, 1, 2]

            def side(p, q):
                return (q[..., 0] - p[..., 0]) * (centres[None, :, 1] - p[..., 1]) - \
                       (q[..., 1] - p[..., 1]) * (centres[None, :, 0] - p[..., 0])

            s0, s1, s2 = side(b, c), side(c, a), side(a, b)
            counts += (((s0 > 0) & (s1 > 0) & (s2 > 0)) | ((s0 < 0) & (s1 < 0) & (s2 < 0))).sum(0)
    return counts.reshape(size, size)


def test_uv_hit_counts_of_an_overlapping_wrapped_layout():
    """Counts decide whether a layout overlaps too much (uv_layout_ok): checked against a float64 brute force on
    a layout that strays outside [0, 1], so its wrapped copies overlap."""
    uv, faces = random_layout(8)
    uv = uv * 1.3 - 0.15
    hits, _ = rasterize_uv(uv, faces, 64, 64, count=True, engine="torch")
    expected = brute_force_counts(uv, faces, 64)
    assert (hits > 1).mean() > 0.2
    assert (hits == expected).mean() >= 0.999


@needs_open3d
def test_uv_coverage_matches_open3d():
    uv, faces = random_layout(40)
    assert_same_uv_coverage(uv, faces, 256)
    # Straying outside [0, 1]: the layout is wrapped (9 shifted copies).
    assert_same_uv_coverage(uv * 1.2 - 0.1, faces, 128, overlaps=True)


@needs_open3d
def test_uv_coverage_matches_open3d_on_spot():
    import trimesh

    path = MESHES / "spot" / "spot_triangulated.obj"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    mesh = trimesh.load(path, force="mesh", process=False)
    uv = np.asarray(mesh.visual.uv, dtype=np.float64) * [1, -1] + [0, 1]  # OBJ's v up -> image rows
    assert_same_uv_coverage(uv, np.asarray(mesh.faces), 512)


def test_engine_choice():
    assert choose_engine("cuda") == "torch"
    assert choose_engine("cpu") == ("open3d" if open3d_available() else "torch")
    assert Rasterizer(bumpy_sphere(1), engine="torch").engine == "torch"
    with pytest.raises(ValueError, match="unknown rasterizer engine"):
        Rasterizer(bumpy_sphere(1), engine="embree")


NO_OPEN3D = '''import sys


class HideOpen3d:
    """`import open3d` fails, as on a machine without it."""

    def find_spec(self, name, path=None, target=None):
        if name == "open3d" or name.startswith("open3d."):
            raise ImportError("open3d is hidden by this test")
        return None


sys.meta_path.insert(0, HideOpen3d())
'''


def run_without_open3d(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    hook = tmp_path / "hide_open3d"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(NO_OPEN3D)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path, check=False)


@pytest.mark.slow
def test_the_mesh_command_runs_without_open3d(tmp_path, random_weights_file):
    """`nst3d mesh` and `nst3d render` end to end where `import open3d` fails: the G-buffer and the UV coverage
    of a generated atlas (the untextured ball) come from the PyTorch rasterizer."""
    check = run_without_open3d(tmp_path, "-c", "from nst3d.backends.mesh.raster import choose_engine;"
                               "import sys; print(choose_engine('cpu'), 'open3d' in sys.modules)")
    assert check.stdout.split() == ["torch", "False"], check.stderr
    style = tmp_path / "style.png"
    from nst3d.files import save_image

    save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)), style)
    source = two_object_glb(tmp_path / "two.glb")
    run = run_without_open3d(tmp_path, "-m", "nst3d", "mesh", str(source), "--style", str(style), "-o",
                             str(tmp_path / "out"), "--steps", "2", "--size", "32", "--views", "2", "--texture-size",
                             "32", "--weights", str(random_weights_file), "--style-layers", "relu1_1,relu2_1",
                             "--content-layer", "relu2_1", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "two_styled.glb").is_file() and (tmp_path / "out" / "report.json").is_file()
    quad = textured_quad_glb(tmp_path / "quad.glb")
    still = run_without_open3d(tmp_path, "-m", "nst3d", "render", str(quad), "-o", str(tmp_path / "still.png"),
                               "--size", "32", "--quiet")
    assert still.returncode == 0, still.stderr[-3000:]
    assert (tmp_path / "still.png").is_file()


@pytest.mark.gpu
def test_cuda_rasterizer_matches_the_cpu_one_and_open3d():
    world = bumpy_sphere(5)  # 20480 triangles
    cameras = views_around(world, 3, 256)
    cuda, _ = compare(world, cameras, 2, reference="torch", device="cuda")
    assert cuda.depth.is_cuda and cuda.uv.is_cuda
    if open3d_available():
        compare(world, cameras, 2, device="cuda")
    uv, faces = random_layout(60)
    vertices = torch.from_numpy(np.concatenate([uv * 512, np.ones((len(uv), 1))], 1)).float()
    on_cpu = rasterize(vertices, torch.from_numpy(faces), torch.eye(3), 512, 512, count=True)
    on_cuda = rasterize(vertices.cuda(), torch.from_numpy(faces).cuda(), torch.eye(3), 512, 512, count=True)
    assert (on_cuda.face.cpu() == on_cpu.face).float().mean() >= 0.999
    assert (on_cuda.count.cpu() == on_cpu.count).float().mean() >= 0.999
    assert math.isclose(float(on_cuda.count.sum()), float(on_cpu.count.sum()), rel_tol=1e-3)
