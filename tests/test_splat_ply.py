"""INRIA Gaussian-splat PLY I/O: round trips (every SH degree, normals, extra properties and elements), bit-identical
geometry on write, and one-line errors for the formats we do not read."""

import gzip
import struct

import numpy as np
import pytest
import torch

from nst3d.backends.splat.ply import read_splat, save_gaussians, sh_degree_for, write_splat
from nst3d.errors import UserError


def gaussians(n: int, degree: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return {"means": torch.randn(n, 3, generator=g), "log_scales": torch.randn(n, 3, generator=g) - 3,
            "quats": torch.randn(n, 4, generator=g), "opacity_logits": torch.randn(n, generator=g),
            "sh_dc": torch.randn(n, 3, generator=g), "sh_rest": torch.randn(n, k, 3, generator=g) * 0.1}


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_every_degree(tmp_path, degree):
    data = gaussians(37, degree)
    path = tmp_path / "scene.ply"
    save_gaussians(path, **data, normals=degree == 3)
    ply = read_splat(path)
    assert ply.count == 37 and ply.sh_degree == degree and ply.has_normals == (degree == 3)
    assert len([p for p in ply.property_names if p.startswith("f_rest_")]) == 3 * ((degree + 1) ** 2 - 1)
    assert torch.equal(ply.means(), data["means"])
    assert torch.equal(ply.log_scales(), data["log_scales"])
    assert torch.equal(ply.quats(), data["quats"])
    assert torch.equal(ply.opacity_logits(), data["opacity_logits"])
    assert torch.equal(ply.sh_dc(), data["sh_dc"])
    assert torch.equal(ply.sh_rest(), data["sh_rest"])


def test_rest_is_stored_channel_major(tmp_path):
    """f_rest_0..14 are all of red's 15 coefficients, then green's, then blue's (as 3DGS writes them)."""
    data = gaussians(2, 3)
    data["sh_rest"] = torch.zeros(2, 15, 3)
    data["sh_rest"][:, 4, 1] = 7.0  # green, coefficient 5 -> f_rest_{15 + 4}
    path = tmp_path / "scene.ply"
    save_gaussians(path, **data)
    ply = read_splat(path)
    assert np.all(np.asarray(ply.vertices["f_rest_19"]) == 7.0)
    assert np.all(np.asarray(ply.vertices["f_rest_4"]) == 0.0)


def write_raw_ply(path, header_lines, data: bytes):
    path.write_bytes(("\n".join(header_lines) + "\n").encode("ascii") + data)


def test_write_degree3_keeps_everything_but_colours(tmp_path):
    """A full degree-3 file with normals, a comment, an extra vertex property and an element after the
    vertices: new colours in, everything else byte for byte."""
    n = 25
    data = gaussians(n, 3, seed=1)
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(45)]
             + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)] + ["filter_3D"])
    dtype = np.dtype([(name, "<f4") for name in names])
    rows = np.zeros(n, dtype)
    rng = np.random.default_rng(0)
    for name in names:
        rows[name] = rng.standard_normal(n).astype(np.float32)
    rows["x"][0] = np.float32(np.nan)  # odd values must survive too
    rows["scale_0"][1] = np.float32(-0.0)
    extra = struct.pack("<2i", 7, 9)
    header = (["ply", "format binary_little_endian 1.0", "comment made by a test", f"element vertex {n}"]
              + [f"property float {name}" for name in names]
              + ["element camera 1", "property int a", "property int b", "end_header"])
    source = tmp_path / "in.ply"
    write_raw_ply(source, header, rows.tobytes() + extra)
    ply = read_splat(source)
    assert ply.sh_degree == 3 and ply.count == n
    out = tmp_path / "out.ply"
    write_splat(out, ply, data["sh_dc"], data["sh_rest"])
    back = read_splat(out)
    assert back.property_names == names and back.count == n
    assert out.read_bytes().endswith(extra)
    assert out.read_bytes()[: len(ply.header)] == source.read_bytes()[: len(ply.header)]
    for name in names:
        if not name.startswith(("f_dc_", "f_rest_")):
            assert np.ascontiguousarray(back.vertices[name]).tobytes() == rows[name].tobytes(), name
    assert torch.equal(back.sh_dc(), data["sh_dc"])
    assert torch.equal(back.sh_rest(), data["sh_rest"])
    # The input is untouched, and a write of the same colours is byte-identical to it.
    write_splat(tmp_path / "same.ply", ply, ply.sh_dc(), ply.sh_rest())
    assert (tmp_path / "same.ply").read_bytes() == source.read_bytes()


def test_write_keep_mask_updates_count(tmp_path):
    data = gaussians(10, 0)
    save_gaussians(tmp_path / "in.ply", **data)
    ply = read_splat(tmp_path / "in.ply")
    keep = np.arange(10) % 3 != 0
    write_splat(tmp_path / "out.ply", ply, ply.sh_dc(), keep=keep)
    back = read_splat(tmp_path / "out.ply")
    assert back.count == int(keep.sum())
    assert torch.equal(back.means(), data["means"][torch.from_numpy(keep)])


def test_sh_degree_from_rest_count():
    assert [sh_degree_for(n) for n in (0, 9, 24, 45)] == [0, 1, 2, 3]
    with pytest.raises(UserError, match="SH degree"):
        sh_degree_for(12)


def assert_one_line(exc: pytest.ExceptionInfo, pattern: str):
    message = str(exc.value)
    assert "\n" not in message
    assert pattern.lower() in message.lower(), message


def test_unsupported_formats_fail_cleanly(tmp_path):
    splat = tmp_path / "scene.splat"
    splat.write_bytes(b"\0" * 64)
    with pytest.raises(UserError) as exc:
        read_splat(splat)
    assert_one_line(exc, ".splat")

    spz = tmp_path / "scene.spz"
    spz.write_bytes(gzip.compress(b"NGSP" + b"\0" * 12))
    with pytest.raises(UserError) as exc:
        read_splat(spz)
    assert_one_line(exc, "spz")

    packed = tmp_path / "compressed.ply"
    write_raw_ply(packed, ["ply", "format binary_little_endian 1.0", "element chunk 1",
                           *[f"property float {p}" for p in ("min_x", "min_y", "min_z")],
                           "element vertex 2", "property uint packed_position", "property uint packed_rotation",
                           "property uint packed_scale", "property uint packed_color", "end_header"],
                  b"\0" * (12 + 32))
    with pytest.raises(UserError) as exc:
        read_splat(packed)
    assert_one_line(exc, "compressed PlayCanvas")

    cloud = tmp_path / "cloud.ply"
    write_raw_ply(cloud, ["ply", "format binary_little_endian 1.0", "element vertex 2", "property float x",
                          "property float y", "property float z", "property uchar red", "property uchar green",
                          "property uchar blue", "end_header"], b"\0" * 30)
    with pytest.raises(UserError) as exc:
        read_splat(cloud)
    assert_one_line(exc, "point cloud")

    mesh = tmp_path / "mesh.ply"
    write_raw_ply(mesh, ["ply", "format ascii 1.0", "element vertex 3", "property float x", "property float y",
                         "property float z", "element face 1", "property list uchar int vertex_indices",
                         "end_header", "0 0 0", "1 0 0", "0 1 0", "3 0 1 2"], b"")
    with pytest.raises(UserError) as exc:
        read_splat(mesh)
    assert_one_line(exc, "mesh")

    save_gaussians(tmp_path / "ok.ply", **gaussians(4, 0))
    ascii_header = (tmp_path / "ok.ply").read_bytes().split(b"end_header\n")[0].replace(b"binary_little_endian",
                                                                                           b"ascii")
    (tmp_path / "ascii.ply").write_bytes(ascii_header + b"end_header\n")
    with pytest.raises(UserError) as exc:
        read_splat(tmp_path / "ascii.ply")
    assert_one_line(exc, "ascii")

    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes((tmp_path / "ok.ply").read_bytes()[:-10])
    with pytest.raises(UserError) as exc:
        read_splat(truncated)
    assert_one_line(exc, "truncated")

    with pytest.raises(UserError) as exc:
        read_splat(tmp_path / "missing.ply")
    assert_one_line(exc, "not found")
