from dataclasses import replace

import pytest
import torch

from nst3d.backends.base import Render
from nst3d.backends.image import ImageBackend
from nst3d.losses import Objective, StyleTarget, style_distance
from nst3d.stylize import Cancelled, LoopConfig, stylize


@pytest.fixture(scope="module")
def setup(vgg):
    g = torch.Generator().manual_seed(1)
    content = torch.rand(3, 32, 32, generator=g) * 0.5 + 0.25
    style = (torch.rand(3, 32, 32, generator=g) > 0.5).float() * torch.tensor([0.9, 0.7, 0.1]).view(3, 1, 1)
    target = StyleTarget.from_images(vgg, [style], ["relu1_1", "relu2_1", "relu3_1"])
    return content, Objective(vgg, target, "relu2_2", content_weight=0.05)


@pytest.mark.parametrize("optimizer,steps", [("adam", 60), ("lbfgs", 25)])
def test_both_optimizers_lower_the_loss_and_the_style_distance(setup, vgg, optimizer, steps):
    content, objective = setup
    backend = ImageBackend(content)
    history = stylize(backend, objective, LoopConfig(steps=steps, optimizer=optimizer, lr=0.03))
    assert history[-1]["total"] < 0.5 * history[0]["total"]
    before = style_distance(vgg, content[None], objective.target)
    assert style_distance(vgg, backend.result()[None], objective.target) < 0.5 * before


def test_same_seed_same_result_and_noise_init_depends_on_seed(setup):
    content, objective = setup
    runs = []
    for seed in (3, 3, 4):
        backend = ImageBackend(content, init="noise", seed=seed)
        stylize(backend, objective, LoopConfig(steps=5, seed=seed))
        runs.append(backend.result())
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_progress_events_and_cancellation(setup):
    content, objective = setup
    events = []
    with pytest.raises(Cancelled):
        stylize(ImageBackend(content), objective, LoopConfig(steps=50), events.append,
                should_stop=lambda: len(events) >= 3)
    assert [e["step"] for e in events] == [1, 2, 3]
    assert all(e["event"] == "progress" and e["total"] == 50 and "style" in e["terms"] for e in events)


def test_a_ctrl_c_whose_interrupt_was_swallowed_still_stops_the_loop(setup):
    """The CLI's Ctrl-C handler also sets CTRL_C: even if its KeyboardInterrupt is lost (raised inside a
    finalizer, which Python only reports), the loop stops before its next step."""
    from nst3d.events import CTRL_C

    content, objective = setup
    steps = []

    def sink(event):
        steps.append(event["step"])
        if event["step"] == 2:
            CTRL_C.set()  # what nst3d.cli's handler does before raising

    try:
        with pytest.raises(Cancelled):
            stylize(ImageBackend(content), objective, LoopConfig(steps=50), sink)
    finally:
        CTRL_C.clear()
    assert steps == [1, 2]


class DeferredImage(ImageBackend):
    """The image backend driven through the deferred path: render without a graph, push d loss / d image back."""

    deferred = True

    def render(self, views):
        with torch.no_grad():
            return Render(self.pixels.detach().clone())

    def backward_image(self, views, grad_rgb):
        self.pixels.backward(grad_rgb)


def test_deferred_back_propagation_matches_direct(setup):
    content, objective = setup
    direct, deferred = ImageBackend(content), DeferredImage(content)
    config = LoopConfig(steps=4, lr=0.05)
    stylize(direct, objective, config)
    stylize(deferred, objective, replace(config))
    assert torch.allclose(direct.pixels, deferred.pixels, atol=1e-5)


@pytest.mark.parametrize("backend", [ImageBackend, DeferredImage])
def test_a_step_reads_the_device_once(setup, backend):
    """On the meta device (shapes without data) every read of a device value fails: the first read of a step
    must be the one copy of its loss terms at its end (host_numbers), not a float() per term or any earlier
    check. Nothing after that copy in a step touches the device (the divergence check reads the copy)."""
    from tests.test_eval import on_meta

    content, objective = setup
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor") as caught:
        stylize(backend(content.to("meta")), on_meta(objective), LoopConfig(steps=2))
    assert any(entry.name == "host_numbers" for entry in caught.traceback)


def test_loss_terms_come_to_the_host_in_one_copy_with_their_values():
    from nst3d.stylize import host_numbers

    terms = {"style": torch.tensor(0.25), "content": torch.tensor([1.5]), "total": torch.tensor(float("nan"))}
    numbers = host_numbers(terms)
    assert list(numbers) == ["style", "content", "total"] and numbers["style"] == 0.25
    assert numbers["content"] == 1.5 and numbers["total"] != numbers["total"]


def test_content_features_are_computed_once_for_a_keyed_view(setup, monkeypatch):
    content, objective = setup
    calls = []
    original = objective.content_features
    monkeypatch.setattr(objective, "content_features", lambda rgb: calls.append(1) or original(rgb))
    stylize(ImageBackend(content), objective, LoopConfig(steps=4))
    assert len(calls) == 1


def test_progress_bar_starts_a_new_bar_when_the_stage_changes(capsys):
    from nst3d.events import ProgressBar

    bar = ProgressBar()
    for stage in ("stylizing", "stylizing", "baseline view 1", "baseline view 2"):
        bar({"event": "progress", "stage": stage, "step": 1, "total": 2, "loss": 1.0})
    bar.close()
    err = capsys.readouterr().err
    assert "baseline view 1" in err and "baseline view 2" in err and err.count("stylizing:") >= 1
    assert bar.bar is None


def test_progress_bar_shows_a_loss_only_for_stages_that_have_one(capsys):
    from nst3d.events import ProgressBar

    bar = ProgressBar()
    bar({"event": "progress", "stage": "rendering", "step": 1, "total": 2, "unit": "frame"})
    bar({"event": "stage_done", "stage": "rendering"})
    bar({"event": "progress", "stage": "stylizing", "step": 1, "total": 2, "loss": 0.25})
    bar.close()
    err = capsys.readouterr().err
    rendering = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("rendering")]
    assert rendering and not any("loss" in line for line in rendering)
    assert "frame/s" in rendering[-1] and "step" not in rendering[-1]  # counted in what it renders
    assert "loss=0.25" in err


def test_progress_bar_shows_warnings_at_once_even_when_quiet(capsys):
    from nst3d.events import ProgressBar

    for quiet in (False, True):
        bar = ProgressBar(quiet=quiet)
        bar({"event": "progress", "stage": "stylizing", "step": 1, "total": 2, "loss": 0.25})
        bar({"event": "warning", "text": "texture a.png not found: using the base colour"})
        assert bar.bar is None  # the bar is closed first, so the line is not overdrawn
        err = capsys.readouterr().err
        assert "nst3d: warning: texture a.png not found: using the base colour\n" in err
