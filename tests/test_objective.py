"""The one Objective with style groups (`--style-map`): one style everywhere is the single-style objective, every
group gets every term (NNFM's colour term included), a view without a group adds nothing, and no step syncs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nst3d.files import save_image
from nst3d.losses import LOSS_KINDS, Objective, StyleTarget, gram_loss, mean_std_loss
from nst3d.options import StyleOptions
from nst3d.pipelines.mesh import stylize_mesh_file
from tests.mesh_data import two_object_glb

LAYERS = ["relu1_1", "relu2_1"]
SCALES = (1.0, 0.5)


def _target(vgg, seed: int) -> StyleTarget:
    g = torch.Generator().manual_seed(seed)
    return StyleTarget.from_images(vgg, [torch.rand(3, 32, 32, generator=g) ** (1 + seed % 3)], LAYERS,
                                   scales=SCALES)


def _split_coverage(views: int, groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(coverage [V, 1, H, W] with soft edges and empty background, the same split by a random slot into
    [V, groups, H, W]), as the mesh backend builds its masks."""
    g = torch.Generator().manual_seed(seed)
    coverage = torch.rand(views, 1, 32, 32, generator=g).clamp(max=0.8) / 0.8
    coverage[..., :6] = 0
    slot = torch.randint(1, groups, (views, 1, 32, 32), generator=g)  # channel 0 (the --style group) is empty
    split = torch.cat([(slot == k).float() * coverage for k in range(groups)], dim=1)
    return coverage, split


def _objective(vgg, target, loss, **kw) -> Objective:
    return Objective(vgg, target, "relu2_1", loss=loss, style_weight=1.5, content_weight=0.2, tv_weight=2.0,
                     style_scales=SCALES, **kw)


@pytest.mark.parametrize("loss", LOSS_KINDS)
def test_a_style_map_with_one_style_everywhere_is_the_single_style_objective(vgg, loss):
    target = _target(vgg, 1)
    coverage, split = _split_coverage(3, 3, seed=2)
    rgb = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    content = vgg(rgb.flip(-1), ["relu2_1"])["relu2_1"]
    plain = _objective(vgg, target, loss)
    mapped = _objective(vgg, target, loss, channel_targets=(target, target, target))

    def terms_and_grad(objective, mask):
        image = rgb.clone().requires_grad_(True)
        terms = objective(image, mask, content)
        terms["total"].backward()
        return {k: v.detach() for k, v in terms.items()}, image.grad

    (want, want_grad), (got, got_grad) = terms_and_grad(plain, coverage), terms_and_grad(mapped, split)
    assert set(got) == set(want) == {"style", "content", "tv", "total"} | ({"color"} if loss == "nnfm" else set())
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-7), name
    assert torch.allclose(got_grad, want_grad, rtol=1e-4, atol=1e-9)
    assert mapped.style_distance(rgb, split) == pytest.approx(plain.style_distance(rgb, coverage), rel=1e-5)


def test_nnfm_with_a_style_map_matches_each_groups_palette_over_its_pixels(vgg):
    first, second = _target(vgg, 1), _target(vgg, 2)
    assert not torch.allclose(first.means["rgb"], second.means["rgb"])
    coverage, _ = _split_coverage(2, 2, seed=4)
    split = torch.cat([coverage, coverage], 1)
    split[:, 0, :, :16] = 0  # right half: group 0 (the --style images)
    split[:, 1, :, 16:] = 0  # left half: group 1
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    objective = _objective(vgg, first, "nnfm", channel_targets=(first, second))
    terms = objective(rgb, split, None)
    share = split.sum((0, 2, 3)) / split.sum()
    colour = [mean_std_loss(rgb, t.means["rgb"], t.stds["rgb"], split[:, g:g + 1])
              for g, t in enumerate((first, second))]
    assert torch.allclose(terms["color"], share[0] * colour[0] + share[1] * colour[1], rtol=1e-5)
    expected_total = 1.5 * (terms["style"] + terms["color"]) + 2.0 * terms["tv"]
    assert torch.allclose(terms["total"], expected_total, rtol=1e-5)


def test_each_group_counts_only_in_the_views_that_show_it(vgg):
    g = torch.Generator().manual_seed(5)
    first, second = _target(vgg, 1), _target(vgg, 2)
    objective = Objective(vgg, first, "relu2_1", channel_targets=(first, second))
    rgb = torch.rand(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 2, 32, 32)
    mask[:, 0, :, :16] = 1
    mask[0, 1, :, 16:] = 1  # group 1 is seen in view 0 only

    def distance(target: StyleTarget, views: torch.Tensor, m: torch.Tensor) -> float:
        feats = vgg(views, LAYERS)
        return float(sum(gram_loss(feats[t], target.grams[t], m) for t in LAYERS)) / len(LAYERS)

    share = [2 / 3, 1 / 3]
    # View 1, which does not show group 1, is no evidence about group 1's style (not a distance of 1).
    expected = share[0] * distance(first, rgb, mask[:, :1]) + share[1] * distance(second, rgb[:1], mask[:1, 1:])
    assert objective.style_distance(rgb, mask) == pytest.approx(expected, rel=1e-5)
    assert float(objective(rgb, mask, None)["style"]) == pytest.approx(expected, rel=1e-5)
    # A group that no view of the batch shows adds nothing, and its terms stay finite.
    absent = torch.cat([mask[:, :1], torch.zeros_like(mask[:, :1])], 1)
    terms = objective(rgb.requires_grad_(True), absent, None)
    terms["total"].backward()
    assert float(terms["style"].detach()) == pytest.approx(distance(first, rgb.detach(), mask[:, :1]), rel=1e-5)
    assert torch.isfinite(rgb.grad).all()


class _NoHostReads(TorchDispatchMode):
    """Fails on any read of a tensor's value into Python (.item(), float(), bool(), `if tensor`)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("the objective read a tensor value on the host")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("loss", LOSS_KINDS)
def test_a_step_of_the_style_map_objective_reads_nothing_back(vgg, loss):
    first, second = _target(vgg, 1), _target(vgg, 2)
    _, split = _split_coverage(2, 3, seed=6)
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7), requires_grad=True)
    content = vgg(rgb.detach(), ["relu2_1"])["relu2_1"]
    objective = _objective(vgg, first, loss, channel_targets=(first, second, first))
    with _NoHostReads():
        objective(rgb, split, content)["total"].backward()
    with pytest.raises(AssertionError, match="host"), _NoHostReads():
        bool(split.any())  # the check itself works


@pytest.mark.parametrize("loss", LOSS_KINDS)
def test_each_view_meets_the_style_at_the_level_it_asks_for(vgg, loss):
    """World-size strokes: a view at level 1/2 is measured against the style image shrunk by half (at every style
    scale), one at level 1 against the style itself; a batch's style term is the mean of its views', and the
    level choice reads nothing back from the device."""
    style = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(4))
    levels = (0.5, 1.0)
    scales = sorted({s * level for s in SCALES for level in levels}, reverse=True)
    leveled = _objective(vgg, StyleTarget.from_images(vgg, [style], LAYERS, scales=scales), loss,
                         style_levels=levels)
    half = F.interpolate(style[None], scale_factor=0.5, mode="area")[0]
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))

    def style_term(objective, image, view_levels=None):
        return objective(image, None, None, view_levels)["style"]

    for k, (level, image) in enumerate(zip((0.5, 1.0), (half, style), strict=True)):
        alone = _objective(vgg, StyleTarget.from_images(vgg, [image], LAYERS, scales=SCALES), loss)
        want = style_term(alone, rgb[k:k + 1])
        assert torch.allclose(style_term(leveled, rgb[k:k + 1], torch.tensor([level])), want, rtol=1e-5), level
    both = style_term(leveled, rgb, torch.tensor([0.5, 1.0]))
    parts = [style_term(leveled, rgb[k:k + 1], torch.tensor([v])) for k, v in enumerate((0.5, 1.0))]
    assert torch.allclose(both, (parts[0] + parts[1]) / 2, rtol=1e-5)
    assert torch.allclose(style_term(leveled, rgb), style_term(leveled, rgb, torch.tensor([1.0, 1.0])))
    image = rgb.clone().requires_grad_(True)
    with _NoHostReads():
        leveled(image, None, None, torch.tensor([0.5, 1.0]))["total"].backward()


@pytest.mark.gpu
@pytest.mark.parametrize("loss", LOSS_KINDS)
def test_cuda_step_of_the_style_map_objective_syncs_nothing_and_matches_the_cpu(vgg, loss):
    first, second = _target(vgg, 1), _target(vgg, 2)
    _, split = _split_coverage(2, 3, seed=6)
    rgb = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    objective = _objective(vgg, first, loss, channel_targets=(first, second, first))
    want = objective(rgb, split, None)
    cuda = torch.device("cuda")
    gpu_vgg = copy.deepcopy(vgg).to(cuda)
    on_gpu = _target(gpu_vgg, 1), _target(gpu_vgg, 2)  # StyleTarget.from_images works on the VGG's device
    gpu_objective = _objective(gpu_vgg, on_gpu[0], loss, channel_targets=(on_gpu[0], on_gpu[1], on_gpu[0]))
    image, mask = rgb.to(cuda).requires_grad_(True), split.to(cuda)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = gpu_objective(image, mask, None)
        got["total"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name in want:
        assert torch.allclose(got[name].cpu(), want[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_mesh_command_with_every_name_mapped_to_the_style_is_the_plain_run(tmp_path, random_weights_file):
    """nnfm: before the one objective, the style map lost the colour term and styled each name on its own."""
    style = tmp_path / "s.png"
    save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3)), style)
    source = two_object_glb(tmp_path / "two.glb")
    opts = StyleOptions(styles=[style], steps=1, size=32, views=2, weights=random_weights_file, loss="nnfm",
                        style_layers=LAYERS, content_layer="relu2_1")

    def first_step(out: str, style_map: dict[str, list[Path]] | None) -> dict[str, float]:
        events = []
        stylize_mesh_file(source, tmp_path / out, opts, style_map, texture_size=32, pool_size=2, held_out=1,
                          on_event=events.append)
        return next(e["terms"] for e in events if e["event"] == "progress")

    plain = first_step("plain", None)
    mapped = first_step("mapped", {"Quad": [style], "Ball": [style]})
    assert set(mapped) == set(plain) and "color" in plain
    for name, value in plain.items():
        assert mapped[name] == pytest.approx(value, rel=1e-5), name
