"""Real-world inputs: phone photos stored sideways with an EXIF Orientation tag, OBJ/MTL files written on
Windows, and scenes with more texels than a float32 can index (2^24)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst3d.files import load_image
from nst3d.options import StyleOptions, load_styles
from nst3d.sampling import evenly_spaced_indices
from tests.mesh_data import checker, quad, write_glb

# ------------------------------------------------------------------------------------------ EXIF orientation


def upright_pattern() -> np.ndarray:
    """uint8 [32, 48, 3]: four flat quadrants (red, green / blue, white) plus a black notch in the top-left one,
    so every rotation and mirror of it is a different picture (flat blocks survive JPEG nearly unchanged)."""
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[:16, :24], image[:16, 24:] = (230, 30, 30), (30, 200, 40)
    image[16:, :24], image[16:, 24:] = (30, 40, 220), (240, 240, 240)
    image[2:8, 2:8] = 0
    return image


def stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for `upright` with EXIF Orientation `orientation` (TIFF/EXIF definition: where
    the stored 0th row and 0th column lie in the upright picture), written out here without Pillow."""
    a = upright
    return {
        1: a,                          # row 0 = top, column 0 = left
        2: a[:, ::-1],                 # top, right
        3: a[::-1, ::-1],              # bottom, right
        4: a[::-1, :],                 # bottom, left
        5: a.transpose(1, 0, 2),       # left, top
        6: np.rot90(a, 1),             # right, top (a phone held upright: stored landscape)
        7: a[::-1, ::-1].transpose(1, 0, 2),  # right, bottom
        8: np.rot90(a, -1),            # left, bottom
    }[orientation]


def tagged_jpeg(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored_for(upright_pattern(), orientation))).save(
        path, format="JPEG", quality=95, exif=exif)
    return path


def distance(rgb: torch.Tensor, array: np.ndarray) -> float:
    """Mean absolute difference of rgb [3, H, W] in [0, 1] from a uint8 [H, W, 3] picture (inf if shapes differ)."""
    expected = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255
    return float((rgb - expected).abs().mean()) if rgb.shape == expected.shape else float("inf")


def assert_upright(rgb: torch.Tensor, tolerance: float = 0.03) -> None:
    """rgb is the upright pattern, and clearly none of its other seven orientations."""
    distances = {k: distance(rgb, stored_for(upright_pattern(), k)) for k in range(1, 9)}
    assert distances[1] < tolerance, distances
    assert min(d for k, d in distances.items() if k != 1) > 0.1, distances


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_image_applies_exif_orientation(tmp_path, orientation):
    rgb, alpha = load_image(tagged_jpeg(tmp_path / f"photo{orientation}.jpg", orientation))
    assert alpha is None and rgb.shape == (3, 32, 48)
    assert_upright(rgb)


def test_textures_keep_their_stored_pixels(tmp_path):
    """UV layouts address the stored pixels (Blender and glTF viewers ignore the tag on textures), so a
    texture is read as stored, tag or not."""
    rgb, _ = load_image(tagged_jpeg(tmp_path / "texture.jpg", 6), "texture", upright=False)
    assert distance(rgb, stored_for(upright_pattern(), 6)) < 0.03


def test_damaged_exif_orientation_reads_as_stored(tmp_path):
    path = tmp_path / "odd.jpg"
    exif = Image.Exif()
    exif[0x0112] = 42  # not an orientation: shown as stored, as viewers do
    Image.fromarray(upright_pattern()).save(path, format="JPEG", quality=95, exif=exif)
    assert_upright(load_image(path)[0])


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_style_images_are_read_upright(tmp_path, orientation):
    style = tagged_jpeg(tmp_path / "style.jpg", orientation)
    (image,) = load_styles(StyleOptions(styles=[style], style_size=48))
    assert_upright(image)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_nst3d_image_stylizes_the_upright_photo(tmp_path, random_weights_file, orientation):
    """Through the CLI: the output has the upright photo's shape and layout (one tiny step from the content
    barely changes it)."""
    content = tagged_jpeg(tmp_path / "photo.jpg", orientation)
    style = tmp_path / "style.png"
    Image.fromarray(checker(32)).save(style)
    out = tmp_path / "out.png"
    result = subprocess.run([sys.executable, "-m", "nst3d", "image", str(content), "--style", str(style), "--size",
                             "48", "--steps", "1", "--lr", "0.001", "--weights", str(random_weights_file), "-o",
                             str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_upright(load_image(out)[0], tolerance=0.05)


# ----------------------------------------------------------------------------- indices past float32's 2^24


@pytest.mark.parametrize(("count", "keep"), [(35651584, 65536), (18_000_000, 65536), (2**24 + 3, 1000),
                                             (10, 4), (10, 10), (10, 30), (1, 5), (7, 1)])
def test_evenly_spaced_indices_are_exact(count, keep):
    picks = evenly_spaced_indices(count, keep)
    assert picks.dtype == torch.int64 and len(picks) == min(count, keep)
    assert picks[0] == 0 and (len(picks) == 1 or picks[-1] == count - 1)
    assert picks.max() < count and bool((picks.diff() > 0).all())
    if 1 < keep < count:  # evenly spread: gaps differ by at most one
        gaps = picks.diff()
        assert int(gaps.max() - gaps.min()) <= 1


def test_float32_linspace_is_what_broke():
    """The bug this replaces: at 35651584 texels, float32 linspace's last index is one past the end."""
    assert int(torch.linspace(0, 35651584 - 1, 65536).long()[-1]) == 35651584


def test_palette_samples_across_all_textures():
    from nst3d.pipelines.mesh import texture_palette as _palette

    shapes = [(4, 4), (2, 3), (5, 2)]
    textures = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(k)) for k, (h, w) in enumerate(shapes)]
    laid_end_to_end = torch.cat([t.reshape(3, -1) for t in textures], 1)  # [3, 32]
    assert torch.equal(_palette(textures, limit=12), laid_end_to_end[:, evenly_spaced_indices(32, 12)])
    assert torch.equal(_palette(textures, limit=1000), laid_end_to_end)


@pytest.mark.slow
def test_mesh_command_on_a_scene_past_two_to_the_24_texels(tmp_path, random_weights_file):
    """Two textured panels at --texture-size 3000: 18,000,000 texels, where a float32 linspace over the texel
    indices lands one past the end (an IndexError traceback before). The run must finish, with bounded memory."""
    positions, faces, uv = quad()
    scene = write_glb(tmp_path / "panels.glb", [
        {"name": f"Panel{k}", "positions": positions, "faces": faces, "uv": uv, "texture": checker(16),
         "translation": (1.2 * k, 0, 0)} for k in range(2)])
    style = tmp_path / "style.png"
    Image.fromarray(checker(32)).save(style)
    started = time.perf_counter()
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "nst3d", "mesh", str(scene), "--style", str(style),
                                    "--texture-size", "3000", "--size", "32", "--steps", "2", "--views", "1",
                                    "--weights", str(random_weights_file), "-o", str(tmp_path / "out"), "--quiet"],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
    seconds, peak_mb = time.perf_counter() - started, usage.ru_maxrss / 1024
    print(f"18M-texel mesh run: {seconds:.0f} s, peak RSS {peak_mb:.0f} MB")
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / "stderr.txt").read_text()
    assert load_image(tmp_path / "out" / "panels_styled_Panel0Mat.png", upright=False)[0].shape == (3, 3000, 3000)
    # the two textures are 216 MB of float32 each; the run holds a few copies (Adam's state, the export)
    assert peak_mb < 4000, peak_mb


# --------------------------------------------------------------------------------- OBJ/MTL written on Windows


def windows_obj(folder: Path, map_kd: str, texture_at: str | None, mtllib: str = "quad.mtl",
                mtl_at: str = "quad.mtl") -> Path:
    """quad.obj naming `mtllib {mtllib}`, its MTL written at {mtl_at} with `map_Kd {map_kd}`, and the checker
    texture written at {texture_at} (None: nowhere). Paths are relative to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    positions, faces, uv = quad()
    lines = [f"mtllib {mtllib}", "o Quad"] + [f"v {x} {y} {z}" for x, y, z in positions]
    lines += [f"vt {u} {1 - v}" for u, v in uv]
    lines += ["usemtl Paint"] + [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in faces]
    (folder / "quad.obj").write_text("\r\n".join(lines) + "\r\n")
    (folder / mtl_at).parent.mkdir(parents=True, exist_ok=True)
    (folder / mtl_at).write_text(f"newmtl Paint\r\nKd 1 1 1\r\nmap_Kd {map_kd}\r\n")
    if texture_at is not None:
        (folder / texture_at).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(checker(16)).save(folder / texture_at, format="PNG")
    return folder / "quad.obj"


WINDOWS_CASES = {  # id: (map_Kd argument, where the texture lies, mtllib, where the MTL lies, expected note or None)
    "dot-backslash": (".\\wood.png", "wood.png", "quad.mtl", "quad.mtl",
                      "texture .\\wood.png (named in quad.mtl) not found as written; using wood.png"),
    "drive-path-other-case": ("C:\\Users\\me\\proj\\textures\\Wood.PNG", "wood.png", "quad.mtl", "quad.mtl",
                              "texture C:\\Users\\me\\proj\\textures\\Wood.PNG (named in quad.mtl) not found as "
                              "written; using wood.png"),
    "drive-path-subfolder": ("C:\\Users\\me\\proj\\textures\\Wood.PNG", "textures/wood.png", "quad.mtl", "quad.mtl",
                             "texture C:\\Users\\me\\proj\\textures\\Wood.PNG (named in quad.mtl) not found as "
                             "written; using textures/wood.png"),
    "stray-folder": ("maps/wood.png", "wood.png", "quad.mtl", "quad.mtl",
                     "texture maps/wood.png (named in quad.mtl) not found as written; using wood.png"),
    "options": ("-s 1 1 1 -o 0.5 0 -bm 0.2 -clamp on wood.png", "wood.png", "quad.mtl", "quad.mtl", None),
    "spaces": ("old wood.png", "old wood.png", "quad.mtl", "quad.mtl", None),
    "options-spaces-case": ("-blendu off Old Wood.PNG", "old wood.png", "quad.mtl", "quad.mtl",
                            "texture Old Wood.PNG (named in quad.mtl) not found as written; using old wood.png"),
    "mtl-in-subfolder": ("wood.png", "materials/wood.png", "Materials\\Quad.mtl", "materials/quad.mtl",
                         "material library Materials\\Quad.mtl not found as written; using materials/quad.mtl"),
}


@pytest.mark.parametrize("case", WINDOWS_CASES)
def test_obj_textures_named_the_windows_way_are_found(tmp_path, case):
    from nst3d.backends.mesh.load import load_mesh

    map_kd, texture_at, mtllib, mtl_at, note = WINDOWS_CASES[case]
    asset = load_mesh(windows_obj(tmp_path / "proj", map_kd, texture_at, mtllib, mtl_at))
    slot = asset.slots[0]
    assert not slot.generated and slot.name == "Paint", asset.warnings
    expected = torch.from_numpy(checker(16)).permute(2, 0, 1).float() / 255
    assert torch.allclose(slot.texture, expected, atol=2e-3)  # the file's pixels reached the slot
    assert asset.warnings == ([note] if note else [])


def test_a_texture_found_nowhere_keeps_the_missing_texture_warning(tmp_path):
    from nst3d.backends.mesh.load import load_mesh

    asset = load_mesh(windows_obj(tmp_path / "proj", "C:\\Users\\me\\proj\\textures\\gone.png", "other.png"))
    assert asset.warnings == ["texture C:\\Users\\me\\proj\\textures\\gone.png (named in quad.mtl) not found: using "
                              "the base colour"]
    assert asset.slots[0].generated


@pytest.mark.parametrize(("argument", "name"), [
    ("wood.png", "wood.png"), ("-s 1 1 1 wood.png", "wood.png"), ("-o 0.5 wood.png", "wood.png"),
    ("-mm 0 1 -t 1 1 my wood.png", "my wood.png"), ("-imfchan r  a b.png", "a b.png"), ("-x.png", "-x.png"),
])
def test_map_file_name_skips_options(argument, name):
    from nst3d.backends.mesh.mtl import map_file_name

    assert map_file_name(argument) == name


def test_mesh_command_warns_with_the_texture_it_used(tmp_path, random_weights_file):
    obj = windows_obj(tmp_path / "proj", "C:\\Users\\me\\proj\\textures\\Wood.PNG", "wood.png")
    style = tmp_path / "style.png"
    Image.fromarray(checker(32)).save(style)
    result = subprocess.run([sys.executable, "-m", "nst3d", "mesh", str(obj), "--style", str(style), "--size", "32",
                             "--steps", "1", "--views", "1", "--weights", str(random_weights_file), "-o",
                             str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ("nst3d: warning: texture C:\\Users\\me\\proj\\textures\\Wood.PNG (named in quad.mtl) not found as "
            "written; using wood.png\n") in result.stderr
    styled = load_image(tmp_path / "out" / "quad_styled_Paint.png", upright=False)[0]
    # The file's 16 x 16 texture (not a new 1024 x 1024 one), raised to hold strokes at the stroke scale:
    side = styled.shape[-1]
    assert f"texture 'Paint' raised from 16 to {side} px" in result.stderr and 16 < side < 1024


def test_nnfm_style_tokens_are_an_even_subsample(vgg):
    """Two weighted styles at relu1_1 give more feature tokens than the cap: each keeps its share, evenly spread
    over its own tokens (the same integer helper as the mesh palette)."""
    import torch.nn.functional as F

    from nst3d.losses import NNFM_MAX_STYLE_TOKENS, StyleTarget

    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    target = StyleTarget.from_images(vgg, images, ["relu1_1"], weights=[0.75, 0.25])
    per_image = []
    for image, weight in zip(images, (0.75, 0.25), strict=True):
        f = vgg(image[None], ["relu1_1"])["relu1_1"]
        tokens = F.normalize(f[0].reshape(f.shape[1], -1).T, dim=-1)  # [16384, C]
        per_image.append(tokens[evenly_spaced_indices(len(tokens), int(NNFM_MAX_STYLE_TOKENS * weight))])
    assert torch.allclose(target.tokens["relu1_1"], torch.cat(per_image), atol=1e-6)
