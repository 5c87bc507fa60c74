"""The CPU splat renderer: the tiled, culled compositor against a dense every-pixel-every-Gaussian reference, and
(on a GPU) against gsplat.rasterization itself. Scenes are made here: small random Gaussians in front of the cameras."""

import math
import os

import pytest
import torch

from nst3d.backends.splat.render import plan, rasterize, rasterize_dense, rasterize_torch, shade
from nst3d.cameras import cameras_around, fibonacci_directions


def scene(n: int = 400, degree: int = 1, seed: int = 0, opacity: float | None = None) -> dict:
    """n Gaussians in a ball (a few layers deep, so pixels terminate), sizes from sub-pixel to large."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.5
    opacities = torch.rand(n, generator=g) if opacity is None else torch.full((n,), opacity)
    return {"means": means, "quats": torch.randn(n, 4, generator=g),
            "scales": torch.exp(torch.randn(n, 3, generator=g) * 0.7 - 2.6), "opacities": opacities,
            "colors": torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.6}


def cameras(views: int = 2, width: int = 40, height: int = 34):
    return cameras_around(torch.zeros(3), 3.5, fibonacci_directions(views), width, height)


@pytest.mark.parametrize("degree,opacity,block", [(0, None, 8), (1, None, 4), (3, 0.95, 8), (2, 0.99, 16)])
def test_tiled_matches_dense_reference(degree, opacity, block):
    s = scene(degree=degree, opacity=opacity)
    cams = cameras(width=40, height=34)  # not a multiple of 16: partial tiles
    a_col = s["colors"].clone().requires_grad_(True)
    b_col = s["colors"].clone().requires_grad_(True)
    args = (s["means"], s["quats"], s["scales"], s["opacities"])
    a = rasterize_torch(*args, a_col, cams.world_to_cam, cams.K, cams.width, cams.height, sh_degree=degree,
                        block=block)
    b = rasterize_dense(*args, b_col, cams.world_to_cam, cams.K, cams.width, cams.height, sh_degree=degree)
    assert a.rgb.shape == (2, 34, 40, 3) and a.alpha.shape == a.depth.shape == (2, 34, 40, 1)
    assert float(a.alpha.max()) > 0.99  # the scene is dense enough that pixels terminate early
    assert torch.allclose(a.rgb, b.rgb, atol=2e-5)
    assert torch.allclose(a.alpha, b.alpha, atol=2e-5)
    covered = b.alpha > 1e-3
    assert torch.allclose(a.depth[covered], b.depth[covered], rtol=1e-4)
    weights = torch.randn(a.rgb.shape, generator=torch.Generator().manual_seed(1))
    (a.rgb * weights).sum().backward()
    (b.rgb * weights).sum().backward()
    assert float(a_col.grad.abs().max()) > 0.1
    assert torch.allclose(a_col.grad, b_col.grad, atol=1e-4)


def test_colour_gradient_matches_finite_difference():
    s = scene(n=60, degree=0)
    cams = cameras(1, 24, 24)
    col = s["colors"].double().requires_grad_(True)
    args = (s["means"], s["quats"], s["scales"], s["opacities"], cams.world_to_cam, cams.K, 24, 24)
    pl = plan(*args)
    out = shade(pl, col, s["means"], cams.world_to_cam, 0).rgb
    out.sum().backward()
    i = int(col.grad.abs().sum((1, 2)).argmax())
    bumped = col.detach().clone()
    bumped[i, 0, 1] += 1e-3
    delta = shade(pl, bumped, s["means"], cams.world_to_cam, 0).rgb.sum() - out.detach().sum()
    assert math.isclose(float(delta) / 1e-3, float(col.grad[i, 0, 1]), rel_tol=1e-4)


def test_background_depth_and_empty_views():
    s = scene(n=50, degree=0)
    cams = cameras(2, 32, 32)
    bg = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    r = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], cams.world_to_cam, cams.K, 32, 32,
                  sh_degree=0, backgrounds=bg)
    empty = r.alpha[..., 0] == 0
    assert empty.any() and torch.allclose(r.rgb[empty], bg[:, None, None].expand(2, 32, 32, 3)[empty])
    assert (r.depth[~empty] > 0.5).all() and (r.depth[~empty] < 6.5).all() and (r.depth[empty] == 0).all()
    away = cams.world_to_cam.clone()
    away[:, 2, 3] -= 100  # everything behind the cameras
    r = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], away, cams.K, 32, 32, sh_degree=0)
    assert float(r.alpha.abs().max()) == 0 and float(r.rgb.abs().max()) == 0


def test_geometry_gradients_are_refused():
    s = scene(n=10, degree=0)
    cams = cameras(1, 16, 16)
    with pytest.raises(ValueError, match="geometry"):
        rasterize_torch(s["means"].requires_grad_(True), s["quats"], s["scales"], s["opacities"], s["colors"],
                        cams.world_to_cam, cams.K, 16, 16, sh_degree=0)


@pytest.mark.gpu
@pytest.mark.parametrize("degree", [0, 3])
def test_cpu_path_matches_gsplat_rasterization(degree, tmp_path_factory, monkeypatch):
    """gsplat's CUDA rasterizer and our CPU path: same images, alphas, depths and colour gradients."""
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):  # gsplat JIT-compiles its kernels: not into ~/.cache
        monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.getbasetemp() / "torch-extensions"))
    s = scene(n=3000, degree=degree, seed=3)
    cams = cameras(3, 96, 80)
    grads, outs = [], []
    for device, engine in (("cuda", "gsplat"), ("cpu", "torch")):
        col = s["colors"].to(device).requires_grad_(True)
        r = rasterize(s["means"].to(device), s["quats"].to(device), s["scales"].to(device),
                      s["opacities"].to(device), col, cams.world_to_cam.to(device), cams.K.to(device), 96, 80,
                      sh_degree=degree, engine=engine)
        weights = torch.randn(r.rgb.shape, generator=torch.Generator().manual_seed(2)).to(device)
        (r.rgb * weights).sum().backward()
        outs.append([t.detach().cpu() for t in (r.rgb, r.alpha, r.depth)])
        grads.append(col.grad.cpu())
    (rgb_g, alpha_g, depth_g), (rgb_c, alpha_c, depth_c) = outs
    assert (rgb_g - rgb_c).abs().max() < 1e-3
    assert (alpha_g - alpha_c).abs().max() < 1e-3
    covered = (alpha_g > 0.5) & (alpha_c > 0.5)
    assert torch.allclose(depth_g[covered], depth_c[covered], rtol=1e-3)
    assert torch.allclose(grads[0], grads[1], atol=1e-3, rtol=1e-3)
