"""IJB-B/C 1:1 protocol (recognition.eval.ijb) on the tiny IJB-format fixture with hand-computed answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ijb_fixture import (
    EXPECTED_AUC,
    EXPECTED_SCORES,
    EXPECTED_SCORES_NO_DET,
    EXPECTED_SCORES_NO_NORM,
    EXPECTED_TAR,
    EXPECTED_TEMPLATE_FEATS,
    IMAGES,
    PAIRS,
    TEMPLATE_112,
    build_ijb_fixture,
    colours_float,
)
from lh2face.io import read_image
from recognition.eval.ijb import (
    IJBFaces,
    IJBFormatError,
    evaluate_features,
    evaluate_ijb,
    image_features,
    load_meta,
    meta_paths,
    pair_scores,
    read_template_pairs,
    template_features,
)

DET = np.array([d for *_, d in IMAGES])
TIDS = np.array([t for _, t, *_ in IMAGES])
MIDS = np.array([m for _, _, m, *_ in IMAGES])
FARS = (1e-1, 0.25, 0.5, 1.0)


def mean_colour(x: torch.Tensor) -> torch.Tensor:
    """Fake embedding: mean RGB of the crop, (B,3,H,W) -> (B,3)."""
    return x.mean(dim=(2, 3))


def test_meta_files_are_read_and_matched_by_name(tmp_path: Path) -> None:
    build_ijb_fixture(tmp_path, "IJBC", mode="loose", shuffle_landmark_rows=True)
    paths = meta_paths(tmp_path, "IJBC")
    assert paths["face_tid_mid"] == tmp_path / "meta" / "ijbc_face_tid_mid.txt"
    meta = load_meta(tmp_path, "IJB-C")
    assert meta.names == [n for n, *_ in IMAGES]
    np.testing.assert_array_equal(meta.templates, TIDS)
    np.testing.assert_array_equal(meta.medias, MIDS)
    np.testing.assert_allclose(meta.det_scores, DET, rtol=1e-6)  # file rows reversed, matched by name
    np.testing.assert_allclose(meta.landmarks[0], TEMPLATE_112 + [40, 30], atol=1e-3)
    np.testing.assert_allclose(meta.landmarks[1], TEMPLATE_112 * 1.25 + [25, 35], atol=1e-3)
    np.testing.assert_array_equal(meta.pairs, [[a, b] for a, b, _ in PAIRS])
    np.testing.assert_array_equal(meta.labels, [lab for *_, lab in PAIRS])


def test_template_features_hand_computed() -> None:
    raw = 2.0 * colours_float()  # flip-test of a flat image: e(x) + e(mirror x) = 2 colour
    feats = image_features(raw, DET)  # norm weighting and detector score on
    tids, un = template_features(feats, TIDS, MIDS, normalize=False)
    np.testing.assert_array_equal(tids, [1, 2, 3, 4, 5])
    # T1: media 10 mean (1.6,0,0), media 11 (0,1.6,0); T3: 0.5*(0,0,1.6) + (0,0.8,0); T4: 0.9*(0,0.8,0.8)
    np.testing.assert_allclose(
        un, [[1.6, 1.6, 0], [1.6, 0, 0], [0, 0.8, 0.8], [0, 0.72, 0.72], [0, 1.6, 0]], atol=1e-12
    )
    _, unit = template_features(feats, TIDS, MIDS)
    np.testing.assert_allclose(unit, EXPECTED_TEMPLATE_FEATS, atol=1e-12)
    pairs = np.array([[a, b] for a, b, _ in PAIRS])
    np.testing.assert_allclose(pair_scores(unit, tids, pairs), EXPECTED_SCORES, atol=1e-12)
    # the other protocol switches
    for kw, expected in (
        (dict(use_norm_weighting=False), EXPECTED_SCORES_NO_NORM),
        (dict(use_detector_score=False), EXPECTED_SCORES_NO_DET),
    ):
        t, f = template_features(image_features(raw, DET, **kw), TIDS, MIDS)
        np.testing.assert_allclose(pair_scores(f, t, pairs), expected, atol=1e-12)


def test_template_pooling_matches_a_plain_loop() -> None:
    """Vectorised pooling == the protocol written as nested loops, on random data."""
    rng = np.random.default_rng(0)
    n, d = 400, 7
    feats = rng.normal(size=(n, d))
    templates = rng.integers(100, 140, n)
    medias = rng.integers(0, 25, n)  # media ids shared between templates on purpose
    tids, got = template_features(feats, templates, medias, normalize=False)
    assert list(tids) == sorted(set(templates.tolist()))
    for row, t in enumerate(tids):
        total = np.zeros(d)
        for m in set(medias[templates == t].tolist()):
            total += feats[(templates == t) & (medias == m)].mean(axis=0)
        np.testing.assert_allclose(got[row], total, rtol=1e-10, atol=1e-12)
    # pair scores == cosine of the looped template sums, pairs in any order / with repeats
    pairs = rng.choice(tids, size=(50, 2))
    scores = pair_scores(got, tids, pairs)
    for (a, b), s in zip(pairs, scores):
        fa, fb = got[tids == a][0], got[tids == b][0]
        assert s == pytest.approx(fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb), abs=1e-12)
    with pytest.raises(ValueError, match="no features, e.g. \\[999\\]"):
        pair_scores(got, tids, np.array([[tids[0], 999]]))


def test_loose_crops_are_aligned_with_their_landmarks(tmp_path: Path) -> None:
    build_ijb_fixture(tmp_path, mode="loose")
    meta = load_meta(tmp_path, "IJBB")
    faces = IJBFaces(tmp_path / "loose_crop", meta.names, meta.landmarks)
    for i, (_, _, _, colour, _) in enumerate(IMAGES):
        crop = faces.load_uint8(i)
        assert crop.shape == (112, 112, 3)
        # every pixel is the face colour: the grey background lies outside the landmark-placed crop
        assert np.array_equal(np.unique(crop.reshape(-1, 3), axis=0), np.array([colour], dtype=np.uint8))
        assert read_image(tmp_path / "loose_crop" / meta.names[i]).shape[:2] != (112, 112)
        x = faces[i]
        assert x.shape == (3, 112, 112) and x.dtype == torch.float32
    with pytest.raises(ValueError, match="1.png: image is .* not an aligned 112x112 crop"):
        IJBFaces(tmp_path / "loose_crop", meta.names, meta.landmarks, aligned=True).load_uint8(0)


def test_end_to_end_loose_crops_table_and_roc(tmp_path: Path) -> None:
    build_ijb_fixture(tmp_path / "IJB_release", mode="loose")
    out = tmp_path / "out"
    r = evaluate_ijb(
        tmp_path / "IJB_release", "IJBB", mean_colour, batch_size=3, out_dir=out, name="meanrgb",
        fars=FARS, progress=False,
    )
    np.testing.assert_allclose(r["scores"], EXPECTED_SCORES, atol=1e-6)
    assert (r["n_images"], r["n_templates"], r["n_pairs"], r["n_genuine"], r["n_impostor"]) == (8, 5, 7, 3, 4)
    assert r["auc"] == pytest.approx(EXPECTED_AUC)
    for far, tar in EXPECTED_TAR.items():
        assert r["tar_at_far"][far] == pytest.approx(tar)
    assert math.isnan(r["tar_at_far"][1e-1])  # 4 impostors cannot measure FAR 0.1
    assert r["settings"] == {
        "use_flip_test": True, "use_norm_weighting": True, "use_detector_score": True, "aligned": "auto"
    }
    # files
    table = Path(r["files"]["table"]).read_text()
    assert "| meanrgb | n/a | 66.67 | 66.67 | 100.00 |" in table
    assert "| Method | TAR@FAR=1e-1 | TAR@FAR=0.25 | TAR@FAR=0.5 | TAR@FAR=1e0 |" in table
    assert "FAR 1e-1 needs >= 10 impostor pairs, only 4 available" in table
    png = read_image(r["files"]["roc"])
    assert png.shape == (480, 640, 3)
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 3  # something was drawn
    summary = json.loads(Path(r["files"]["json"]).read_text())
    assert summary["tar_at_far"]["0.25"] == pytest.approx(2 / 3) and summary["tar_at_far"]["1e-1"] is None
    assert summary["n_pairs"] == 7
    with np.load(r["files"]["scores"]) as z:
        np.testing.assert_allclose(z["scores"], r["scores"])
        np.testing.assert_array_equal(z["labels"], [lab for *_, lab in PAIRS])


def test_end_to_end_protocol_switches(tmp_path: Path) -> None:
    build_ijb_fixture(tmp_path, mode="aligned")
    common = dict(fars=FARS, progress=False)
    no_norm = evaluate_ijb(tmp_path, "IJBB", mean_colour, use_norm_weighting=False, **common)
    np.testing.assert_allclose(no_norm["scores"], EXPECTED_SCORES_NO_NORM, atol=1e-6)
    no_det = evaluate_ijb(tmp_path, "IJBB", mean_colour, use_detector_score=False, **common)
    np.testing.assert_allclose(no_det["scores"], EXPECTED_SCORES_NO_DET, atol=1e-6)
    # without flip-test features halve, which cosine scores do not see
    no_flip = evaluate_ijb(tmp_path, "IJBB", mean_colour, use_flip_test=False, **common)
    np.testing.assert_allclose(no_flip["scores"], EXPECTED_SCORES, atol=1e-6)
    # flip-test embeds each crop and its mirror: 16 crops seen for 8 images, 8 without
    for flip, n_seen in ((True, 16), (False, 8)):
        seen = []

        def recording(x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return mean_colour(x)

        evaluate_ijb(tmp_path, "IJBB", recording, batch_size=5, use_flip_test=flip, **common)
        assert sum(b.shape[0] for b in seen) == n_seen
        if flip:
            assert torch.equal(seen[1], torch.flip(seen[0], dims=(3,)))
            assert seen[0].shape[1:] == (3, 112, 112)


def test_aligned_images_without_landmark_file(tmp_path: Path) -> None:
    build_ijb_fixture(tmp_path, mode="aligned", landmarks_file=False)
    r = evaluate_ijb(tmp_path, "IJBB", mean_colour, aligned=True, fars=FARS, progress=False)
    assert r["settings"]["use_detector_score"] is False  # no scores to weight with
    np.testing.assert_allclose(r["scores"], EXPECTED_SCORES_NO_DET, atol=1e-6)
    with pytest.raises(IJBFormatError, match="ijbb_name_5pts_score.txt"):
        evaluate_ijb(tmp_path, "IJBB", mean_colour, aligned="auto", progress=False)


def test_precomputed_features_path(tmp_path: Path) -> None:
    build_ijb_fixture(tmp_path, mode="aligned")
    meta = load_meta(tmp_path, "IJBB")
    r = evaluate_features(meta, 2.0 * colours_float(), fars=FARS)
    np.testing.assert_allclose(r["scores"], EXPECTED_SCORES, atol=1e-12)
    np.testing.assert_allclose(r["template_feats"], EXPECTED_TEMPLATE_FEATS, atol=1e-12)
    with pytest.raises(ValueError, match="expected \\(8, d\\) image features"):
        evaluate_features(meta, np.ones((7, 3)))


def test_missing_and_malformed_meta_files(tmp_path: Path) -> None:
    with pytest.raises(IJBFormatError, match=r"expected .*meta/ijbc_face_tid_mid.txt.*does not exist"):
        load_meta(tmp_path, "IJBC")
    build_ijb_fixture(tmp_path, "IJBB", mode="aligned")
    # wrong target: the message names the expected file and the target that is there
    with pytest.raises(IJBFormatError, match=r"ijbc_face_tid_mid.txt.*Found .*ijbb_face_tid_mid.txt"):
        load_meta(tmp_path, "IJBC")
    pair_file = tmp_path / "meta" / "ijbb_template_pair_label.txt"
    good = pair_file.read_text()
    pair_file.write_text(good + "1 2\n")
    with pytest.raises(IJBFormatError, match=r"ijbb_template_pair_label.txt:8: expected"):
        load_meta(tmp_path, "IJBB")
    pair_file.write_text(good + "1 x 0\n")
    with pytest.raises(IJBFormatError, match=r":8: expected three integers"):
        load_meta(tmp_path, "IJBB")
    pair_file.write_text(good + "1 77 0\n")
    with pytest.raises(IJBFormatError, match=r"template id\(s\) .* e.g. \[77\]"):
        load_meta(tmp_path, "IJBB")
    pair_file.write_text(good + "1 2 3\n")
    with pytest.raises(IJBFormatError, match="label of pair 8 is 3"):
        load_meta(tmp_path, "IJBB")
    pair_file.write_text(good.replace("\n", "\n\n"))  # blank lines are fine
    assert load_meta(tmp_path, "IJBB").pairs.shape == (7, 2)
    lm_file = tmp_path / "meta" / "ijbb_name_5pts_score.txt"
    lm_file.write_text("1.png 1 2 3\n")
    with pytest.raises(IJBFormatError, match=r"ijbb_name_5pts_score.txt:1: expected .*12 fields"):
        load_meta(tmp_path, "IJBB")


def test_pair_reader_matches_loadtxt_on_a_larger_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = np.c_[rng.integers(0, 10**6, (50_000, 2)), rng.integers(0, 2, 50_000)]
    path = tmp_path / "x_template_pair_label.txt"
    np.savetxt(path, arr, fmt="%d")
    pairs, labels = read_template_pairs(path)
    ref = np.loadtxt(path, dtype=np.int64)
    np.testing.assert_array_equal(pairs, ref[:, :2])
    np.testing.assert_array_equal(labels, ref[:, 2])
