"""Compressed splat formats: SuperSplat/PlayCanvas compressed PLY and Niantic .spz (v2, v3, v4) decode to the same
in-memory INRIA splat. Small files are written here by encoders that follow the formats' documentation (not by
inverting our readers) and must read back within the formats' quantisation; the two shared encodings of one real
scene must agree with each other; broken files are one-line errors (exit 2, nothing written)."""

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst3d.backends.splat.compressed import write_compressed_ply
from nst3d.backends.splat.formats import read_any_splat, splat_format
from nst3d.backends.splat.ply import SH_C0, read_splat, save_gaussians
from nst3d.batch.jobs import infer_backend
from nst3d.cli import main
from nst3d.commands.render import asset_kind
from nst3d.errors import UserError

from .conftest import SHARED

BIKER = SHARED / "assets" / "splats" / "biker"
# Sign of each real SH basis function (degrees 1..3, gsplat/3DGS order) under (x, y, z) -> (x, -y, -z), the flip
# between spz's right-up-back frame and the PLY's right-down-front: read off the basis polynomials
# (-y, z, -x | xy, yz, 3z^2 - 1, xz, x^2 - y^2 | y(3x^2 - y^2), xyz, y(4z^2 - x^2 - y^2), z(2z^2 - 3x^2 - 3y^2),
# x(4z^2 - x^2 - y^2), z(x^2 - y^2), x(x^2 - 3y^2)).
SH_FLIP = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], np.float32)


def gaussians(n: int, degree: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Known Gaussians in the PLY frame, inside every format's range: INRIA columns as float32 arrays."""
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    k = (degree + 1) ** 2 - 1
    return {"means": rng.uniform(-2, 2, (n, 3)), "log_scales": rng.uniform(-6, -1, (n, 3)), "quats": quats,
            "opacity": rng.uniform(-4, 4, n), "sh_dc": rng.uniform(-1.5, 1.5, (n, 3)),
            "sh_rest": rng.uniform(-0.9, 0.9, (n, k, 3))}


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# -------------------------------------------------------------- .spz encoder (nianticlabs/spz README)

def spz_attributes(g: dict, version: int) -> list[bytes]:
    """positions, alphas, colours, scales, rotations, SH as spz stores them, in its right-up-back frame."""
    flip = np.array([1.0, -1.0, -1.0])
    fixed = np.round(g["means"] * flip * 4096).astype(np.int64) & 0xFFFFFF  # 24-bit two's complement, 12 fraction bits
    positions = np.stack([fixed & 255, (fixed >> 8) & 255, fixed >> 16], -1).astype(np.uint8)
    alphas = to_uint8(255 / (1 + np.exp(-g["opacity"])))
    colors = to_uint8(g["sh_dc"] * 0.15 * 255 + 127.5)
    scales = to_uint8((g["log_scales"] + 10) * 16)
    xyzw = np.concatenate([g["quats"][:, 1:] * flip, g["quats"][:, :1]], axis=1)  # spz order x, y, z, w
    if version == 2:
        xyzw *= np.where(xyzw[:, 3:] < 0, -1, 1)
        rotations = to_uint8(xyzw[:, :3] * 127.5 + 127.5).tobytes()
    else:
        words = []
        for q in xyzw:
            largest = int(np.argmax(np.abs(q)))
            negate = q[largest] < 0
            word = largest
            for i in range(4):
                if i != largest:
                    magnitude = int(511 * abs(q[i]) / math.sqrt(0.5) + 0.5)
                    word = (word << 10) | ((int(q[i] < 0) ^ int(negate)) << 9) | magnitude
            words.append(word)
        rotations = np.array(words, "<u4").tobytes()
    dim = g["sh_rest"].shape[1]
    sh = to_uint8(g["sh_rest"] * SH_FLIP[:dim, None] * 128 + 128)  # [n, coefficient, channel]: channel inner
    out = [positions.tobytes(), alphas.tobytes(), colors.tobytes(), scales.tobytes(), rotations]
    return out + [sh.tobytes()] if dim else out


def write_spz(path: Path, g: dict, version: int, degree: int) -> None:
    n = len(g["means"])
    attributes = spz_attributes(g, version)
    if version < 4:
        header = struct.pack("<IIIBBBB", 0x5053474E, version, n, degree, 12, 0, 0)
        path.write_bytes(gzip.compress(header + b"".join(attributes)))
        return
    import zstandard

    frames = [zstandard.ZstdCompressor().compress(a) for a in attributes]
    header = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, n, degree, 12, 0, len(frames), 32)
    toc = b"".join(struct.pack("<QQ", len(f), len(a)) for f, a in zip(frames, attributes, strict=True))
    path.write_bytes(header + toc + b"".join(frames))


# ------------------------------------------------ compressed PLY encoder (PlayCanvas splat-transform's writer)

def pack_unorm(v: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(v * top + 0.5), 0, top).astype(np.uint32)


def normalize(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.where(hi - lo < 1e-5, 0.0, (v - lo) / max(hi - lo, 1e-30)).clip(0, 1)


def write_compressed(path: Path, g: dict, chunk_colors: bool = True) -> None:
    n, chunks, words = len(g["means"]), [], []
    rgb = g["sh_dc"] * SH_C0 + 0.5
    for start in range(0, n, 256):
        s = slice(start, min(n, start + 256))
        p, sc, c = g["means"][s], g["log_scales"][s], rgb[s]
        bounds = [p.min(0), p.max(0), sc.min(0), sc.max(0)] + ([c.min(0), c.max(0)] if chunk_colors else [])
        chunks.append(np.concatenate(bounds))
        position = [pack_unorm(normalize(p[:, i], bounds[0][i], bounds[1][i]), b) for i, b in enumerate((11, 10, 11))]
        scale = [pack_unorm(normalize(sc[:, i], bounds[2][i], bounds[3][i]), b) for i, b in enumerate((11, 10, 11))]
        color = [pack_unorm(normalize(c[:, i], bounds[4][i], bounds[5][i]) if chunk_colors else c[:, i], 8)
                 for i in range(3)]
        alpha = pack_unorm(1 / (1 + np.exp(-g["opacity"][s])), 8)
        rotation = []
        for q in g["quats"][s]:  # rot_0..rot_3 = w, x, y, z
            largest = int(np.argmax(np.abs(q)))
            q = -q if q[largest] < 0 else q
            word = largest
            for i in range(4):
                if i != largest:
                    word = (word << 10) | int(pack_unorm(np.array(q[i] * math.sqrt(2) * 0.5 + 0.5), 10))
            rotation.append(word)
        words.append(np.stack([(position[0] << 21) | (position[1] << 11) | position[2], np.array(rotation, np.uint32),
                               (scale[0] << 21) | (scale[1] << 11) | scale[2],
                               (color[0] << 24) | (color[1] << 16) | (color[2] << 8) | alpha], 1).astype("<u4"))
    names = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "min_scale_x", "min_scale_y", "min_scale_z",
             "max_scale_x", "max_scale_y", "max_scale_z"] + (
                ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"] if chunk_colors else [])
    rest = g["sh_rest"].transpose(0, 2, 1).reshape(n, -1)  # channel-major f_rest_*
    header = ["ply", "format binary_little_endian 1.0", f"element chunk {len(chunks)}",
              *[f"property float {name}" for name in names], f"element vertex {n}",
              *[f"property uint {name}" for name in ("packed_position", "packed_rotation", "packed_scale",
                                                    "packed_color")]]
    if rest.shape[1]:
        header += [f"element sh {n}", *[f"property uchar f_rest_{i}" for i in range(rest.shape[1])]]
    sh = np.clip(np.trunc((rest / 8 + 0.5) * 256), 0, 255).astype(np.uint8)
    path.write_bytes(("\n".join(header) + "\nend_header\n").encode() + np.array(chunks, "<f4").tobytes()
                     + np.concatenate(words).tobytes() + (sh.tobytes() if rest.shape[1] else b""))


def rotation_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.degrees(2 * np.arccos(np.clip(np.abs((a * b).sum(1)), 0, 1)))


def check_decoded(splat, g: dict, position: float, log_scale: float, color: float, degrees: float, sh: float):
    """The decoded splat against the known Gaussians, each within the format's stated step."""
    sigmoid = 1 / (1 + np.exp(-g["opacity"]))
    assert splat.count == len(g["means"]) and splat.sh_degree == int(math.isqrt(g["sh_rest"].shape[1] + 1)) - 1
    assert np.abs(splat.means().numpy() - g["means"]).max() <= position
    assert np.abs(splat.log_scales().numpy() - g["log_scales"]).max() <= log_scale
    assert np.abs(torch.sigmoid(splat.opacity_logits()).numpy() - sigmoid).max() <= 0.5 / 255 + 1e-6
    assert np.abs(splat.sh_dc().numpy() * SH_C0 - g["sh_dc"] * SH_C0).max() <= color
    if degrees is None:  # spz v2 stores x, y, z in 8 bits and derives w >= 0 (coarse where w is small)
        quats = g["quats"] * np.where(g["quats"][:, :1] < 0, -1, 1)
        assert np.abs(splat.quats().numpy()[:, 1:] - quats[:, 1:]).max() <= 0.5 / 127.5 + 1e-6
    else:
        assert rotation_degrees(splat.quats().numpy(), g["quats"]).max() <= degrees
    assert np.abs(splat.sh_rest().numpy() - g["sh_rest"]).max(initial=0.0) <= sh


@pytest.mark.parametrize("version,degree", [(2, 1), (3, 3), (3, 0), (4, 2), (4, 0)])
def test_spz_round_trip(tmp_path, version, degree):
    g = gaussians(300, degree, seed=version)
    path = tmp_path / "scene.spz"
    write_spz(path, g, version, degree)
    assert splat_format(path) == "spz"
    splat = read_any_splat(path)
    assert splat.source_format == f"Niantic .spz v{version}"
    # steps: 1/4096 position, 1/16 log scale, 1/(0.15 * 255) SH DC, 1/128 SH; v2 rotations are 8-bit
    check_decoded(splat, g, 0.5 / 4096 + 1e-6, 1 / 32 + 1e-5, SH_C0 * 0.5 / (0.15 * 255) + 1e-5,
                  None if version == 2 else 0.3, 0.5 / 128 + 1e-5)


@pytest.mark.parametrize("degree,chunk_colors", [(0, True), (1, True), (3, False)])
def test_compressed_ply_round_trip(tmp_path, degree, chunk_colors):
    g = gaussians(700, degree, seed=degree)  # two full chunks of 256 and a partial one
    path = tmp_path / "scene.compressed.ply"
    write_compressed(path, g, chunk_colors)
    assert splat_format(path) == "compressed-ply"
    splat = read_any_splat(path)
    assert splat.source_format == "compressed PLY"
    # steps: 1/1023 of a chunk's extent (10-bit y; 4 units here) and of its log-scale range (5), 1/255 colour,
    # 8 bits of SH over [-4, 4]
    check_decoded(splat, g, 4 / 1023, 5 / 1023, 0.5 / 255 * (3.0 * SH_C0 if chunk_colors else 1) + 1e-6, 0.2,
                  8 / 256 + 1e-5)


def test_the_two_shared_biker_encodings_agree():
    """biker.compressed.ply and biker.spz are one scene: same Gaussians in the same order, within quantisation,
    once spz's right-up-back frame is turned into the PLY's."""
    if not (BIKER.with_suffix(".spz").is_file() and Path(f"{BIKER}.compressed.ply").is_file()):
        pytest.skip("shared biker splats not found")
    compressed, spz = read_any_splat(f"{BIKER}.compressed.ply"), read_any_splat(BIKER.with_suffix(".spz"))
    assert compressed.count == spz.count == 152_746 and compressed.sh_degree == spz.sh_degree == 0
    assert np.abs(compressed.means().numpy() - spz.means().numpy()).max() < 3e-4  # spz: 1/4096 steps
    log_scale = np.abs(compressed.log_scales().numpy() - spz.log_scales().numpy())
    assert np.quantile(log_scale, 0.99) < 1 / 32 + 2e-3  # spz: 1/16 steps (a few clip at e^-10)
    opacity = torch.sigmoid(compressed.opacity_logits()) - torch.sigmoid(spz.opacity_logits())
    assert opacity.abs().max() < 1e-3  # both keep opacity in 8 bits
    rgb = (compressed.sh_dc() - spz.sh_dc()).abs() * SH_C0
    assert rgb.max() < 0.5 / (0.15 * 255) * SH_C0 + 0.5 / 255  # spz's step plus compressed's
    assert rotation_degrees(compressed.quats().numpy(), spz.quats().numpy()).max() < 0.5


def write_style(path: Path) -> Path:
    Image.fromarray((np.indices((32, 32)).sum(0) % 7 * 36).astype(np.uint8)).convert("RGB").save(path)
    return path


def test_cli_stylizes_spz_into_inria_ply_and_compressed_ply_into_compressed_ply(tmp_path, capsys,
                                                                              random_weights_file):
    g = gaussians(300, 1)
    g["means"] = g["means"] * 0.5
    g["log_scales"] = np.full_like(g["log_scales"], math.log(0.08))
    g["opacity"] = np.full_like(g["opacity"], 3.0)
    write_spz(tmp_path / "scene.spz", g, 3, 1)
    write_compressed(tmp_path / "scene.compressed.ply", g)
    style = write_style(tmp_path / "style.png")
    for name, output in (("scene.spz", "spz_styled.ply"), ("scene.compressed.ply", "styled.compressed.ply")):
        source, out = tmp_path / name, tmp_path / output
        assert asset_kind(source) == "splat" and infer_backend(source) == "splat"
        code = main(["splat", str(source), "--style", str(style), "-o", str(out), "--size", "32", "--steps", "2",
                     "--pool", "2", "--held-out", "1", "--weights", str(random_weights_file), "--split", "none"])
        assert code == 0, capsys.readouterr().err
        decoded = read_any_splat(source)
        assert f"({decoded.source_format}, 300 Gaussians); the output is" in capsys.readouterr().err
        result = read_any_splat(out)
        assert result.count == 300 and result.source_format == ("INRIA PLY" if name.endswith("spz") else
                                                                 "compressed PLY")
        for column in ("x", "y", "z", "opacity", "scale_0", "scale_2", "rot_0", "rot_3"):  # as decoded, bit for bit
            assert np.array_equal(result.vertices[column], decoded.vertices[column])
        assert not np.array_equal(result.vertices["f_dc_0"], decoded.vertices["f_dc_0"])
        report = json.loads(out.with_suffix(".json").read_text())
        assert report["details"]["output_check"]["geometry_and_opacity_identical"] is True


def test_inria_splat_written_as_compressed_ply_is_morton_packed(tmp_path):
    """An INRIA source packs afresh: sorted into small chunks, within a chunk's 1/1023 of the Gaussians' span."""
    g = gaussians(1000, 2)
    save_gaussians(tmp_path / "s.ply", *(torch.from_numpy(g[k]).float() for k in ("means", "log_scales", "quats")),
                   torch.from_numpy(g["opacity"]).float(), torch.from_numpy(g["sh_dc"]).float(),
                   torch.from_numpy(g["sh_rest"]).float())
    source = read_splat(tmp_path / "s.ply")
    order = write_compressed_ply(tmp_path / "s.compressed.ply", source, source.sh_dc(), source.sh_rest())
    assert sorted(order) == list(range(1000)) and not np.array_equal(order, np.arange(1000))
    back = read_any_splat(tmp_path / "s.compressed.ply")
    error = np.abs(back.means().numpy() - g["means"][order]).max(0)
    assert (error < 4 / 1023 / 2).all()  # a chunk spans less than the whole 4-unit box after sorting
    assert rotation_degrees(back.quats().numpy(), g["quats"][order]).max() < 0.2
    assert np.abs(back.sh_rest().numpy() - g["sh_rest"][order]).max() <= 8 / 256 + 1e-5


def broken_files(root: Path) -> dict[str, tuple[Path, str]]:
    g = gaussians(300, 1)
    write_spz(root / "good.spz", g, 3, 1)
    good = (root / "good.spz").read_bytes()
    raw = gzip.decompress(good)
    (root / "truncated.spz").write_bytes(good[: len(good) // 2])
    (root / "short.spz").write_bytes(gzip.compress(raw[:-100]))
    (root / "magic.spz").write_bytes(gzip.compress(b"XGSP" + raw[4:]))
    (root / "version.spz").write_bytes(gzip.compress(raw[:4] + struct.pack("<I", 7) + raw[8:]))
    (root / "degree.spz").write_bytes(gzip.compress(raw[:12] + b"\x04" + raw[13:]))
    write_spz(root / "good4.spz", g, 4, 1)
    v4 = (root / "good4.spz").read_bytes()
    (root / "truncated4.spz").write_bytes(v4[:-50])
    (root / "zstd4.spz").write_bytes(v4[:200] + bytes(len(v4) - 200))
    write_compressed(root / "good.compressed.ply", g)
    packed = (root / "good.compressed.ply").read_bytes()
    (root / "truncated.compressed.ply").write_bytes(packed[:-40])
    (root / "property.compressed.ply").write_bytes(packed.replace(b"packed_scale", b"packed_scalf"))
    (root / "chunks.compressed.ply").write_bytes(packed.replace(b"element chunk 2", b"element chunk 1"))
    return {"truncated.spz": "truncated", "short.spz": "truncated", "magic.spz": "NGSP", "version.spz": "version 7",
            "degree.spz": "degree 4", "truncated4.spz": "truncated", "zstd4.spz": "decompress",
            "truncated.compressed.ply": "truncated", "property.compressed.ply": "packed_scalf",
            "chunks.compressed.ply": "1 chunks for 300"}


def test_broken_files_are_one_line_errors(tmp_path):
    for name, words in broken_files(tmp_path).items():
        with pytest.raises(UserError) as exc:
            read_any_splat(tmp_path / name)
        message = str(exc.value)
        assert "\n" not in message and words.lower() in message.lower(), (name, message)


def test_cli_refuses_broken_files_with_exit_2_and_writes_nothing(tmp_path, capsys, random_weights_file):
    broken_files(tmp_path)
    style = write_style(tmp_path / "style.png")
    for name in ("version.spz", "truncated4.spz", "property.compressed.ply"):
        out = tmp_path / "out" / "styled.ply"
        code = main(["splat", str(tmp_path / name), "--style", str(style), "-o", str(out), "--steps", "1",
                     "--weights", str(random_weights_file), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("nst3d: error:") and "\n" not in err, err
        assert not out.parent.exists() or not any(out.parent.iterdir())


def test_inria_ply_still_opens_memory_mapped_and_meshes_are_not_splats(tmp_path):
    save_gaussians(tmp_path / "s.ply", torch.zeros(4, 3), torch.zeros(4, 3), torch.tensor([[1.0, 0, 0, 0]] * 4),
                   torch.zeros(4), torch.zeros(4, 3))
    assert splat_format(tmp_path / "s.ply") == "ply"
    assert isinstance(read_any_splat(tmp_path / "s.ply").vertices, np.memmap)
    (tmp_path / "m.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n")
    assert splat_format(tmp_path / "m.ply") is None and asset_kind(tmp_path / "m.ply") == "mesh"
