"""recon.photos (detect, align, fit a folder of real photos), recon.report and `lh2face landmarks`."""

from __future__ import annotations

import argparse
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from lh2face.align import ARCFACE_TEMPLATE
from lh2face.io import read_image, save_image
from recon.landmarks import Face
from recon.photos import list_images, reconstruct_photos, summarize

PHOTOS = Path(__file__).parent / "fixtures" / "photos"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    shutil.copy(PHOTOS / "Hu_Jintao_0001.jpg", d / "a_face.jpg")
    shutil.copy(PHOTOS / "att_s11_3.pgm", d / "b_grey.pgm")
    (d / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (d / "d_empty.png").write_bytes(b"")
    save_image(d / "e_noface.png", np.full((90, 90, 3), 128, np.uint8))
    (d / "notes.txt").write_text("not an image: ignored when the folder is expanded")
    return d


@pytest.fixture(scope="module")
def results(photo_dir):
    return list(reconstruct_photos([photo_dir, photo_dir / "f_missing.jpg"], fit_steps=15, steps_pose=15))


def test_list_images(photo_dir):
    names = [p.name for p in list_images(photo_dir)]
    assert names == ["a_face.jpg", "b_grey.pgm", "c_corrupt.jpg", "d_empty.png", "e_noface.png"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images([photo_dir / "nope.jpg"])
    assert list_images([photo_dir / "nope.jpg"], missing="keep")[0].name == "nope.jpg"


def test_batch_goes_on_and_reports_reasons(results):
    by = {r.path.name: r for r in results}
    assert [r.path.name for r in results] == ["a_face.jpg", "b_grey.pgm", "c_corrupt.jpg", "d_empty.png",
                                               "e_noface.png", "f_missing.jpg"]
    assert by["a_face.jpg"].ok and by["b_grey.pgm"].ok
    assert not by["c_corrupt.jpg"].ok and "unreadable" in by["c_corrupt.jpg"].reason
    assert "c_corrupt.jpg" in by["c_corrupt.jpg"].reason
    assert not by["d_empty.png"].ok and "empty" in by["d_empty.png"].reason
    assert not by["e_noface.png"].ok and by["e_noface.png"].reason == "no face found"
    assert by["e_noface.png"].image is not None and by["e_noface.png"].num_faces == 0
    assert not by["f_missing.jpg"].ok and "no such" in by["f_missing.jpg"].reason
    s = summarize(results)
    assert (s["images"], s["readable"], s["with_face"], s["ok"]) == (6, 3, 2, 2)
    assert s["detection_rate"] == pytest.approx(2 / 3)
    assert len(s["failures"]) == 4


def test_alignment_fit_and_nme(results):
    for r in results[:2]:
        assert r.aligned.shape == (112, 112, 3) and r.aligned.dtype == np.uint8
        assert r.coeffs.shape == (r.coeffs.size,) and np.isfinite(r.coeffs).all()
        # detected eye centres mapped into the crop sit near the template eyes
        eyes = np.stack([r.landmarks[36:42].mean(0), r.landmarks[42:48].mean(0)])
        assert np.linalg.norm(eyes - ARCFACE_TEMPLATE[:2], axis=1).max() < 6.0
        assert r.nme["after"] < 0.05 and r.nme["after"] < 0.6 * r.nme["before"], r.nme
        assert r.fit_landmarks.shape == (68, 2) and len(r.fit_history) == 15 + 15 + 15
        assert r.seconds["detect"] > 0 and r.seconds["fit"] > 0


def test_detect_only_and_largest_face(photo_dir):
    small = Face(box=[10, 10, 30, 30], score=2.0, landmarks68=np.random.default_rng(0).uniform(10, 30, (68, 2)))
    lm = read_image(PHOTOS / "Hu_Jintao_0001.jpg")  # the real face's landmarks come from dlib below
    from recon.detect_align import LazyDetector

    real = LazyDetector("dlib").get()(lm)[0]  # the process's dlib detector (its model loads once)

    def two_faces(image):  # most confident first, but the second is larger
        return [small, real]

    r = next(reconstruct_photos([PHOTOS / "Hu_Jintao_0001.jpg"], detector=two_faces, fit_steps=0))
    assert r.ok and r.coeffs is None and r.num_faces == 2
    assert r.face is real and r.aligned.shape == (112, 112, 3)

    calls = []

    def flaky(image):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("detector crashed")
        return [real]

    out = list(reconstruct_photos([PHOTOS / "Hu_Jintao_0001.jpg"] * 2, detector=flaky, fit_steps=0, image_size=224))
    assert not out[0].ok and "detector failed: RuntimeError: detector crashed" == out[0].reason
    assert out[1].ok and out[1].aligned.shape == (224, 224, 3)
    with pytest.raises(ValueError, match="image_size"):
        next(reconstruct_photos([photo_dir], image_size=8))


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src, self.stack, self.errors = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.src.append(dict(attrs)["src"])
        elif tag not in ("meta", "br", "line", "rect", "polyline"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("line", "rect", "polyline"):
            return
        if not self.stack or self.stack.pop() != tag:
            self.errors += 1


def test_html_report(results, tmp_path):
    from recon.report import write_report

    index = write_report(results, tmp_path / "report")
    text = index.read_text()
    parser = _Links()
    parser.feed(text)
    assert parser.errors == 0 and parser.stack == []  # tags balanced
    assert len(parser.src) == 2 * 4 + 1  # 2 faces x (input, overlay, canonical, depth) + the faceless input
    for src in parser.src:
        assert not src.startswith(("http:", "https:", "/")), src
        img = read_image(index.parent / src)
        assert img.shape[0] > 10
    for r in results:
        assert r.path.name in text
    assert "no face found" in text and "empty file" in text and "Skipped (4)" in text
    nme = re.search(r"landmark NME after fitting</td><td class=\"num\">([0-9.]+)", text)
    assert nme and float(nme.group(1)) == pytest.approx(np.mean([r.nme["after"] for r in results if r.ok]), abs=1e-4)
    # canonical pictures differ between the two people (identity is kept)
    canon = sorted((index.parent / "images").glob("*_canonical.png"))
    assert len(canon) == 2
    a, b = (read_image(p).astype(float) for p in canon)
    assert np.abs(a - b).mean() > 1.0


def test_landmarks_command(tmp_path, photo_dir):
    import joint.commands.landmarks as cmd
    from recon.landmarks.cache import load_cache

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    out = tmp_path / "cache.npz"
    assert cmd.run(parser.parse_args([str(PHOTOS), "--out", str(out), "--quiet"])) == 0
    cache = load_cache(out)
    assert len(cache) == 6 and cache.detection_rate == 1.0 and cache.detector == "dlib"
    assert cache.landmarks68.shape == (6, 68, 2) and np.isfinite(cache.landmarks68).all()
    assert cmd.run(parser.parse_args([str(PHOTOS), "--out", str(out)])) == 2  # exists, no --overwrite
    out2 = tmp_path / "mixed.npz"
    assert cmd.run(parser.parse_args([str(photo_dir), "--out", str(out2), "--quiet"])) == 0
    mixed = load_cache(out2)
    assert mixed.ok.tolist() == [True, True, False, False, False]
    assert mixed.reasons[4] == "no face found" and np.isnan(mixed.landmarks68[4]).all()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cmd.run(parser.parse_args([str(empty), "--out", str(tmp_path / "x.npz")])) == 1
    assert cmd.run(parser.parse_args([str(PHOTOS), "--out", str(tmp_path / "x.txt")])) == 2
    with pytest.raises(ValueError, match="not a landmark cache"):
        np.savez(tmp_path / "other.npz", a=np.zeros(3))
        load_cache(tmp_path / "other.npz")
