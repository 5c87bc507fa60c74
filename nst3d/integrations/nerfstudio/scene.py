"""A small multi-view dataset the project makes itself, for tests, benchmarks and demos of the NeRF path:
a procedurally textured sphere and box, rendered with open3d ray casting from known cameras and written in
the Blender `transforms_{train,val,test}.json` format that nerfstudio's `blender-data` parser reads; plus a
helper that trains a small nerfacto on it in-process (CPU friendly settings).

World frame: z up, the objects inside [-1, 1]^3 (nerfacto's scene contraction keeps that region uncontracted).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nst3d.cameras import Cameras, cameras_around, fibonacci_directions, orbit_directions

FOV_DEGREES = 40.0
CAMERA_DISTANCE = 2.7
Z_UP = torch.tensor([0.0, 0.0, 1.0])


def y_up_to_z_up(directions: torch.Tensor) -> torch.Tensor:
    """Directions [V, 3] from nst3d's y-up samplers into this scene's z-up world (a rotation about x)."""
    return torch.stack([directions[:, 0], -directions[:, 2], directions[:, 1]], dim=-1)


def scene_cameras(directions_y_up: torch.Tensor, size: int) -> Cameras:
    """Cameras around the origin at CAMERA_DISTANCE, looking at it, square images of `size` px."""
    return cameras_around(torch.zeros(3), CAMERA_DISTANCE, y_up_to_z_up(directions_y_up), size, size,
                          FOV_DEGREES, up=Z_UP)


def _mesh():
    """The two objects as one open3d tensor mesh, plus the id of the first box triangle."""
    import open3d as o3d

    sphere = o3d.geometry.TriangleMesh.create_sphere(radius=0.55, resolution=48)
    sphere.translate((-0.32, 0.1, 0.0))
    box = o3d.geometry.TriangleMesh.create_box(0.6, 0.6, 0.6)
    box.translate((0.05, -0.45, -0.3))
    box.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0.0, 0.0, 0.5)), center=(0.35, -0.15, 0.0))
    return o3d.t.geometry.TriangleMesh.from_legacy(sphere + box), len(sphere.triangles)


def albedo(points: np.ndarray) -> np.ndarray:
    """Procedural colours [N, 3] of surface points [N, 3]: coloured bands, a checker and a soft gradient."""
    checker = (np.floor(points[:, 0] * 4) + np.floor(points[:, 1] * 4) + np.floor(points[:, 2] * 4)) % 2
    bands = 0.5 + 0.5 * np.sin(points[:, 2:3] * 7.0 + np.array([0.0, 2.1, 4.2]))
    base = np.array([0.95, 0.55, 0.15]) * (1 - checker[:, None]) + np.array([0.15, 0.45, 0.9]) * checker[:, None]
    return np.clip(0.75 * base + 0.25 * bands, 0, 1)


def render_views(cameras: Cameras, supersample: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray-cast the scene: (rgb [V, 3, H, W] over white, alpha [V, 1, H, W], depth [V, 1, H, W] camera z,
    0 for background). Anti-aliased by `supersample`^2 rays per pixel (alpha and rgb only)."""
    import open3d as o3d

    mesh, _ = _mesh()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh)
    light = np.array([0.4, -0.3, 0.85]) / np.linalg.norm([0.4, -0.3, 0.85])
    fine = Cameras(cameras.world_to_cam, cameras.K * torch.tensor([supersample, supersample, 1.0])[:, None],
                   cameras.width * supersample, cameras.height * supersample)
    origins, dirs = fine.rays()  # [V, h, w, 3], t = camera z
    rays = torch.cat([origins, dirs], -1).reshape(-1, 6).numpy().astype(np.float32)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    t = hit["t_hit"].numpy()
    found = np.isfinite(t)
    points = rays[:, :3] + rays[:, 3:] * np.where(found, t, 0)[:, None]
    normals = hit["primitive_normals"].numpy()
    shade = 0.45 + 0.55 * np.abs(normals @ light)
    rgb = np.where(found[:, None], albedo(points) * shade[:, None], 1.0)
    v, h, w = len(cameras), fine.height, fine.width
    rgb_t = torch.from_numpy(rgb.astype(np.float32)).reshape(v, h, w, 3).permute(0, 3, 1, 2)
    alpha_t = torch.from_numpy(found.astype(np.float32)).reshape(v, 1, h, w)
    depth_t = torch.from_numpy(np.where(found, t, 0).astype(np.float32)).reshape(v, 1, h, w)
    pool = (lambda x: torch.nn.functional.avg_pool2d(x, supersample))
    centre = supersample // 2
    return pool(rgb_t), pool(alpha_t), depth_t[..., centre::supersample, centre::supersample]


def _blender_frames(cameras: Cameras, split: str) -> list[dict]:
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    c2w_gl = cameras.cam_to_world @ flip  # OpenCV -> OpenGL/Blender camera axes
    return [{"file_path": f"./{split}/r_{i}", "transform_matrix": c2w_gl[i].tolist()}
            for i in range(len(cameras))]


def write_blender_scene(folder: str | Path, size: int = 48, train_views: int = 40,
                        test_views: int = 8) -> Path:
    """Write the dataset (PNG images over white + transforms_{train,val,test}.json) into `folder`.

    Training views are spread over the upper part of the sphere around the objects; val/test views are a ring
    at 25 degrees elevation, between the training views. Returns the folder.
    """
    from nst3d.files import save_image

    folder = Path(folder)
    splits = {"train": fibonacci_directions(train_views, min_elevation=-0.2, max_elevation=0.9),
              "val": orbit_directions(test_views, 25.0, start_degrees=11.0),
              "test": orbit_directions(test_views, 25.0, start_degrees=11.0)}
    for split, directions in splits.items():
        cameras = scene_cameras(directions, size)
        rgb, _, _ = render_views(cameras)
        (folder / split).mkdir(parents=True, exist_ok=True)
        for i in range(len(cameras)):
            save_image(rgb[i], folder / split / f"r_{i}.png")
        meta = {"camera_angle_x": 2 * math.atan(size / 2 / float(cameras.K[0, 0, 0])),
                "frames": _blender_frames(cameras, split)}
        (folder / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))
    return folder


@dataclass
class SmallNerfacto:
    """nerfacto settings that train in seconds to minutes on a CPU (tests, benchmarks, demos)."""

    iterations: int = 300
    rays_per_batch: int = 1024
    num_levels: int = 8
    log2_hashmap_size: int = 15
    max_res: int = 256
    hidden_dim: int = 32
    proposal_samples: tuple[int, ...] = (64, 32)
    nerf_samples: int = 32
    proposal_levels: int = 5
    proposal_log2_hashmap_size: int = 15


def train_nerfacto(data: str | Path, output_dir: str | Path, settings: SmallNerfacto | None = None,
                   device: str = "cpu", experiment_name: str = "scene", timestamp: str = "base") -> Path:
    """Train nerfacto on a Blender-format dataset in this process; returns the run's config.yml.

    The run is a normal nerfstudio run (ns-viewer/ns-render load it). Needs nerfacto's LPIPS weights in the
    torch hub cache when offline (see nst3d.integrations.nerfstudio.offline).
    """
    from nst3d.integrations.nerfstudio.tv_shim import apply

    apply()
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.nerfacto import NerfactoModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig

    settings = settings or SmallNerfacto()
    # nerfstudio's "nerfacto" method (configs/method_configs.py), scaled down; built here rather than copied
    # from method_configs, whose import loads every nerfstudio method and plugin.
    model = NerfactoModelConfig(
        eval_num_rays_per_chunk=4096, average_init_density=0.01, background_color="white",
        camera_optimizer=CameraOptimizerConfig(mode="off"), implementation="torch",
        num_levels=settings.num_levels, log2_hashmap_size=settings.log2_hashmap_size, max_res=settings.max_res,
        hidden_dim=settings.hidden_dim, hidden_dim_color=settings.hidden_dim,
        num_proposal_samples_per_ray=settings.proposal_samples, num_nerf_samples_per_ray=settings.nerf_samples,
        proposal_net_args_list=[
            {"hidden_dim": 16, "log2_hashmap_size": settings.proposal_log2_hashmap_size,
             "num_levels": settings.proposal_levels, "max_res": res, "use_linear": False} for res in (64, 128)],
        proposal_warmup=max(1, settings.iterations // 2),
        proposal_weights_anneal_max_num_iters=max(1, settings.iterations // 3))
    adam = {"optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-3, max_steps=max(1, settings.iterations))}
    config = TrainerConfig(
        method_name="nerfacto", experiment_name=experiment_name, timestamp=timestamp,
        output_dir=Path(output_dir), vis="tensorboard", mixed_precision=False,
        max_num_iterations=settings.iterations, steps_per_save=settings.iterations,
        steps_per_eval_batch=10**9, steps_per_eval_image=10**9, steps_per_eval_all_images=10**9,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=BlenderDataParserConfig(data=Path(data)),
                train_num_rays_per_batch=settings.rays_per_batch, eval_num_rays_per_batch=settings.rays_per_batch),
            model=model),
        optimizers={"proposal_networks": copy.deepcopy(adam), "fields": copy.deepcopy(adam)})
    config.machine.device_type = device
    config.logging.local_writer.enable = False
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return config.get_base_dir() / "config.yml"
