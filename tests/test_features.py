import pytest
import torch

from nst3d.errors import UserError
from nst3d.features import (
    LAYER_INDEX,
    LAYER_NAMES,
    VGGFeatures,
    build_vgg19_features,
    default_layers,
    load_vgg,
    resolve_weights,
)


def test_layer_names_follow_torchvision_indices():
    # torchvision: features.0 conv1_1, .1 relu1_1, .4 pool1, .20 relu4_1, .21 conv4_2, .29 relu5_1, .36 pool5
    assert LAYER_INDEX["conv1_1"] == 0 and LAYER_INDEX["relu1_1"] == 1 and LAYER_INDEX["pool1"] == 4
    assert LAYER_INDEX["relu3_1"] == 11 and LAYER_INDEX["conv3_4"] == 16
    assert LAYER_INDEX["relu4_1"] == 20 and LAYER_INDEX["conv4_2"] == 21 and LAYER_INDEX["relu5_1"] == 29
    assert len(LAYER_NAMES) == 37
    net = build_vgg19_features()
    assert isinstance(net[21], torch.nn.Conv2d) and net[21].in_channels == 512
    assert isinstance(net[36], torch.nn.MaxPool2d)


def test_taps_have_expected_shapes(vgg):
    out = vgg(torch.rand(2, 3, 32, 32), ["relu1_1", "relu2_1", "relu3_1"])
    assert out["relu1_1"].shape == (2, 64, 32, 32)
    assert out["relu2_1"].shape == (2, 128, 16, 16)
    assert out["relu3_1"].shape == (2, 256, 8, 8)


def test_an_image_too_small_for_the_deepest_tap_is_a_user_error(vgg):
    assert vgg(torch.rand(1, 3, 4, 4), ["relu3_1"])["relu3_1"].shape == (1, 256, 1, 1)  # two pools: 4 px is enough
    with pytest.raises(UserError, match="3x4 px image is too small for VGG layer relu3_1.*needs 4 px"):
        vgg(torch.rand(1, 3, 4, 3), ["relu1_1", "relu3_1"])
    assert vgg(torch.rand(1, 3, 2, 2), ["relu2_1"])["relu2_1"].shape == (1, 128, 1, 1)


def test_only_layers_up_to_the_deepest_tap_run(vgg):
    calls = []
    hooks = [m.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, m in enumerate(vgg.net)]
    vgg(torch.rand(1, 3, 16, 16), ["relu2_1"])
    for h in hooks:
        h.remove()
    assert max(calls) == LAYER_INDEX["relu2_1"]


def test_partial_weights_load_and_deeper_taps_fail_with_the_available_list(random_weights_file):
    vgg = load_vgg(random_weights_file)
    assert vgg.available[-1] == "relu3_4" and vgg.preprocess == "torchvision"
    assert default_layers(vgg) == (["relu1_1", "relu2_1", "relu3_1"], "relu3_2")
    with pytest.raises(UserError, match=r"relu4_1.*deeper.*available: .*relu3_4"):
        vgg.check_taps(["relu4_1"])
    with pytest.raises(UserError, match="unknown VGG-19 layer 'relu9_9'"):
        vgg.check_taps(["relu9_9"])


def test_caffe_preprocessing_is_bgr_0_255_mean_only():
    state = {f"features.0.{k}": v for k, v in torch.nn.Conv2d(3, 64, 3).state_dict().items()}
    vgg = VGGFeatures(state, "caffe")
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    expected = torch.tensor([0.0 - 103.939, 127.5 - 116.779, 255.0 - 123.68]).view(1, 3, 1, 1)
    assert torch.allclose(vgg.normalize(rgb), expected, atol=1e-3)


def test_explicit_path_env_and_missing_file(tmp_path, monkeypatch, random_weights_file):
    assert resolve_weights(random_weights_file) == random_weights_file
    monkeypatch.setenv("NST3D_VGG19_WEIGHTS", str(random_weights_file))
    assert resolve_weights() == random_weights_file
    with pytest.raises(UserError, match="not found"):
        resolve_weights(tmp_path / "nope.pth")


def test_no_weights_and_no_network_says_where_to_put_the_file(monkeypatch):
    monkeypatch.setattr("nst3d.features.TORCHVISION_URL", "http://127.0.0.1:9/vgg19.pth")
    with pytest.raises(UserError, match=r"(?i)cannot download.*put vgg19-dcbb9e9d.pth in .*checkpoints") as info:
        resolve_weights()
    assert "\n" not in str(info.value)


def test_corrupt_weights_file_is_a_user_error(tmp_path):
    bad = tmp_path / "vgg.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read VGG-19 weights"):
        load_vgg(bad)
