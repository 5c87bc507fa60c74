"""The NeRF path with the real nerfstudio on a scene the test makes itself: a procedural object ray-cast with
open3d into a Blender-format dataset, a tiny nerfacto trained on it for a few iterations (once per session),
then the backend (frozen geometry, deferred = direct gradients), `nst3d nerf` end to end with nerfstudio
reloading the result, and the `ns-train nst3d-nerfacto` route."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

if importlib.util.find_spec("nerfstudio") is None:
    pytest.skip("nerfstudio is not installed (pip install nst3d[nerf])", allow_module_level=True)

pytestmark = pytest.mark.nerf

# A nerfacto small enough to train a few iterations in seconds on a CPU; quality does not matter here.
TINY = dict(iterations=6, rays_per_batch=256, num_levels=4, log2_hashmap_size=12, max_res=64, hidden_dim=16,
            proposal_samples=(16, 8), nerf_samples=8, proposal_levels=2, proposal_log2_hashmap_size=10)


@pytest.fixture(scope="session")
def scene(tmp_path_factory):
    """A trained tiny nerfacto run: SimpleNamespace(data, config, checkpoints)."""
    from nst3d.integrations.nerfstudio.offline import placeholder_alexnet
    from nst3d.integrations.nerfstudio.scene import SmallNerfacto, train_nerfacto, write_blender_scene
    from nst3d.integrations.nerfstudio.tv_shim import apply

    apply()
    root = tmp_path_factory.mktemp("nerf")
    torch_home = tmp_path_factory.getbasetemp() / "torch-hub"  # what tests/conftest.py's _isolated_hub sets
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        placeholder_alexnet(torch_home)  # nerfacto's LPIPS metric would download AlexNet otherwise
        data = write_blender_scene(root / "data", size=16, train_views=10, test_views=2)
        torch.manual_seed(0)
        config = train_nerfacto(data, root / "outputs", SmallNerfacto(**TINY))
    return SimpleNamespace(data=data, config=config, checkpoints=config.parent / "nerfstudio_models")


@pytest.fixture(scope="session")
def style_file(tmp_path_factory) -> Path:
    from nst3d.files import save_image
    from nst3d.samples import swirl_style

    path = tmp_path_factory.mktemp("style") / "swirl.png"
    save_image(swirl_style(48), path)
    return path


def _plain_nerfacto(config_path: Path):
    """The run's own NerfactoModel (nerfstudio's class, not ours), weights loaded."""
    from nst3d.integrations.nerfstudio.checkpoint import latest_checkpoint, load_checkpoint, model_state, read_config

    config = read_config(config_path)
    outputs = config.pipeline.datamanager.dataparser.setup().get_dataparser_outputs(split="train")
    model = config.pipeline.model.setup(scene_box=outputs.scene_box, num_train_data=len(outputs.image_filenames),
                                        metadata=outputs.metadata, device="cpu")
    state = load_checkpoint(latest_checkpoint(config_path.parent / "nerfstudio_models"))
    model.load_state_dict(model_state(state["pipeline"]))
    return model.eval()


def _perturb_appearance(model, scale: float = 0.3, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.appearance_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale * (p.abs().mean() + 1e-3))


def test_style_model_starts_as_the_trained_nerfacto_and_changes_only_colours(scene):
    from nst3d.backends.nerf import from_nerfstudio, render
    from nst3d.integrations.nerfstudio.run import load_run

    run = load_run(scene.config, "cpu")
    cams = from_nerfstudio(run.train_cameras[0:2], 12, 10)
    with torch.no_grad():
        plain = render(_plain_nerfacto(scene.config), cams)
        start = render(run.model, cams)
    assert start.rgb.shape == (2, 3, 10, 12) and start.mask.shape == start.depth.shape == (2, 1, 10, 12)
    assert torch.allclose(start.rgb, plain.rgb, atol=1e-6)
    assert torch.equal(start.mask, plain.mask) and torch.equal(start.depth, plain.depth)
    trainable = {name for name, p in run.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("field.mlp_style.", "field.mlp_head.")) for n in trainable)
    assert not any(n.startswith("field.mlp_head_original.") for n in trainable)

    _perturb_appearance(run.model)
    with torch.no_grad():
        moved = render(run.model, cams)
        original = render(run.model, cams, original=True)
    assert torch.equal(moved.mask, start.mask) and torch.equal(moved.depth, start.depth)  # geometry frozen
    assert (moved.rgb - start.rgb).abs().max() > 1e-3
    assert torch.allclose(original.rgb, plain.rgb, atol=1e-6)  # the original appearance is kept


def _samples_at(points: torch.Tensor, direction: torch.Tensor):
    """nerfstudio RaySamples [N, 1] whose sample positions are `points` [N, 3], seen along `direction` [3]."""
    from nerfstudio.cameras.rays import Frustums, RaySamples

    n = len(points)
    directions = torch.nn.functional.normalize(direction, dim=0).expand(n, 3)[:, None]
    t = torch.full((n, 1, 1), 0.5)
    frustums = Frustums(origins=points[:, None] - directions * t, directions=directions, starts=t, ends=t,
                        pixel_area=torch.full((n, 1, 1), 1e-4))
    return RaySamples(frustums=frustums, camera_indices=torch.zeros(n, 1, 1, dtype=torch.long))


def test_stylized_colour_changes_the_same_from_every_direction(scene):
    from nerfstudio.field_components.field_heads import FieldHeadNames

    from nst3d.integrations.nerfstudio.run import load_run

    run = load_run(scene.config, "cpu")
    _perturb_appearance(run.model, scale=1.0)
    points = torch.rand(64, 3, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    change, unclamped = [], torch.ones(64, 1, 3, dtype=torch.bool)
    with torch.no_grad():
        for direction in ([1.0, 0.0, 0.0], [0.0, -0.6, 0.8], [-0.3, 0.3, -0.9]):
            samples = _samples_at(points, torch.tensor(direction))
            styled = run.model.field(samples)[FieldHeadNames.RGB]
            with run.model.original():
                original = run.model.field(samples)[FieldHeadNames.RGB]
            change.append(styled - original)
            unclamped &= (styled > 0) & (styled < 1)
    assert change[0].abs().max() > 1e-2 and unclamped.float().mean() > 0.5
    # what stylization changes is a colour per point: the same whichever way the point is seen
    for other in change[1:]:
        assert torch.allclose(change[0][unclamped], other[unclamped], atol=1e-5)


def test_deferred_backpropagation_gives_the_direct_gradients(scene, vgg):
    from nst3d.backends.nerf import backend_for_run, render
    from nst3d.integrations.nerfstudio.run import load_run
    from nst3d.losses import Objective, StyleTarget
    from nst3d.stylize import accumulate_gradients

    run = load_run(scene.config, "cpu")
    _perturb_appearance(run.model)
    backend = backend_for_run(run, size=9, patch_rays=7)  # 9x9 view in 12 uneven patches
    views = backend.train_views(0, torch.Generator().manual_seed(0))
    with torch.no_grad():  # training views are shaded on their kept geometry: the same as the model's forward
        kept, forward = backend.render(views), render(run.model, views.cameras)
    assert backend.geometry_bytes > 0
    # equal up to float rounding: batching rays differently may pick different CPU matmul kernels
    assert torch.allclose(kept.rgb, forward.rgb, atol=1e-6) and torch.allclose(kept.mask, forward.mask, atol=1e-6)
    assert torch.allclose(kept.depth, forward.depth, rtol=1e-5, atol=1e-6)
    style = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(2))
    objective = Objective(vgg, StyleTarget.from_images(vgg, [style], ["relu1_1", "relu2_1"]), "relu2_1",
                          content_weight=0.5, tv_weight=0.1)
    params = run.model.appearance_parameters()

    content = objective.content_features(backend.render_content(views).rgb)
    direct = backend.render_with_grad(views)
    objective(direct.rgb, direct.mask, content)["total"].backward()
    expected = [p.grad.clone() for p in params]
    for uncached in (False, True):
        if uncached:  # the same without keeping geometry: recomputed by the proposal sampler every time
            backend = backend_for_run(run, size=9, patch_rays=7, geometry_cache_mb=0)
            views = backend.train_views(0, torch.Generator().manual_seed(0))
            assert backend.geometry_bytes == 0
        for p in params:
            p.grad = None
        accumulate_gradients(backend, objective, views)
        for p, g in zip(params, expected, strict=True):
            assert g.abs().max() > 0
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6 * float(g.abs().max())), p.shape


def _register_method() -> None:
    """Make nerfstudio's method table know nst3d-nerfacto even where the entry point is not installed."""
    from nerfstudio.configs.method_configs import all_methods

    from nst3d.integrations.nerfstudio.method import nst3d_nerfacto

    all_methods.setdefault("nst3d-nerfacto", nst3d_nerfacto.config)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_nerf_command_writes_a_run_that_nerfstudio_reloads(scene, style_file, random_weights_file, tmp_path,
                                                           capsys):
    import json

    from nerfstudio.utils.eval_utils import eval_setup

    from nst3d.backends.nerf import render, to_nerfstudio
    from nst3d.cli import main
    from nst3d.eval import held_out_views
    from nst3d.integrations.nerfstudio.model import StyleNerfactoModel
    from nst3d.integrations.nerfstudio.run import load_run
    from nst3d.pipelines.report import REPORT_KEYS
    from tests.test_report_schema import EVALUATION_KEYS

    before = _snapshot(scene.config.parent)
    out, report_path = tmp_path / "styled", tmp_path / "report.json"
    code = main(["nerf", "--load-config", str(scene.config), "--style", str(style_file), "-o", str(out),
                 "--size", "12", "--steps", "2", "--lr", "0.05", "--weights", str(random_weights_file),
                 "--held-out", "1", "--report", str(report_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: --size 12 leaves" in err  # views this small are warned about
    assert _snapshot(scene.config.parent) == before  # the original run is untouched
    report = json.loads(report_path.read_text())
    config = Path(report["outputs"]["run"])
    assert config.is_relative_to(out) and config.parent.parent.name == "nst3d-nerfacto"
    assert sorted(p.name for p in config.parent.iterdir()) == [
        "config.yml", "dataparser_transforms.json", "nerfstudio_models", "nst3d_preview.png", "nst3d_report.json"]
    assert json.loads((config.parent / "nst3d_report.json").read_text())["outputs"]["run"] == str(config)
    assert list(report) == list(REPORT_KEYS) and report["command"] == "nerf"  # the schema image/mesh/splat write
    evaluation = report["evaluation"]
    assert EVALUATION_KEYS <= set(evaluation)
    assert set(evaluation["style_distance"]) == {"before", "after"}
    assert {"short_range", "long_range"} <= set(evaluation["consistency"])
    close = evaluation["close_up"]  # the held-out views zoomed to a fifth of the framed extent
    assert set(close["style_distance"]) == {"before", "after"} and close["held_out"]["view_height"] > 0
    assert report["details"]["zoomed_crops"] >= 1
    for key in ("seconds", "peak_memory_mb", "peak_device_memory_mb", "device"):
        assert key in report
    for key in ("seconds_per_step", "patch_rays", "trainable_parameters"):
        assert key in report["details"]
    assert report["peak_memory_mb"] > 0 and (report["peak_device_memory_mb"] is None) == (report["device"] == "cpu")

    # nerfstudio's own loader (what ns-viewer, ns-render and ns-export call) reloads and renders it, on the
    # device it picks (CUDA when there is one): ours renders on the same one to compare
    _register_method()
    _, pipeline, checkpoint, step = eval_setup(config, test_mode="inference")
    assert isinstance(pipeline.model, StyleNerfactoModel) and step == 2
    device = pipeline.model.device
    ours = load_run(config, device)
    cams = held_out_views(_frame(ours), count=1).anchors
    outputs = pipeline.model.get_outputs_for_camera(to_nerfstudio(cams, device)[0:1])
    image = outputs["rgb"].permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = render(ours.model, cams)
        original = render(ours.model, cams, original=True)
    assert image.shape == expected.rgb.shape
    # on CUDA, nst3d's TF32 products (nst3d.options.configure_cuda) differ with the ray chunking
    assert torch.allclose(image, expected.rgb, atol=1e-5 if device.type == "cpu" else 2e-3)
    assert (expected.rgb - original.rgb).abs().max() > 1e-3  # the saved appearance is the stylized one


def _frame(run):
    from nst3d.backends.nerf import SceneFrame, from_nerfstudio

    train = from_nerfstudio(run.train_cameras, 12, 12)
    return SceneFrame.from_cameras(train).framer(12, 12)


def ns_train_stylized(scene, style_file, weights, output_dir: Path, device_type: str) -> Path:
    """`ns-train nst3d-nerfacto` (2 steps, 10 px views) on nerfstudio's trainer in this process; the saved
    run's config.yml."""
    from nst3d.integrations.nerfstudio.method import nst3d_nerfacto

    config = copy.deepcopy(nst3d_nerfacto.config)  # what `ns-train nst3d-nerfacto ...` starts from
    config.load_dir = scene.checkpoints
    config.pipeline.datamanager.data = scene.data
    config.pipeline.style_image = style_file
    config.pipeline.weights = weights
    config.pipeline.size = 10
    config.pipeline.patch_rays = 64
    config.max_num_iterations = 2
    config.output_dir = output_dir
    config.vis = "tensorboard"
    config.machine.device_type = device_type
    config.logging.local_writer.enable = False
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10**9
    config.set_timestamp()
    config.save_config()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return config.get_base_dir() / "config.yml"


def test_ns_train_method_stylizes_a_trained_run(scene, style_file, random_weights_file, tmp_path):
    from nst3d.backends.nerf import from_nerfstudio, render
    from nst3d.integrations.nerfstudio.run import load_run

    saved = ns_train_stylized(scene, style_file, random_weights_file, tmp_path / "outputs", "cpu")
    start = load_run(scene.config, "cpu")
    styled = load_run(saved, "cpu")  # the trained model's settings were adopted, so the checkpoint fits
    assert styled.step == 1  # steps 0 and 1
    cams = from_nerfstudio(start.train_cameras[0:1], 10, 10)
    with torch.no_grad():
        a, b = render(start.model, cams), render(styled.model, cams)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.depth, b.depth)
    assert (a.rgb - b.rgb).abs().max() > 1e-4


def test_bad_inputs_are_one_line_errors(scene, style_file, random_weights_file, tmp_path, capsys):
    from nerfstudio.models.splatfacto import SplatfactoModelConfig

    from nst3d.cli import main
    from nst3d.errors import UserError
    from nst3d.integrations.nerfstudio.run import style_model_config

    assert main(["nerf", "--load-config", str(tmp_path / "missing.yml"), "--style", str(style_file),
                 "-o", str(tmp_path / "out")]) == 2
    assert "config not found" in capsys.readouterr().err
    with pytest.raises(UserError, match="ns-export gaussian-splat"):
        style_model_config(SplatfactoModelConfig())
    assert main(["nerf", "--load-config", str(scene.config), "--style", str(style_file), "-o",
                 str(tmp_path / "o"), "--data", str(tmp_path / "nowhere"), "--weights", str(random_weights_file),
                 "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "warning" not in err  # the small --size is not worth saying before the error
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    (tmp_path / "empty").mkdir()
    assert main(["nerf", "--load-config", str(tmp_path / "empty"), "--style", str(style_file), "-o",
                 str(tmp_path / "o")]) == 2
    assert "is a folder without a config.yml" in capsys.readouterr().err
    assert main(["nerf", "--load-config", str(scene.config.parent), "--style", str(style_file), "-o",  # a run's folder
                 str(tmp_path / "o"), "--data", str(tmp_path / "nowhere"), "--weights", str(random_weights_file)]) == 2
    assert "--data" in capsys.readouterr().err  # got past the config: the folder's config.yml was taken


def test_plugin_module_is_light_and_the_torchvision_hook_works():
    """nerfstudio imports plugin modules unguarded: ours imports only nerfstudio's config classes."""
    code = (
        "import sys\n"
        "import nst3d.integrations.nerfstudio.tv_shim as shim\n"
        "shim.install_hook()\n"
        "from nst3d.integrations.nerfstudio.method import nst3d_nerfacto\n"
        "assert 'torchvision' in sys.modules\n"
        "heavy = [m for m in ('nst3d.integrations.nerfstudio.model', 'nst3d.integrations.nerfstudio.pipeline',\n"
        "                     'nst3d.backends.nerf', 'nst3d.integrations.nerfstudio.run', 'nst3d.options',\n"
        "                     'nst3d.features') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(nst3d_nerfacto.config.method_name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("nst3d-nerfacto")


def test_entry_point_registers_the_method():
    """`ns-train --help` lists nst3d-nerfacto through this entry point (pyproject.toml)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="nerfstudio.method_configs")}
    assert found.get("nst3d-nerfacto") == "nst3d.integrations.nerfstudio.method:nst3d_nerfacto"


# ----------------------------------------------------------------------------------------------------- CUDA


def _nerf_command(scene, style_file, weights, out: Path, device: str) -> dict:
    import json

    from nst3d.cli import main

    report = out / "report.json"
    code = main(["nerf", "--load-config", str(scene.config), "--style", str(style_file), "-o", str(out / "run"),
                 "--size", "16", "--steps", "2", "--lr", "0.05", "--weights", str(weights), "--held-out", "1",
                 "--compare-baseline", "--device", device, "--report", str(report), "--quiet"])
    assert code == 0
    return json.loads(report.read_text())


@pytest.mark.gpu
def test_nerf_command_with_baseline_on_cuda_matches_the_cpu(scene, style_file, random_weights_file, tmp_path):
    """`nst3d nerf --compare-baseline --device cuda` (training, held-out evaluation, the per-view baseline, the
    saved run) gives the CPU run's figures."""
    cpu = _nerf_command(scene, style_file, random_weights_file, tmp_path / "cpu", "cpu")
    cuda = _nerf_command(scene, style_file, random_weights_file, tmp_path / "cuda", "cuda")
    assert cuda["device"].startswith("cuda") and cuda["peak_device_memory_mb"] > 0
    assert cpu["peak_device_memory_mb"] is None
    ours, theirs = cuda["evaluation"], cpu["evaluation"]
    # the unstylized figures depend on the scene only (TF32 on the GPU moves them in the third digit)
    assert ours["style_distance"]["before"] == pytest.approx(theirs["style_distance"]["before"], rel=0.02)
    for key in ("short_range", "long_range"):
        assert ours["floor"]["consistency"][key] == pytest.approx(theirs["floor"]["consistency"][key], rel=0.05,
                                                                  abs=1e-3)
    # two steps from the same start, seeds and views: the stylized figures agree too
    assert ours["style_distance"]["after"] == pytest.approx(theirs["style_distance"]["after"], rel=0.05)
    assert ours["baseline"]["style_distance"]["after"] == pytest.approx(
        theirs["baseline"]["style_distance"]["after"], rel=0.05)
    assert set(ours["half_pixel_style_distance"]) == {"after", "baseline"}


@pytest.mark.gpu
def test_ns_train_method_on_cuda_matches_the_cpu(scene, style_file, random_weights_file, tmp_path):
    from nst3d.backends.nerf import from_nerfstudio, render
    from nst3d.integrations.nerfstudio.run import load_run

    on_cpu = ns_train_stylized(scene, style_file, random_weights_file, tmp_path / "cpu", "cpu")
    on_cuda = ns_train_stylized(scene, style_file, random_weights_file, tmp_path / "cuda", "cuda")
    start = load_run(scene.config, "cpu")
    cams = from_nerfstudio(start.train_cameras[0:2], 10, 10)
    with torch.no_grad():
        a, b, c = (render(run.model, cams) for run in (start, load_run(on_cpu, "cpu"), load_run(on_cuda, "cpu")))
    assert torch.equal(a.mask, c.mask) and torch.equal(a.depth, c.depth)  # geometry frozen on the GPU too
    change = (b.rgb - a.rgb).abs().mean()
    assert change > 1e-4
    assert (c.rgb - b.rgb).abs().mean() < 0.25 * change  # the GPU's stylization is the CPU's


def test_zoomed_crops_cover_the_octaves_and_close_ups_the_close_up_height():
    """Camera math only (no scene): each training crop covers its octave's height where the capture looks, never
    zoomed out; close-ups cover CLOSE_UP_FRACTION of the framed extent at the depth their anchors show."""
    from nst3d.backends.nerf import SceneFrame
    from nst3d.backends.nerf_views import close_up_crops, framed_height, octave_crops
    from nst3d.cameras import cameras_around, fibonacci_directions
    from nst3d.held_out import held_out_views
    from nst3d.scales import CLOSE_UP_FRACTION

    train = cameras_around(torch.zeros(3), 4.0, fibonacci_directions(12), 64, 48, 50.0)
    frame = SceneFrame.from_cameras(train)
    heights, crops = octave_crops(train, frame, None, 9, seed=3)
    assert len(crops) == 9 and len(heights) >= 2 and heights[0] == pytest.approx(0.2 * framed_height(frame))
    depth = (crops.cam_to_world[:, :3, 3] - frame.center).norm(dim=-1)  # the ring looks at its centre
    covers = depth * crops.height / crops.K[:, 1, 1]
    assert torch.allclose(covers, torch.tensor([heights[k % len(heights)] for k in range(9)]), rtol=1e-3)
    principal = crops.K[:, :2, 2]
    assert not torch.allclose(principal, train.K[:1, :2, 2].expand_as(principal))  # off-centre crops
    held = held_out_views(frame.framer(64, 48), count=2)
    shown = torch.full((6, 1, 48, 64), 3.0)
    close = close_up_crops(held, shown, torch.ones_like(shown), CLOSE_UP_FRACTION * framed_height(frame))
    assert close.view_height == pytest.approx(CLOSE_UP_FRACTION * framed_height(frame))
    for cams in (close.anchors, close.short, close.long):
        assert torch.allclose(3.0 * cams.height / cams.K[:, 1, 1], torch.full((2,), close.view_height), rtol=1e-4)
