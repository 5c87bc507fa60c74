"""Shared fixtures: a seeded random-weight VGG for mechanics, the real shared weights for quality checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nst3d.features import random_vgg

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NST3D_SHARED", REPO.parent / "shared"))
REAL_WEIGHTS = SHARED / "weights" / "vgg19-caffe-conv1_1-conv3_4.pth"


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def vgg():
    """A small seeded random-weight VGG-19 up to relu3_4 (mechanics only, not quality)."""
    torch.manual_seed(0)
    return random_vgg(seed=0, up_to="relu3_4")


@pytest.fixture(scope="session")
def real_weights() -> Path:
    """The exact VGG-19 conv1_1..conv3_4 weights from ../shared, or skip."""
    if not REAL_WEIGHTS.is_file():
        pytest.skip(f"real VGG-19 weights not found at {REAL_WEIGHTS}")
    return REAL_WEIGHTS


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path_factory, monkeypatch):
    """Never let a test download weights or write to ~/.cache."""
    hub = tmp_path_factory.getbasetemp() / "torch-hub"
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.delenv("NST3D_VGG19_WEIGHTS", raising=False)


@pytest.fixture(scope="session")
def random_weights_file(tmp_path_factory, vgg) -> Path:
    """The random VGG saved as a torchvision-layout state_dict (conv1_1..conv3_4), for CLI tests."""
    path = tmp_path_factory.mktemp("weights") / "vgg19-random.pth"
    torch.save({f"features.{k}": v for k, v in vgg.net.state_dict().items()}, path)
    return path


@pytest.fixture
def tf32_matmul():
    """Float32 matrix products in TF32 for the test, as a user or another library may set them (restored
    after); yields (attribute name, the TF32 value, the IEEE value) of torch.backends.cuda.matmul."""
    matmul = torch.backends.cuda.matmul
    name, tf32, ieee = (("fp32_precision", "tf32", "ieee") if hasattr(matmul, "fp32_precision")
                        else ("allow_tf32", True, False))
    saved = getattr(matmul, name)
    setattr(matmul, name, tf32)
    yield name, tf32, ieee
    setattr(matmul, name, saved)
