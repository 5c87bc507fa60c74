"""Capture cameras from every format users bring (nerfstudio transforms.json, 3DGS cameras.json, COLMAP text and
binary): one known ring of cameras is written in each format by writers here that follow the formats' own
documentation, read back, and must render the same views of a splat; bad files are one-line errors, exit 2."""

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from nst3d.backends.splat.capture import cameras_beside, capture_cameras
from nst3d.backends.splat.ply import save_gaussians
from nst3d.backends.splat.scene import SplatScene, render_scene
from nst3d.cameras import look_at
from nst3d.cli import main
from nst3d.errors import UserError

W, H, FX, FY = 64, 48, 58.0, 52.0


def ring(n: int = 6) -> torch.Tensor:
    """World-to-camera [n, 4, 4] (OpenCV) of cameras on a tilted ring, all looking at the origin."""
    a = torch.arange(n, dtype=torch.float32) * 2 * math.pi / n
    eyes = torch.stack([3 * torch.sin(a), 0.8 + 0.3 * torch.cos(2 * a), 3 * torch.cos(a)], dim=-1)
    return look_at(eyes, torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))


def blob_scene(n: int = 200) -> SplatScene:
    """Gaussians on an ellipsoid coloured by direction, so every view looks different."""
    g = torch.Generator().manual_seed(3)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    colour = 0.5 + 0.45 * d
    return SplatScene(d * torch.tensor([1.0, 0.7, 0.8]), torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
                      torch.full((n, 3), 0.12), torch.full((n,), 0.9), (colour - 0.5) / 0.28209479177387814,
                      torch.zeros(n, 0, 3), 0)


# ----------------------------------------------------------------- writers, from the formats' documentation

def write_transforms(path: Path, w2c: torch.Tensor) -> None:
    """nerfstudio: camera-to-world per frame with OpenGL camera axes (x right, y up, z back)."""
    c2w_gl = torch.linalg.inv(w2c.double()) @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
    frames = [{"file_path": f"images/{i:02d}.png", "transform_matrix": m.tolist()} for i, m in enumerate(c2w_gl)]
    path.write_text(json.dumps({"fl_x": FX, "fl_y": FY, "cx": W / 2, "cy": H / 2, "w": W, "h": H,
                                "frames": frames}))


def write_graphdeco(path: Path, w2c: torch.Tensor) -> None:
    """3DGS camera_to_JSON: position = camera centre, rotation = camera-to-world rotation (OpenCV axes)."""
    c2w = torch.linalg.inv(w2c.double())
    path.write_text(json.dumps([{"id": i, "img_name": f"{i:02d}", "width": W, "height": H,
                                 "position": m[:3, 3].tolist(), "rotation": m[:3, :3].tolist(), "fx": FX, "fy": FY}
                                for i, m in enumerate(c2w)]))


def colmap_pose(m: torch.Tensor) -> tuple[list[float], list[float]]:
    """(qvec w, x, y, z; tvec) of a world-to-camera matrix, via scipy's quaternion (x, y, z, w)."""
    x, y, z, w = Rotation.from_matrix(m[:3, :3].double().numpy()).as_quat()
    return [w, x, y, z], m[:3, 3].double().tolist()


def write_colmap_text(folder: Path, w2c: torch.Tensor, model: str = "PINHOLE") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text(f"# Camera list\n1 {model} {W} {H} {FX} {FY} {W / 2} {H / 2}\n")
    lines = ["# Image list with two lines of data per image:"]
    for i, m in enumerate(w2c):
        q, t = colmap_pose(m)
        lines += [f"{i + 1} {' '.join(repr(float(v)) for v in q)} {' '.join(repr(float(v)) for v in t)} 1 {i:02d}.png",
                  "10.5 20.5 -1 30.0 12.0 7" if i % 2 else ""]
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    (folder / "points3D.txt").write_text("")


def write_colmap_binary(folder: Path, w2c: torch.Tensor, model_id: int = 4) -> None:
    """cameras.bin / images.bin as COLMAP's read_write_model.py documents them; model 4 = OPENCV (zero
    distortion here)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = {1: [FX, FY, W / 2, H / 2], 4: [FX, FY, W / 2, H / 2, 0, 0, 0, 0],
              5: [FX, FY, W / 2, H / 2, 0, 0, 0, 0]}[model_id]
    (folder / "cameras.bin").write_bytes(struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, model_id, W, H)
                                         + struct.pack(f"<{len(params)}d", *params))
    data = struct.pack("<Q", len(w2c))
    for i, m in enumerate(w2c):
        q, t = colmap_pose(m)
        points = [(1.5, 2.5, -1), (3.0, 4.0, 17)][: i % 3]
        data += struct.pack("<i7di", i + 1, *q, *t, 1) + f"{i:02d}.png".encode() + b"\0"
        data += struct.pack("<Q", len(points)) + b"".join(struct.pack("<ddq", *p) for p in points)
    (folder / "images.bin").write_bytes(data)


@pytest.fixture(scope="module")
def truth():
    w2c = ring()
    K = torch.tensor([[FX, 0, W / 2], [0, FY, H / 2], [0, 0, 1.0]]).repeat(len(w2c), 1, 1)
    from nst3d.cameras import Cameras

    return Cameras(w2c, K, W, H)


@pytest.fixture(scope="module")
def truth_render(truth):
    """The scene through the true cameras at half size (32 x 24 pixels)."""
    K = truth.K.clone()
    K[:, :2] /= 2
    from nst3d.cameras import Cameras

    return render_scene(blob_scene(), Cameras(truth.world_to_cam, K, W // 2, H // 2))


@pytest.fixture(scope="module")
def captures(tmp_path_factory, truth):
    root = tmp_path_factory.mktemp("captures")
    write_transforms(root / "transforms.json", truth.world_to_cam)
    (root / "gs").mkdir()
    write_graphdeco(root / "gs" / "cameras.json", truth.world_to_cam)
    write_colmap_text(root / "colmap_text" / "sparse" / "0", truth.world_to_cam)
    write_colmap_binary(root / "colmap_bin" / "sparse" / "0", truth.world_to_cam)
    return root


@pytest.mark.parametrize("source", ["transforms.json", "gs/cameras.json", "gs", "colmap_text",
                                    "colmap_text/sparse/0", "colmap_bin/sparse/0", "colmap_bin/sparse/0/images.bin"])
def test_every_format_gives_the_same_cameras_and_views(captures, truth, truth_render, source):
    events: list[dict] = []
    cams = capture_cameras(captures / source, W, on_event=events.append)
    assert (cams.width, cams.height) == (W, H) and len(cams) == len(truth)
    assert torch.allclose(cams.world_to_cam, truth.world_to_cam, atol=1e-5)
    assert torch.allclose(cams.K, truth.K, atol=1e-5)
    warnings = [e["text"] for e in events if e["event"] == "warning"]
    if "bin" in source:  # written as OPENCV: its (zero) distortion is ignored, and the user is told
        assert len(warnings) == 1 and "OPENCV" in warnings[0] and "distortion is ignored" in warnings[0]
    else:
        assert warnings == []
    got = render_scene(blob_scene(), capture_cameras(captures / source, W // 2))
    assert float(truth_render.mask.mean()) > 0.05  # the views see the object
    assert (got.rgb - truth_render.rgb).abs().max() < 1e-3


def test_sizes_rescale_to_the_working_size(captures, truth):
    cams = capture_cameras(captures / "colmap_text", 128)
    assert (cams.width, cams.height) == (128, 96)
    assert torch.allclose(cams.K[:, 0, 0], torch.full((6,), FX * 2))


def test_3dgs_output_folder_cameras_are_found(tmp_path):
    output = tmp_path / "output" / "abc123"
    splat = output / "point_cloud" / "iteration_30000" / "point_cloud.ply"
    splat.parent.mkdir(parents=True)
    splat.write_bytes(b"ply\n")
    assert cameras_beside(splat) is None
    write_graphdeco(output / "cameras.json", ring())
    assert cameras_beside(splat) == (output / "cameras.json").resolve()
    assert cameras_beside(tmp_path / "scene.ply") is None


def bad_models(root: Path, truth) -> dict[str, tuple[Path, str]]:
    w2c = truth.world_to_cam
    write_colmap_binary(root / "truncated", w2c)
    data = (root / "truncated" / "images.bin").read_bytes()
    (root / "truncated" / "images.bin").write_bytes(data[: len(data) // 2])
    write_colmap_text(root / "unknown", w2c, model="WEIRD_LENS")
    write_colmap_binary(root / "fisheye", w2c, model_id=5)
    write_colmap_binary(root / "no_images", w2c)
    (root / "no_images" / "images.bin").unlink()
    (root / "empty").mkdir()
    (root / "broken.json").write_text("[{\"id\": 0, \"width\": 64}]")
    return {"truncated": (root / "truncated", "truncated"), "unknown": (root / "unknown", "WEIRD_LENS"),
            "fisheye": (root / "fisheye", "fisheye"), "no_images": (root / "no_images", "no images.bin"),
            "empty": (root / "empty", "no cameras"), "broken": (root / "broken.json", "lacks")}


def test_bad_camera_files_are_one_line_errors(tmp_path, truth):
    for path, words in bad_models(tmp_path, truth).values():
        with pytest.raises(UserError) as exc:
            capture_cameras(path, W)
        assert "\n" not in str(exc.value) and words.lower() in str(exc.value).lower(), str(exc.value)


def test_cli_refuses_bad_cameras_before_writing_anything(tmp_path, truth, capsys, random_weights_file):
    scene = blob_scene(200)
    save_gaussians(tmp_path / "scene.ply", scene.means, scene.scales.log(), scene.quats,
                   torch.logit(scene.opacities), scene.sh_dc)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "style.png")
    models = bad_models(tmp_path / "bad", truth)
    for name in ("truncated", "unknown", "no_images"):
        out = tmp_path / "out" / f"{name}.ply"
        code = main(["splat", str(tmp_path / "scene.ply"), "--style", str(tmp_path / "style.png"), "-o", str(out),
                     "--cameras", str(models[name][0]), "--weights", str(random_weights_file), "--steps", "1",
                     "--size", "32", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("nst3d: error:") and "\n" not in err, err
        assert not out.parent.exists() or not any(out.parent.iterdir())


def test_cli_uses_a_3dgs_outputs_own_cameras_and_says_so(tmp_path, capsys, random_weights_file):
    output = tmp_path / "output"
    splat = output / "point_cloud" / "iteration_7000" / "point_cloud.ply"
    splat.parent.mkdir(parents=True)
    scene = blob_scene(200)
    save_gaussians(splat, scene.means, scene.scales.log(), scene.quats, torch.logit(scene.opacities), scene.sh_dc)
    write_graphdeco(output / "cameras.json", ring())
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "style.png")
    out = tmp_path / "styled.ply"
    code = main(["splat", str(splat), "--style", str(tmp_path / "style.png"), "-o", str(out), "--steps", "1",
                 "--size", "32", "--pool", "2", "--held-out", "1", "--weights", str(random_weights_file)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"using the 3DGS training cameras in {(output / 'cameras.json').resolve()}" in err
    report = json.loads(out.with_suffix(".json").read_text())
    details = report["details"]
    assert details["cameras"] == "capture" and details["camera_file"] == str((output / "cameras.json").resolve())
