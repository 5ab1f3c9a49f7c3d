"""recon.landmarks on real photos (fixtures copied from ../shared/data) and the face_alignment wrapper."""

from __future__ import annotations

import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from lh2face.io import read_image
from recon.landmarks import DetectorUnavailable, Face, build_detector, landmarks5_from_68

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
FIXTURES = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".jpg", ".pgm"))
LFW = [p for p in FIXTURES if p.suffix == ".jpg"]

# iBUG-68 index of each point's mirror image (left/right swap)
MIRROR = (
    list(range(16, -1, -1)) + list(range(26, 21, -1)) + list(range(21, 16, -1)) + [27, 28, 29, 30]
    + list(range(35, 30, -1)) + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + list(range(54, 47, -1)) + list(range(59, 54, -1)) + list(range(64, 59, -1)) + list(range(67, 64, -1))
)


@pytest.fixture(scope="module")
def dlib_detector():
    return build_detector("dlib")


@pytest.fixture(scope="module")
def detections(dlib_detector):
    return {p.name: dlib_detector(read_image(p)) for p in FIXTURES}


def test_dlib_model_found_without_importing_face_recognition_models(dlib_detector):
    from recon.landmarks.dlib_backend import find_predictor_file

    path = find_predictor_file()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 50e6
    assert "face_recognition_models" not in sys.modules  # it needs pkg_resources; we only locate it


def test_face_found_in_nearly_all_fixture_photos(detections):
    rate = np.mean([len(f) > 0 for f in detections.values()])
    assert len(detections) >= 6 and rate >= 0.9
    for faces in detections.values():
        for f in faces:
            assert isinstance(f, Face)
            assert f.box.shape == (4,) and f.landmarks68.shape == (68, 2) and f.landmarks5.shape == (5, 2)
            assert f.landmarks68.dtype == np.float32


def test_landmarks_follow_ibug_order(detections):
    for name, faces in detections.items():
        lm = faces[0].landmarks68
        x, y = lm[:, 0], lm[:, 1]
        le, re = lm[36:42].mean(0), lm[42:48].mean(0)
        nose = lm[30]
        # image-left eye corners left of the nose tip, image-right eye corners right of it
        assert x[36:42].max() < nose[0] < x[42:48].min(), name
        assert x[0] < x[8] < x[16], name  # jaw runs from image-left to image-right through the chin
        assert np.argmax(y) in (7, 8, 9), name  # the chin is the lowest point
        assert y[17:22].mean() < y[36:42].min() and y[22:27].mean() < y[42:48].min(), name  # brows over eyes
        assert max(le[1], re[1]) < nose[1] < y[48:68].min(), name  # eyes above nose tip above mouth
        assert x[48] < x[62] < x[54], name  # mouth corners around the mouth centre
        assert np.all(np.diff(y[27:31]) > 0), name  # nose bridge runs downwards to the tip
        # every point roughly inside the detector box (dlib boxes are tight; allow 25 %)
        b = faces[0].box
        w, h = b[2] - b[0], b[3] - b[1]
        assert np.all(x > b[0] - 0.25 * w) and np.all(x < b[2] + 0.25 * w), name
        assert np.all(y > b[1] - 0.25 * h) and np.all(y < b[3] + 0.25 * h), name


def test_pixel_centre_convention_by_mirroring(dlib_detector):
    """With centres at (j + 0.5), mirroring an image of width W maps x to W - x exactly.

    dlib's raw integer indices would map to W - 1 - x: a systematic 1 px bias this test catches.
    """
    biases = []
    for p in LFW:
        im = read_image(p)
        w = im.shape[1]
        a = dlib_detector(im)[0].landmarks68
        b = dlib_detector(np.ascontiguousarray(im[:, ::-1]))[0].landmarks68[MIRROR]
        biases.append(np.mean((w - b[:, 0]) - a[:, 0]))
        assert np.sqrt(np.mean(np.sum(((w - b[:, 0]) - a[:, 0]) ** 2))) < 3.0 * np.sqrt(68)
    assert abs(np.mean(biases)) < 0.5, biases


def test_landmarks5_definition():
    rng = np.random.default_rng(0)
    lm = rng.uniform(0, 100, size=(68, 2)).astype(np.float32)
    five = landmarks5_from_68(lm)
    np.testing.assert_allclose(five[0], lm[36:42].mean(0), rtol=1e-6)
    np.testing.assert_allclose(five[1], lm[42:48].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(five[2:], lm[[30, 48, 54]])
    face = Face(box=[0, 0, 10, 10], score=1, landmarks68=lm)
    np.testing.assert_array_equal(face.landmarks5, five)
    assert face.area == 100.0
    with pytest.raises(ValueError, match="68, 2"):
        landmarks5_from_68(np.zeros((5, 2)))


def test_grey_input_no_face_and_bad_input(dlib_detector):
    grey = read_image(PHOTOS / "att_s1_1.pgm", mode="L")
    assert grey.ndim == 2 and len(dlib_detector(grey)) == 1
    assert dlib_detector(np.full((120, 100, 3), 128, np.uint8)) == []
    with pytest.raises(TypeError, match="uint8"):
        dlib_detector(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        dlib_detector(np.zeros((50, 50, 2), np.uint8))
    with pytest.raises(KeyError, match="dlib"):
        build_detector("nope")


def test_five_point_alignment_puts_eyes_on_template(dlib_detector):
    """Warp with lh2face.align, then re-detect on the aligned crop (independent of the warp maths).

    The re-detected eyes sit where the similarity maps the original eye points (the warp honours the
    pixel convention: < 1.5 px) and within a few pixels of the template (a similarity cannot match
    every face's 5 points to the mean template exactly: the least-squares residual stays).
    """
    from lh2face.align import ARCFACE_TEMPLATE, align_face, similarity_transform

    pad = 56
    warp_err, template_err = [], []
    for p in LFW:
        im = read_image(p)
        face = dlib_detector(im)[0]
        aligned = align_face(im, face.landmarks5, size=112)
        assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
        M = similarity_transform(face.landmarks5, ARCFACE_TEMPLATE)
        mapped = face.landmarks5 @ M[:, :2].T + M[:, 2]
        canvas = np.zeros((112 + 2 * pad, 112 + 2 * pad, 3), np.uint8)  # room for dlib's detector
        canvas[pad:-pad, pad:-pad] = aligned
        again = dlib_detector(canvas)
        assert again, p.name
        five = again[0].landmarks5 - pad
        warp_err.append(np.linalg.norm(five[:2] - mapped[:2], axis=1))
        template_err.append(np.linalg.norm(five[:2] - ARCFACE_TEMPLATE[:2], axis=1))
    warp_err, template_err = np.array(warp_err), np.array(template_err)
    assert warp_err.max() < 1.5, warp_err
    assert template_err.max() < 5.0 and template_err.mean() < 3.0, template_err


# ------------------------------------------------------------------ face_alignment backend (no network)


class _FakeFA:
    calls: list = []

    def __init__(self, landmarks_type, device="cuda", flip_input=False, face_detector="sfd", **kw):
        _FakeFA.calls.append(dict(landmarks_type=landmarks_type, device=device, flip_input=flip_input,
                                  face_detector=face_detector, **kw))

    def get_landmarks_from_image(self, image, detected_faces=None, return_bboxes=False, return_landmark_score=False):
        assert image.dtype == np.uint8 and image.shape[2] == 3
        lm_small = np.tile(np.arange(68, dtype=np.float32)[:, None], (1, 2))
        lm_big = lm_small * 2
        boxes = [np.array([0, 0, 10, 10, 0.6]), np.array([1, 2, 30, 40, 0.9])]
        if return_bboxes:
            return [lm_small, lm_big], None, boxes
        return [lm_small, lm_big]


def _fake_module(fa_cls, new_api=True):
    mod = types.ModuleType("face_alignment")
    lt = types.SimpleNamespace(**({"TWO_D": "2D-new", "THREE_D": "3D"} if new_api else {"_2D": "2D-old", "_3D": "3D"}))
    mod.LandmarksType = lt
    mod.FaceAlignment = fa_cls
    return mod


@pytest.mark.parametrize("new_api", [True, False])
def test_face_alignment_argument_and_output_mapping(monkeypatch, new_api):
    _FakeFA.calls = []
    monkeypatch.setitem(sys.modules, "face_alignment", _fake_module(_FakeFA, new_api))
    det = build_detector("face_alignment", device="cpu", flip_input=True, face_detector="blazeface")
    assert _FakeFA.calls == [dict(landmarks_type="2D-new" if new_api else "2D-old", device="cpu",
                                  flip_input=True, face_detector="blazeface")]
    faces = det(np.zeros((40, 30), np.uint8))
    assert [f.score for f in faces] == pytest.approx([0.9, 0.6])  # most confident first
    np.testing.assert_array_equal(faces[0].box, [1, 2, 30, 40])
    np.testing.assert_allclose(faces[0].landmarks68[5], [10.5, 10.5])  # index pixel 10 -> centre 10.5
    np.testing.assert_allclose(faces[1].landmarks68[5], [5.5, 5.5])


def test_face_alignment_offline_error_says_what_to_do(monkeypatch):
    class Offline(_FakeFA):
        def __init__(self, *a, **kw):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setitem(sys.modules, "face_alignment", _fake_module(Offline))
    with pytest.raises(DetectorUnavailable) as err:
        build_detector("face_alignment")
    msg = str(err.value)
    assert "checkpoints" in msg and "--detector dlib" in msg and "name resolution" in msg


def test_face_alignment_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import raises ImportError
    with pytest.raises(DetectorUnavailable, match="pip install face-alignment.*--detector dlib"):
        build_detector("face_alignment")
