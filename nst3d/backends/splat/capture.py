"""A capture's cameras from the files the usual tools write, as nst3d's one convention (cameras.Cameras: OpenCV
world-to-camera + K, all views one image size whose longer side is `size` pixels).

- nerfstudio / Blender (NeRF-synthetic) transforms.json: camera-to-world 4x4 per frame, OpenGL axes (x right, y up,
  z back); focal fl_x/fl_y or camera_angle_x; cx, cy, w, h.
- graphdeco 3DGS cameras.json (beside point_cloud/ in a training output; utils/camera_utils.camera_to_JSON): a list
  of {id, img_name, width, height, position, rotation, fx, fy}: position is the camera centre and rotation the
  camera-to-world rotation, OpenCV axes; the principal point is the image centre.
- COLMAP sparse model (cameras.bin + images.bin, or cameras.txt + images.txt): per image the world-to-camera
  rotation as a quaternion qw, qx, qy, qz and translation tx, ty, tz, OpenCV axes; per camera a model and its
  parameters. Pinhole models are exact; for SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV the focal length and
  principal point are taken and the lens distortion is ignored (with a warning).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nst3d.cameras import Cameras
from nst3d.errors import UserError

# COLMAP camera models: id -> (name, number of parameters, focal/principal-point layout, has distortion)
COLMAP_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}
PERSPECTIVE = {"SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV"}
SINGLE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"}
Sink = Callable[[dict[str, Any]], None]


def capture_cameras(path: Path, size: int, transform_path: Path | None = None, on_event: Sink | None = None
                    ) -> Cameras:
    """Cameras from a transforms.json, a 3DGS cameras.json, a COLMAP model folder (sparse/0, or a project folder
    holding sparse/0) or one of its files. transform_path: nerfstudio's dataparser_transforms.json, when the splat
    was trained (and exported) in nerfstudio's normalised frame."""
    say = on_event or (lambda event: None)
    path = Path(path)
    if not path.exists():
        raise UserError(f"camera file not found: {path}")
    kind, source = camera_source(path)
    if kind == "colmap":
        c2w, K, sizes = read_colmap(source, say)
    else:
        data = read_json(source)
        if kind == "graphdeco" or isinstance(data, list):
            c2w, K, sizes = read_graphdeco(source, data)
        else:
            c2w, K, sizes = read_transforms(source, data)
    if transform_path is not None:
        c2w = apply_dataparser_transform(c2w, transform_path)
    return common_size(c2w, K, sizes, size)


def camera_source(path: Path) -> tuple[str, Path]:
    """("colmap", model folder) | ("graphdeco", cameras.json) | ("json", a .json file) for a file or a folder."""
    if path.is_file():
        if path.suffix.lower() in (".bin", ".txt") and path.stem in ("cameras", "images", "points3D"):
            return "colmap", path.parent
        return ("graphdeco" if path.name == "cameras.json" else "json"), path
    for folder in (path, path / "sparse" / "0", path / "sparse"):
        if any((folder / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return "colmap", folder
    if (path / "cameras.json").is_file():
        return "graphdeco", path / "cameras.json"
    if (path / "transforms.json").is_file():
        return "json", path / "transforms.json"
    raise UserError(f"{path}: no cameras in this folder (looked for a COLMAP model: cameras.bin/.txt here or in "
                    "sparse/0, a 3DGS cameras.json, a transforms.json); give one of those")


def cameras_beside(splat: Path) -> Path | None:
    """The 3DGS training output's cameras.json for a splat at <output>/point_cloud/iteration_N/point_cloud.ply."""
    splat = Path(splat).resolve()
    if splat.parent.name.startswith("iteration_") and splat.parent.parent.name == "point_cloud":
        candidate = splat.parent.parent.parent / "cameras.json"
        return candidate if candidate.is_file() else None
    return None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read cameras from {path}: {exc.__class__.__name__}: {exc}") from None


def common_size(c2w: torch.Tensor, K: torch.Tensor, sizes: list[tuple[float, float]], size: int) -> Cameras:
    """OpenCV c2w [V, 4, 4] + K [V, 3, 3] at each view's own image size -> Cameras at one size (the first view's
    aspect, longer side `size`), each K rescaled to it."""
    w0, h0 = sizes[0]
    scale = size / max(w0, h0)
    width, height = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    K = K.clone()
    K[:, 0] *= torch.tensor([s[0] for s in sizes], dtype=torch.float32)[:, None].reciprocal() * width
    K[:, 1] *= torch.tensor([s[1] for s in sizes], dtype=torch.float32)[:, None].reciprocal() * height
    return Cameras(torch.linalg.inv(c2w), K, width, height)


def pinhole(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def read_transforms(path: Path, data: Any) -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float]]]:
    """nerfstudio/Blender transforms.json -> (OpenCV c2w [V, 4, 4], K [V, 3, 3], image sizes)."""
    frames = data.get("frames") if isinstance(data, dict) else None
    if not frames:
        raise UserError(f"{path}: no 'frames' list; expected a nerfstudio or Blender transforms.json")
    c2w, Ks, sizes = [], [], []
    for frame in frames:
        info = {**data, **frame}
        matrix = torch.tensor(frame.get("transform_matrix", []), dtype=torch.float32)
        if matrix.shape != (4, 4):
            raise UserError(f"{path}: a frame without a 4x4 transform_matrix")
        w, h = frame_size(info, path.parent)
        if "fl_x" in info:
            fx, fy = float(info["fl_x"]), float(info.get("fl_y", info["fl_x"]))
        elif "camera_angle_x" in info:
            fx = fy = 0.5 * w / math.tan(float(info["camera_angle_x"]) / 2)
        else:
            raise UserError(f"{path}: no focal length (fl_x or camera_angle_x)")
        c2w.append(matrix)
        Ks.append(pinhole(fx, fy, float(info.get("cx", w / 2)), float(info.get("cy", h / 2))))
        sizes.append((w, h))
    gl_to_cv = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))  # OpenGL camera axes (y up, z back) -> OpenCV
    return torch.stack(c2w) @ gl_to_cv, torch.stack(Ks), sizes


def frame_size(info: dict[str, Any], folder: Path) -> tuple[float, float]:
    """A transforms.json frame's image size: w, h, else the image file's, else NeRF-synthetic's 800 x 800."""
    if "w" in info and "h" in info:
        return checked_size(info["w"], info["h"])
    image = folder / str(info.get("file_path", ""))
    for candidate in (image, image.with_name(image.name + ".png")):
        if candidate.is_file():
            from PIL import Image

            with Image.open(candidate) as img:
                return float(img.width), float(img.height)
    return 800.0, 800.0


def checked_size(w: Any, h: Any) -> tuple[float, float]:
    try:
        width, height = float(w), float(h)
    except (TypeError, ValueError):
        width = height = math.nan
    if not (width >= 1 and height >= 1 and math.isfinite(width * height)):
        raise UserError(f"the cameras' image size w x h is {w} x {h}; it must be at least 1 x 1 pixels (the size "
                        "the intrinsics fl_x, cx, ... refer to)")
    return width, height


def read_graphdeco(path: Path, data: Any) -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float]]]:
    """graphdeco 3DGS cameras.json -> (OpenCV c2w [V, 4, 4], K [V, 3, 3], image sizes)."""
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a 3DGS cameras.json, a list of {{id, width, height, position, rotation, "
                        "fx, fy}}")
    c2w, Ks, sizes = [], [], []
    for entry in data:
        try:
            rotation = torch.tensor(entry["rotation"], dtype=torch.float64)
            position = torch.tensor(entry["position"], dtype=torch.float64)
            w, h = checked_size(entry["width"], entry["height"])
            fx, fy = float(entry["fx"]), float(entry["fy"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: a camera entry lacks or mangles {exc}; expected id, width, height, position, "
                            "rotation, fx, fy as 3DGS writes them") from None
        if rotation.shape != (3, 3) or position.shape != (3,):
            raise UserError(f"{path}: a camera's rotation is not 3x3 or its position not 3 numbers")
        matrix = torch.eye(4, dtype=torch.float64)
        matrix[:3, :3], matrix[:3, 3] = rotation, position
        c2w.append(matrix.float())
        Ks.append(pinhole(fx, fy, w / 2, h / 2))
        sizes.append((w, h))
    return torch.stack(c2w), torch.stack(Ks), sizes


def read_colmap(folder: Path, say: Sink) -> tuple[torch.Tensor, torch.Tensor, list[tuple[float, float]]]:
    """A COLMAP model folder (binary preferred over text) -> (OpenCV c2w [V, 4, 4], K [V, 3, 3], image sizes),
    images in name order."""
    binary = (folder / "cameras.bin").is_file()
    ext = "bin" if binary else "txt"
    images_path = folder / f"images.{ext}"
    if not images_path.is_file():
        raise UserError(f"{folder}: COLMAP model has cameras.{ext} but no images.{ext}; give the whole sparse/0 "
                        "folder")
    try:
        cameras = colmap_cameras_bin(folder / "cameras.bin") if binary else colmap_cameras_txt(folder / "cameras.txt")
        images = colmap_images_bin(images_path) if binary else colmap_images_txt(images_path)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise UserError(f"{folder}: COLMAP {'binary' if binary else 'text'} model is truncated or malformed "
                        f"({exc.__class__.__name__}); re-export it with colmap model_converter") from None
    if not images:
        raise UserError(f"{images_path}: the COLMAP model has no registered images")
    distorted = sorted({cameras[c][0] for _, _, _, c in images if c in cameras} - {"PINHOLE", "SIMPLE_PINHOLE"})
    if distorted:
        say({"event": "warning", "text": f"{folder}: COLMAP camera model {', '.join(distorted)}: its lens distortion "
             "is ignored (focal length and principal point only); undistort the images (colmap image_undistorter) "
             "for exact views"})
    c2w, Ks, sizes = [], [], []
    for name, qvec, tvec, camera_id in sorted(images):
        if camera_id not in cameras:
            raise UserError(f"{images_path}: image {name} uses camera {camera_id}, which cameras.{ext} lacks")
        model, width, height, params = cameras[camera_id]
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3] = quaternion_to_matrix(torch.tensor(qvec, dtype=torch.float64))
        w2c[:3, 3] = torch.tensor(tvec, dtype=torch.float64)
        c2w.append(torch.linalg.inv(w2c).float())
        if model in SINGLE_FOCAL:
            Ks.append(pinhole(params[0], params[0], params[1], params[2]))
        else:
            Ks.append(pinhole(*params[:4]))
        sizes.append(checked_size(width, height))
    return torch.stack(c2w), torch.stack(Ks), sizes


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion [4] (w, x, y, z) -> rotation [3, 3]."""
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]], dtype=q.dtype)


def check_model(path: Path, model: str | int) -> str:
    """The model's name if nst3d can use it, else a one-line UserError."""
    name = COLMAP_MODELS[model][0] if isinstance(model, int) and model in COLMAP_MODELS else str(model)
    if name not in PERSPECTIVE:
        known = name in {m for m, _ in COLMAP_MODELS.values()}
        raise UserError(f"{path}: COLMAP camera model {name} is {'a fisheye model, ' if known else 'unknown; '}"
                        "not supported; undistort the images with colmap image_undistorter (PINHOLE cameras)")
    return name


Camera = tuple[str, float, float, list[float]]  # model, width, height, params
Image = tuple[str, list[float], list[float], int]  # name, qvec (w, x, y, z), tvec, camera id


def colmap_cameras_txt(path: Path) -> dict[int, Camera]:
    """cameras.txt: `CAMERA_ID MODEL WIDTH HEIGHT PARAMS...` per line, # comments."""
    out = {}
    for line in path.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        model = check_model(path, words[1])
        params = [float(v) for v in words[4:]]
        if len(params) != dict(COLMAP_MODELS.values())[model]:
            raise ValueError(f"camera {words[0]} has {len(params)} parameters")
        out[int(words[0])] = (model, float(words[2]), float(words[3]), params)
    return out


def colmap_images_txt(path: Path) -> list[Image]:
    """images.txt: `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`, then a line of 2D points, per image."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    out = []
    for line in lines[0::2]:
        words = line.split()
        if not words:
            continue
        values = [float(v) for v in words[1:8]]
        if len(values) != 7 or len(words) < 10:
            raise ValueError(f"image line '{line[:40]}' is short")
        out.append((" ".join(words[9:]), values[:4], values[4:], int(words[8])))
    return out


def colmap_cameras_bin(path: Path) -> dict[int, Camera]:
    """cameras.bin: uint64 count; per camera int32 id, int32 model, uint64 width, uint64 height, float64 params."""
    data, out = path.read_bytes(), {}
    (count,), offset = struct.unpack_from("<Q", data), 8
    for _ in range(count):
        camera_id, model_id, width, height = struct.unpack_from("<iiQQ", data, offset)
        model = check_model(path, model_id)
        n = COLMAP_MODELS[model_id][1]
        params = list(struct.unpack_from(f"<{n}d", data, offset + 24))
        offset += 24 + 8 * n
        out[camera_id] = (model, float(width), float(height), params)
    return out


def colmap_images_bin(path: Path) -> list[Image]:
    """images.bin: uint64 count; per image int32 id, float64 qw qx qy qz tx ty tz, int32 camera id, the name
    (NUL-terminated), uint64 point count, then (float64 x, float64 y, int64 point id) per point."""
    data, out = path.read_bytes(), []
    (count,), offset = struct.unpack_from("<Q", data), 8
    for _ in range(count):
        values = struct.unpack_from("<i7di", data, offset)
        offset += 4 + 56 + 4
        end = data.index(b"\0", offset)
        name = data[offset:end].decode("utf-8")
        (points,) = struct.unpack_from("<Q", data, end + 1)
        offset = end + 1 + 8 + 24 * points
        if offset > len(data):
            raise ValueError("image points run past the end")
        out.append((name, list(values[1:5]), list(values[5:8]), values[8]))
    return out


def apply_dataparser_transform(c2w: torch.Tensor, path: Path) -> torch.Tensor:
    """Map camera-to-world [V, 4, 4] into nerfstudio's normalised frame (dataparser_transforms.json)."""
    try:
        data = json.loads(Path(path).read_text())
        transform = torch.tensor(data["transform"], dtype=torch.float32)
        scale = float(data["scale"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {path} as nerfstudio dataparser_transforms.json "
                        f"({exc.__class__.__name__})") from None
    out = c2w.clone()
    out[:, :3] = transform[:3] @ c2w
    out[:, :3, 3] *= scale
    return out

