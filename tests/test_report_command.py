"""`lh2face report`: the HTML page lists every photo that worked and every file that did not, with why."""

import shutil
from pathlib import Path

from joint.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "photos"


def test_report_command_lists_good_and_bad_photos(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    good = sorted(p for p in FIXTURES.iterdir() if p.suffix.lower() in (".jpg", ".pgm", ".png"))[:2]
    for p in good:
        shutil.copy(p, photos / p.name)
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "report"
    code = main(["report", str(photos), "--out", str(out), "--fit-steps", "0"])
    assert code == 0
    html = (out / "index.html").read_text()
    for p in good:
        assert p.name in html
    assert "broken.jpg" in html and "Skipped" in html
    # every picture the page points at exists beside it
    import re

    for src in re.findall(r'src="([^"]+)"', html):
        assert (out / src).is_file(), src


def test_report_command_exit_code_when_nothing_works(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "empty.png").write_bytes(b"")
    assert main(["report", str(photos), "--out", str(tmp_path / "r"), "--fit-steps", "0"]) == 1
