"""Files written atomically get the ordinary mode (0666 minus umask), not mkstemp's private 0600."""

import os
import stat

from lh2face.io import save_image, write_text_atomic


def test_atomic_files_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        save_image(tmp_path / "b.png", [[0, 255], [255, 0]])
    finally:
        os.umask(old)
    for name in ("a.txt", "b.png"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.png"]  # no temporary left behind
