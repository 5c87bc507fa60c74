"""nst3d.files: outputs appear whole or not at all, with the permissions of a plain open(); output checks leave
nothing behind."""

import os
import stat

import pytest

from nst3d.errors import UserError
from nst3d.files import atomic_path, check_output


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomic_write_gets_the_mode_a_plain_open_would(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"data")
        with open(tmp_path / "plain.png", "wb") as fh:
            fh.write(b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.png").stat().st_mode) == mode


def test_a_failed_atomic_write_leaves_nothing_and_keeps_an_existing_file(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_check_output_proves_a_new_folder_can_be_made_and_leaves_none(tmp_path):
    out = tmp_path / "new" / "deeper" / "out.png"
    assert check_output(out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # a run that fails later leaves no empty folders
    with atomic_path(out) as tmp:  # the first write makes them
        tmp.write_bytes(b"data")
    assert out.read_bytes() == b"data"
    check_output(tmp_path / "existing", is_dir=True)
    (tmp_path / "existing").mkdir()
    check_output(tmp_path / "existing", is_dir=True)
    assert (tmp_path / "existing").is_dir()  # a folder that was there stays


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc: a folder that takes no new entries")
def test_check_output_names_a_folder_it_cannot_make():
    with pytest.raises(UserError, match="cannot create the folder /proc/nst3d-test/a"):
        check_output("/proc/nst3d-test/a/out.png")


def test_check_output_says_what_is_wrong_with_the_path(tmp_path):
    a_file, a_folder = tmp_path / "b.png", tmp_path / "folder"
    a_file.write_bytes(b"x")
    a_folder.mkdir()
    with pytest.raises(UserError, match="output folder .*b.png is a file; give a folder"):
        check_output(a_file, is_dir=True)
    with pytest.raises(UserError, match="out.glb looks like a file name; give a folder, e.g. .*out$"):
        check_output(tmp_path / "out.glb", is_dir=True)  # used to become a folder called out.glb
    with pytest.raises(UserError, match="is a folder; give a file name"):
        check_output(a_folder, suffixes=(".png",))  # not "unsupported output type ''"
    check_output(tmp_path / "v1.5", is_dir=True)  # a dotted folder name that is no file type is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "folder"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc: a folder that takes no new entries")
def test_check_output_really_writes_to_the_folder():
    # /proc passes a permission check (and root passes every one); writing there fails: found now, not after the run
    with pytest.raises(UserError, match="cannot write to /proc"):
        check_output("/proc/out.png")


def test_write_json_writes_nan_as_null_and_names_a_file_in_the_way(tmp_path):
    import json

    import numpy as np

    from nst3d.files import write_json

    write_json({"long_range": float("nan"), "nested": [np.float32("inf"), 1.5, {"x": -float("inf")}]},
               tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"long_range": None, "nested": [None, 1.5, {"x": None}]}
    (tmp_path / "d.png").write_bytes(b"x")
    with pytest.raises(UserError, match="d.png is a file, not a folder"):
        check_output(tmp_path / "d.png" / "x.ply")
