import torch

from nst3d.losses import (
    Objective,
    StyleTarget,
    content_loss,
    gram,
    gram_loss,
    mean_std,
    nnfm_loss,
    style_distance,
    tv_loss,
)


def test_gram_is_the_per_position_average_outer_product():
    f = torch.randn(2, 4, 3, 5)
    flat = f.reshape(2, 4, -1)
    assert torch.allclose(gram(f), flat @ flat.transpose(1, 2) / 15, atol=1e-5)


def test_masked_statistics_ignore_pixels_outside_the_mask():
    f = torch.randn(1, 4, 6, 6)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., :3] = 1
    changed = f.clone()
    changed[..., 3:] = 100.0  # outside the mask
    assert torch.allclose(gram(f, mask), gram(changed, mask))
    assert all(torch.allclose(a, b) for a, b in zip(mean_std(f, mask), mean_std(changed, mask), strict=True))
    assert torch.allclose(gram(f, mask), gram(f[..., :3]), atol=1e-5)


def test_losses_vanish_at_their_targets():
    f = torch.rand(1, 8, 5, 5)
    assert gram_loss(f, gram(f)[0]) < 1e-10
    mean, std = mean_std(f)
    from nst3d.losses import mean_std_loss
    assert mean_std_loss(f, mean[0], std[0]) < 1e-10
    tokens = torch.nn.functional.normalize(f[0].reshape(8, -1).T, dim=-1)
    assert nnfm_loss(f, tokens) < 1e-5
    assert content_loss(f, f) == 0
    assert tv_loss(torch.ones(1, 3, 4, 4)) == 0
    assert tv_loss(torch.rand(1, 3, 4, 4)) > 0


def test_style_blend_weights_matter(vgg):
    a, b = torch.rand(3, 32, 32), torch.rand(3, 32, 32) * 0.2
    layers = ["relu1_1", "relu2_1"]
    only_a = StyleTarget.from_images(vgg, [a, b], layers, weights=[1.0, 0.0])
    single_a = StyleTarget.from_images(vgg, [a], layers)
    mixed = StyleTarget.from_images(vgg, [a, b], layers, weights=[0.5, 0.5])
    for tap in layers:
        assert torch.allclose(only_a.grams[tap], single_a.grams[tap], atol=1e-6)
        assert not torch.allclose(mixed.grams[tap], single_a.grams[tap], atol=1e-4)
    x = a[None]
    assert style_distance(vgg, x, single_a) < 1e-6
    assert style_distance(vgg, x, mixed) > 1e-3


def test_objective_reports_named_terms_and_gradients_reach_the_image(vgg):
    target = StyleTarget.from_images(vgg, [torch.rand(3, 32, 32)], ["relu1_1", "relu2_1"])
    for loss in ("gram", "adain", "nnfm"):
        objective = Objective(vgg, target, "relu2_2", loss=loss, tv_weight=0.1)
        x = torch.rand(1, 3, 32, 32, requires_grad=True)
        terms = objective(x, None, objective.content_features(x.detach() * 0.5))
        expected = {"style", "content", "tv", "total"} | ({"color"} if loss == "nnfm" else set())
        assert set(terms) == expected
        terms["total"].backward()
        assert x.grad is not None and x.grad.abs().sum() > 0

