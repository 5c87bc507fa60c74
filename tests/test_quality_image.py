"""Quality with the real VGG-19 weights: a real photo and a real painting (skipped when either is absent)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import SHARED

PHOTO = SHARED / "assets" / "photos" / "tubingen.jpg"
PAINTING = SHARED / "assets" / "styles" / "starry_night.jpg"


@pytest.mark.slow
def test_real_photo_and_painting_style_distance_falls_by_more_than_half(real_weights, tmp_path):
    if not (PHOTO.is_file() and PAINTING.is_file()):
        pytest.skip("shared photo/painting not available")
    out, report = tmp_path / "out.png", tmp_path / "run.json"
    r = subprocess.run([sys.executable, "-m", "nst3d", "image", str(PHOTO), "--style", str(PAINTING), "--size", "128",
                        "--steps", "100", "--weights", str(real_weights), "--report", str(report), "-o", str(out),
                        "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    evaluation = data["evaluation"]
    assert evaluation["style_distance"]["after"] < 0.5 * evaluation["style_distance"]["before"]
    assert evaluation["content_distance"] < 1.0  # still the photo, not a copy of the painting
