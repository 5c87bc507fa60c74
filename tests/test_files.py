"""nst3d.files.atomic_path: outputs appear whole or not at all, with the permissions of a plain open()."""

import os
import stat

import pytest

from nst3d.files import atomic_path


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
