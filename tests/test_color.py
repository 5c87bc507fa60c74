import torch

from nst3d.color import keep_content_chroma, luminance_style, match_color, rgb_to_yiq, yiq_to_rgb


def test_yiq_round_trip():
    rgb = torch.rand(3, 8, 8)
    assert torch.allclose(yiq_to_rgb(rgb_to_yiq(rgb)), rgb, atol=1e-5)


def test_luminance_mode_keeps_the_content_chroma():
    stylized, content = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    out = rgb_to_yiq(keep_content_chroma(stylized, content))
    assert torch.allclose(out[0], rgb_to_yiq(stylized)[0], atol=1e-5)
    assert torch.allclose(out[1:], rgb_to_yiq(content)[1:], atol=1e-5)


def test_luminance_style_is_gray_with_the_content_brightness():
    style = torch.rand(3, 16, 16)
    content = torch.full((3, 16, 16), 0.3) + 0.05 * torch.rand(3, 16, 16)
    gray = luminance_style(style, content)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    assert abs(gray.mean() - rgb_to_yiq(content)[0].mean()) < 0.02


def test_histogram_matching_moves_style_colours_to_the_content_palette():
    g = torch.Generator().manual_seed(0)
    style = torch.rand(3, 32, 32, generator=g) * torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1)  # reddish
    content = 0.3 + 0.3 * torch.rand(3, 32, 32, generator=g) * torch.tensor([0.1, 0.3, 1.0]).view(3, 1, 1)
    out = match_color(style, content)
    assert torch.allclose(out.reshape(3, -1).mean(1), content.reshape(3, -1).mean(1), atol=0.02)
    assert torch.allclose(torch.cov(out.reshape(3, -1)), torch.cov(content.reshape(3, -1)), atol=2e-3)


def test_gray_is_the_luminance_in_three_channels():
    from nst3d.color import gray

    images = torch.rand(2, 3, 4, 5)
    out = gray(images)
    assert out.shape == images.shape and torch.allclose(out[:, 0], out[:, 2])
    assert torch.allclose(out[1, 0], rgb_to_yiq(images[1])[0], atol=1e-6)
