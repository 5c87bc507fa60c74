"""The `nst3d image` command end to end, in a subprocess, as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from nst3d.files import load_image


def nst3d(*args, env_extra=None, **kwargs):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "nst3d", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    content = folder / "content.png"
    Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(content)
    style_a, style_b = folder / "a.jpg", folder / "b.png"
    Image.fromarray((np.indices((40, 40)).sum(0) % 8 < 4).astype(np.uint8) * 255).convert("RGB").save(style_a)
    Image.fromarray((rng.random((40, 40, 3)) * 80).astype(np.uint8)).save(style_b)
    return folder, content, style_a, style_b


def assert_clean_error(result, pattern):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nst3d: error: "), result.stderr
    assert "Traceback" not in result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


def test_image_writes_output_and_report(images, random_weights_file, tmp_path):
    folder, content, style_a, style_b = images
    out, report = tmp_path / "out.png", tmp_path / "run.json"
    r = nst3d("image", content, "--style", style_a, "--style", style_b, "--style-weights", "0.7,0.3",
              "--preserve-color", "luminance", "--size", 32, "--steps", 4, "--weights", random_weights_file,
              "--report", report, "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert load_image(out)[0].shape == (3, 27, 32)
    data = json.loads(report.read_text())
    for key in ("seconds", "steps", "device", "peak_memory_mb", "evaluation", "details"):
        assert key in data
    evaluation = data["evaluation"]
    assert set(evaluation["style_distance"]) == {"before", "after"} and data["steps"] == 4
    assert evaluation["content_distance"] >= 0 and evaluation["consistency"] is None  # a 2D image has no views
    assert data["outputs"]["image"] == str(out) and data["options"]["preserve_color"] == "luminance"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "run.json"]


def test_num_outputs_writes_variations(images, random_weights_file, tmp_path):
    folder, content, style_a, _ = images
    r = nst3d("image", content, "--style", style_a, "--size", 24, "--steps", 3, "--init", "noise",
              "--num-outputs", 2, "--weights", random_weights_file, "-o", tmp_path / "v.png", "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = load_image(tmp_path / "v_1.png")[0], load_image(tmp_path / "v_2.png")[0]
    assert not np.allclose(a.numpy(), b.numpy())
    same = nst3d("image", content, "--style", style_a, "--size", 24, "--steps", 3, "--num-outputs", 2, "--weights",
                 random_weights_file, "-o", tmp_path / "w.png")  # from the content, every seed is the same image
    assert_clean_error(same, "--num-outputs needs --init noise")


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "16bit", "palette"])
def test_unusual_but_valid_images_work(images, random_weights_file, tmp_path, kind):
    folder, _, style_a, _ = images
    rng = np.random.default_rng(1)
    path = tmp_path / f"{kind}.png"
    if kind == "grayscale":
        Image.fromarray((rng.random((30, 30)) * 255).astype(np.uint8), "L").save(path)
    elif kind == "rgba":
        Image.fromarray((rng.random((30, 30, 4)) * 255).astype(np.uint8), "RGBA").save(path)
    elif kind == "16bit":
        Image.fromarray((rng.random((30, 30)) * 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).convert("P").save(path)
    rgb, alpha = load_image(path)
    assert rgb.shape == (3, 30, 30) and 0 <= rgb.min() and rgb.max() <= 1
    if kind == "16bit":
        assert rgb.max() > 0.9  # scaled from 16-bit, not clipped to white or left at 1/257
    out = tmp_path / "out.png"
    r = nst3d("image", path, "--style", style_a, "--size", 24, "--steps", 2, "--weights", random_weights_file,
              "-o", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert Image.open(out).mode == ("RGBA" if kind == "rgba" else "RGB")


def test_bad_inputs_give_one_line_errors_and_write_nothing(images, random_weights_file, tmp_path):
    folder, content, style_a, _ = images
    w = ["--weights", random_weights_file, "--size", 24, "--steps", 2]
    out = tmp_path / "out.png"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    huge = tmp_path / "huge.png"
    Image.new("L", (12000, 9000)).save(huge)  # 108 MP, small on disk
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (("image", tmp_path / "missing.png", "--style", style_a, *w, "-o", out), "content image not found"),
        (("image", corrupt, "--style", style_a, *w, "-o", out), "not a readable image"),
        (("image", content, "--style", corrupt, *w, "-o", out), "cannot read style image"),
        (("image", huge, "--style", style_a, *w, "-o", out), "12000x9000.*downscale"),
        (("image", content, "--style", style_a, *w, "--style-layers", "relu1_1,relu4_1", "-o", out),
         "relu4_1.*deeper.*available"),
        (("image", content, "--style", style_a, *w, "--content-layer", "bogus", "-o", out), "unknown VGG-19 layer"),
        (("image", content, "--style", style_a, *w, "-o", out.with_suffix(".xyz")), "unsupported output type"),
        (("image", content, "--style", style_a, *w, "-o", content), "also an input"),
        (("image", content, "--style", style_a, "--style-weights", "1,2", *w, "-o", out), "2 values for 1"),
        (("image", content, "--style", style_a, *w, "--weights", tmp_path / "none.pth", "-o", out),
         "weights file not found"),
        (("image", content, "--style", style_a, *w, "--style-size", 3, "-o", out), "too small for VGG.*--style-size"),
        (("image", content, "--style", style_a, *w, "--multiscale", 3, "-o", out), "too many levels.*use at most 1"),
        (("image", content, "--style", style_a, *w, "--size", 100000, "-o", out),
         r"--size 100000 needs about \d+ GB of memory for VGG, and \d+ GB is free.*lower --size"),
        (("image", content, "--style", style_a, *w, "--style-size", 60000, "-o", out), "lower --style-size"),
    ]
    if os.geteuid() != 0:  # root can write anywhere
        cases.append((("image", content, "--style", style_a, *w, "-o", locked / "out.png"), "not writable"))
    for args, pattern in cases:
        assert_clean_error(nst3d(*args), pattern)
    for option in ("--steps", "--repeats"):  # were a ZeroDivisionError / StatisticsError traceback
        r = nst3d("bench", "image", option, 0)
        assert r.returncode == 2 and "Traceback" not in r.stderr and f"{option}: must be at least 1" in r.stderr
    # Values argparse refuses: its usage, then the one line that says what is wrong.
    for option, value, pattern in (("--lr", "nan", "--lr: must be a positive number"),
                                   ("--strength", "1e30", "--strength: must be at most"),
                                   ("--tv-weight", "inf", "--tv-weight: must be a number that is not negative")):
        r = nst3d("image", content, "--style", style_a, *w, option, value, "-o", out)
        assert r.returncode == 2 and "Traceback" not in r.stderr and pattern in r.stderr.strip().splitlines()[-1]
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_unwritable_output_folder(images, random_weights_file, tmp_path):
    folder, content, style_a, _ = images
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    r = nst3d("image", content, "--style", style_a, "--weights", random_weights_file, "-o", blocker / "out.png")
    assert_clean_error(r, "not writable|cannot write")
    if os.path.isdir("/proc"):  # a folder that exists but takes no new entries, even for root
        r = nst3d("image", content, "--style", style_a, "--weights", random_weights_file, "-o",
                  "/proc/nst3d-test/out.png")
        assert_clean_error(r, "cannot create the folder /proc/nst3d-test")


def test_ctrl_c_stops_cleanly_and_leaves_no_output(images, random_weights_file, tmp_path):
    folder, content, style_a, _ = images
    out = tmp_path / "out.png"
    proc = subprocess.Popen([sys.executable, "-m", "nst3d", "image", str(content), "--style", str(style_a),
                             "--size", "40", "--steps", "100000", "--weights", str(random_weights_file), "-o",
                             str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    line = ""
    while "stylizing" not in line and time.time() < deadline:  # wait until the loop runs
        line = proc.stderr.read(64)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "cancelled" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay", [0.3, 0.9])
def test_ctrl_c_while_starting_up_is_a_clean_cancel(images, random_weights_file, tmp_path, delay):
    """Ctrl-C while torch and the engines import (about the first 1.5 s) used to print a KeyboardInterrupt
    traceback, abort inside a C extension, or be swallowed so that the run finished anyway."""
    folder, content, style_a, _ = images
    proc = subprocess.Popen([sys.executable, "-m", "nst3d", "image", str(content), "--style", str(style_a),
                             "--size", "40", "--steps", "100000", "--weights", str(random_weights_file), "-o",
                             str(tmp_path / "out" / "out.png")], stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "cancelled" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_image_demo_runs_on_the_built_in_picture(random_weights_file, tmp_path):
    r = nst3d("demo", "--image", "-o", tmp_path / "demo", "--steps", 2, "--size", 32, "--weights", random_weights_file,
              "--quiet")
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"stylized.png", "contact_sheet.png", "report.json", "inputs"} <= names
    failed = nst3d("demo", "--image", "-o", tmp_path / "failed", "--weights", tmp_path / "nope.pth", "--quiet")
    assert_clean_error(failed, "weights file not found")
    assert not (tmp_path / "failed").exists()  # its sample inputs, written first, went with it


@pytest.mark.slow
def test_scene_demo_writes_a_glb_contact_sheet_turntable_and_report(random_weights_file, tmp_path):
    r = nst3d("demo", "-o", tmp_path / "demo", "--steps", 2, "--size", 48, "--weights", random_weights_file,
              "--quiet")
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"contact_sheet.png", "turntable.gif", "report.json", "inputs"} <= names
    assert any(name.endswith("_styled.glb") for name in names)
