"""The CPU splat renderer: the tiled, culled compositor against a dense every-pixel-every-Gaussian reference, against
gsplat's own `rasterization` run on the CPU over its pure-PyTorch reference functions (against gsplat's CUDA kernels:
tests/test_splat_gpu.py). Scenes are made here: small random Gaussians in front of the cameras."""

import math

import pytest
import torch

from nst3d.backends.splat.render import ieee_matmul, plan, rasterize, rasterize_dense, rasterize_torch, shade
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

def test_planning_holds_matrix_products_to_ieee_and_restores_the_process_choice(tf32_matmul, monkeypatch):
    """TF32 cannot be seen on a CPU (the CUDA comparison is tests/test_splat_gpu.py); the setting's round trip can.
    Planning also runs without autograd (the geometry is fixed)."""
    import nst3d.backends.splat.render as render_module

    matmul, (name, tf32, ieee) = torch.backends.cuda.matmul, tf32_matmul
    inside = []
    real_project = render_module.project
    monkeypatch.setattr(render_module, "project", lambda *a, **k: inside.append(
        (torch.is_grad_enabled(), getattr(matmul, name))) or real_project(*a, **k))
    seen = []
    with pytest.raises(RuntimeError), ieee_matmul():
        seen.append(getattr(matmul, name))
        raise RuntimeError("a failing render")
    assert seen == [ieee] and getattr(matmul, name) == tf32
    s, cams = scene(n=20, degree=0), cameras(1, 16, 16)
    planned = plan(s["means"].requires_grad_(True), s["quats"], s["scales"], s["opacities"], cams.world_to_cam,
                   cams.K, 16, 16)
    assert getattr(matmul, name) == tf32 and inside == [(False, ieee)] and not planned.weights.requires_grad


class TileKernel:
    """Stands in for gsplat's `_RasterizeToPixels` autograd function (the one CUDA kernel gsplat has no CPU version
    of: its `_torch_impl._rasterize_to_pixels` calls CUDA through nerfacc): the kernel's rule, tile by tile, over the
    tile lists gsplat itself built. A pixel (centre at +0.5) takes alpha = min(0.999, opacity exp(-sigma)), skips
    sigma < 0 or alpha < 1/255, stops before the Gaussian that would bring T to 1e-4 or below, and adds T times the
    background. Differentiable through autograd."""

    @staticmethod
    def apply(means2d, conics, colors, opacities, backgrounds, masks, width, height, tile_size, isect_offsets,
              flatten_ids, absgrad):
        assert masks is None and not absgrad
        cams, n = means2d.shape[:2]
        m2d, con = means2d.reshape(cams * n, 2), conics.reshape(cams * n, 3)
        col, op = colors.reshape(cams * n, -1), opacities.reshape(cams * n)
        tiles_y, tiles_x = isect_offsets.shape[1:]
        bounds = [*isect_offsets.flatten().tolist(), len(flatten_ids)]
        local = torch.arange(tile_size * tile_size)
        rows_rgb, rows_alpha = [], []
        for k in range(cams * tiles_y * tiles_x):
            c, ty, tx = k // (tiles_y * tiles_x), k // tiles_x % tiles_y, k % tiles_x
            ids = flatten_ids[bounds[k]:bounds[k + 1]].long()  # depth sorted by gsplat's isect ids
            xs = (tx * tile_size + local % tile_size + 0.5)[:, None]
            ys = (ty * tile_size + local // tile_size + 0.5)[:, None]
            dx, dy = xs - m2d[ids, 0], ys - m2d[ids, 1]
            sigma = 0.5 * (con[ids, 0] * dx**2 + con[ids, 2] * dy**2) + con[ids, 1] * dx * dy
            alpha = (op[ids] * torch.exp(-sigma)).clamp(max=0.999)
            alpha = alpha.where((sigma >= 0) & (alpha >= 1 / 255), 0.0)
            t_after = torch.cumprod(1 - alpha, dim=-1)
            t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=-1)
            weight = alpha * t_before * (t_after > 1e-4)  # [pixels, list]
            accumulated = weight.sum(-1, keepdim=True)
            rgb = weight @ col[ids]
            if backgrounds is not None:
                rgb = rgb + (1 - accumulated) * backgrounds[c]
            rows_rgb.append(rgb.reshape(tile_size, tile_size, -1))
            rows_alpha.append(accumulated.reshape(tile_size, tile_size, 1))

        def image(tiles):
            grid = torch.stack(tiles).reshape(cams, tiles_y, tiles_x, tile_size, tile_size, -1)
            full = grid.permute(0, 1, 3, 2, 4, 5).reshape(cams, tiles_y * tile_size, tiles_x * tile_size, -1)
            return full[:, :height, :width]

        return image(rows_rgb), image(rows_alpha)


@pytest.fixture
def gsplat_on_cpu(monkeypatch):
    """gsplat's real `rasterization` (argument checks, SH, "RGB+ED" channel and background handling, its
    rasterize_to_pixels wrapper's checks and padding, depth normalisation) on the CPU: the CUDA functions it calls
    are replaced by gsplat's pure-PyTorch reference implementations (gsplat/cuda/_torch_impl.py), and the pixel
    kernel by TileKernel."""
    import gsplat.cuda._wrapper as wrapper
    import gsplat.rendering as rendering
    from gsplat.cuda import _torch_impl as ref

    def projection(means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01,
                   far_plane=1e10, radius_clip=0.0, packed=False, sparse_grad=False, calc_compensations=False,
                   camera_model="pinhole"):
        assert covars is None and not packed and radius_clip == 0
        covars = ref._quat_scale_to_covar_preci(quats, scales, True, False, triu=False)[0]
        return ref._fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                                           calc_compensations, camera_model)

    def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, packed=False, **_):
        assert not packed
        return ref._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort)

    monkeypatch.setattr(rendering, "fully_fused_projection", projection)
    monkeypatch.setattr(rendering, "isect_tiles", isect_tiles)
    monkeypatch.setattr(rendering, "isect_offset_encode", ref._isect_offset_encode)
    monkeypatch.setattr(rendering, "spherical_harmonics",
                        lambda degree, dirs, coeffs, masks=None: ref._spherical_harmonics(degree, dirs, coeffs))
    monkeypatch.setattr(wrapper, "_RasterizeToPixels", TileKernel)


@pytest.mark.parametrize("degree,clamp,with_background", [(0, True, True), (3, True, True), (3, False, True),
                                                          (1, False, False)])
def test_gsplat_pipeline_matches_tiled_compositor_on_cpu(gsplat_on_cpu, degree, clamp, with_background):
    """Our gsplat call (engine="gsplat": backgrounds, "RGB+ED", unclamped SH) through gsplat's own pipeline on the CPU,
    against the tiled compositor: same images, alphas, depths and colour gradients. (It failed on the backgrounds:
    we appended the depth channel's zero as gsplat does too, and gsplat's wrapper asserted 5 channels for 4.)"""
    s = scene(n=150, degree=degree, seed=5)
    s["colors"][:, 0] -= 0.8  # some colours below 0, where clamping matters
    cams = cameras(2, 40, 34)
    bg = torch.tensor([[0.2, 0.9, 0.4], [1.0, 1.0, 1.0]]) if with_background else None
    outs, grads = [], []
    for engine in ("gsplat", "torch"):
        col = s["colors"].clone().requires_grad_(True)
        r = rasterize(s["means"], s["quats"], s["scales"], s["opacities"], col, cams.world_to_cam, cams.K, 40, 34,
                      sh_degree=degree, backgrounds=bg, engine=engine, clamp=clamp)
        weights = torch.randn(r.rgb.shape, generator=torch.Generator().manual_seed(4))
        (r.rgb * weights).sum().backward()
        outs.append((r.rgb.detach(), r.alpha, r.depth))
        grads.append(col.grad)
    (rgb_g, alpha_g, depth_g), (rgb_t, alpha_t, depth_t) = outs
    assert rgb_g.shape == (2, 34, 40, 3) and float(alpha_g.max()) > 0.9 and float(alpha_g.min()) == 0
    if not clamp:
        assert float(rgb_g.min()) < -0.01  # the unclamped colours did reach the image
    assert torch.allclose(rgb_g, rgb_t, atol=2e-5)
    assert torch.allclose(alpha_g, alpha_t, atol=2e-5)
    assert torch.allclose(depth_g, depth_t, rtol=1e-4, atol=1e-5)
    assert float(grads[1].abs().max()) > 0.1
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
