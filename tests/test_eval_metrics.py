"""recognition.eval.metrics against scikit-learn (test-only) and hand-computed ROC points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from recognition.eval.metrics import (
    DEFAULT_FARS,
    auc,
    format_far,
    roc_auc,
    roc_curve,
    tar_at_far,
    tar_at_far_details,
    tar_table_markdown,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    labels = rng.integers(0, 2, n)
    # quantised scores -> many ties, shifted so genuine pairs score higher on average
    scores = np.round(rng.normal(size=n) + labels, 1)
    fpr, tpr, thr = roc_curve(scores, labels)
    s_fpr, s_tpr, s_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, s_fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, s_tpr, rtol=0, atol=1e-15)
    assert thr[0] == np.inf and s_thr[0] == np.inf
    np.testing.assert_array_equal(thr[1:], s_thr[1:])
    assert len(thr) == len(np.unique(scores)) + 1  # one point per distinct threshold
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_curve_hand_example_and_input_types() -> None:
    # genuine 0.9, 0.6, 0.6 ; impostor 0.6, 0.2
    scores = torch.tensor([0.9, 0.6, 0.2, 0.6, 0.6])
    labels = np.array([True, True, False, False, True])
    fpr, tpr, thr = roc_curve(scores, labels)
    np.testing.assert_allclose(thr[1:], [0.9, 0.6, 0.2], rtol=1e-6)
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    # area: 0.5 * (1/3 + 1)/2 ... trapezoid between (0,1/3) and (0.5,1) then (0.5,1) -> (1,1)
    assert auc(fpr, tpr) == pytest.approx(0.5 * (1 / 3 + 1) / 2 + 0.5)


def test_tar_at_far_picks_lowest_threshold_within_far() -> None:
    # 10 impostors 0.0 .. 0.9, 4 genuine
    imp = np.arange(10) / 10.0
    gen = np.array([0.95, 0.85, 0.75, 0.05])
    scores = np.r_[gen, imp]
    labels = np.r_[np.ones(4), np.zeros(10)]
    d = tar_at_far_details(scores, labels, fars=(0.1, 0.2, 0.25, 1.0))
    # FAR 0.1: one impostor (0.9) may pass -> threshold 0.85 (FAR 0.1), genuine >= 0.85: 2/4
    assert d[0.1]["tar"] == pytest.approx(0.5)
    assert d[0.1]["threshold"] == pytest.approx(0.85)
    assert d[0.1]["far_achieved"] == pytest.approx(0.1)
    # FAR 0.2: impostors 0.9, 0.8 -> threshold 0.75 is allowed (FAR 0.2): 3/4
    assert d[0.2]["tar"] == pytest.approx(0.75)
    # FAR 0.25 can't be hit exactly: best is still FAR 0.2
    assert d[0.25]["tar"] == pytest.approx(0.75) and d[0.25]["far_achieved"] == pytest.approx(0.2)
    assert d[1.0]["tar"] == 1.0
    assert all(v["reliable"] for v in d.values())
    assert tar_at_far(scores, labels, fars=(0.1,)) == {0.1: pytest.approx(0.5)}


def test_tar_at_far_flags_too_few_impostors() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(500), np.zeros(1000)]
    scores = rng.normal(size=1500) + 3 * labels
    d = tar_at_far_details(scores, labels)
    assert set(d) == set(DEFAULT_FARS)
    for far in (1e-6, 1e-5, 1e-4):
        assert math.isnan(d[far]["tar"]) and not d[far]["reliable"]
        assert "1000 available" in d[far]["reason"] and f"{round(1 / far)}" in d[far]["reason"]
    for far in (1e-3, 1e-2, 1e-1):  # 1000 impostors measure FAR 1e-3 (one false accept)
        assert d[far]["reliable"] and d[far]["reason"] is None
        assert d[far]["far_achieved"] <= far
        # independent check: TAR = fraction of genuine >= threshold where #impostor >= threshold <= far*1000
        thr = d[far]["threshold"]
        assert np.mean(scores[labels == 0] >= thr) <= far
        assert d[far]["tar"] == pytest.approx(np.mean(scores[labels == 1] >= thr))
        # and it is the lowest such threshold: the next lower impostor score would exceed the FAR
        imp_sorted = np.sort(scores[labels == 0])[::-1]
        n_allowed = int(round(far * 1000))
        assert thr > imp_sorted[n_allowed]
    plain = tar_at_far(scores, labels)
    assert math.isnan(plain[1e-6]) and plain[1e-1] == d[1e-1]["tar"]


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="both genuine and impostor"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        roc_curve([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="NaN"):
        roc_curve([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        roc_curve([0.1, 0.2], [2, 0])
    with pytest.raises(ValueError, match="target FAR"):
        tar_at_far([0.1, 0.2], [1, 0], fars=(0.0,))


def test_markdown_table() -> None:
    scores = np.r_[np.linspace(0.5, 1, 10), np.linspace(0, 0.6, 20)]
    labels = np.r_[np.ones(10), np.zeros(20)]
    text = tar_table_markdown({"lh2face": tar_at_far_details(scores, labels, fars=(1e-3, 1e-1))})
    lines = text.splitlines()
    assert lines[0] == "| Method | TAR@FAR=1e-3 | TAR@FAR=1e-1 |"
    # FAR 0.1 of 20 impostors: 2 may pass (0.6, 0.568) -> threshold above 0.537; genuine >= that
    thr = tar_at_far_details(scores, labels, fars=(1e-1,))[1e-1]["threshold"]
    expected = 100 * np.mean(scores[:10] >= thr)
    assert lines[2] == f"| lh2face | n/a | {expected:.2f} |"
    assert "n/a: FAR 1e-3 needs >= 1000 impostor pairs, only 20 available" in text
    assert [format_far(f) for f in (1e-6, 0.25)] == ["1e-6", "0.25"]


def test_plots_write_pngs_of_the_requested_size(tmp_path) -> None:
    from lh2face.io import read_image
    from recognition.eval.plots import plot_lines, plot_metric_bars, plot_roc, thin_roc

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(2000), np.zeros(20000)]
    scores = rng.normal(size=labels.size) + 2 * labels
    fpr, tpr, _ = roc_curve(scores, labels)
    plot_roc(tmp_path / "sub" / "roc.png", {"a": (fpr, tpr), "b": (fpr, np.sqrt(tpr))}, figsize=(5, 4), dpi=80)
    img = read_image(tmp_path / "sub" / "roc.png")
    assert img.shape == (320, 400, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10
    plot_metric_bars(tmp_path / "bars.png", {"arcface": 0.9, "lh2face": 0.93}, {"arcface": 0.01})
    assert read_image(tmp_path / "bars.png").shape == (480, 640, 3)
    plot_lines(tmp_path / "lines.png", {"x": ([1, 2, 3], [0.1, 0.5, 0.2])}, logx=True, dpi=50)
    assert read_image(tmp_path / "lines.png").shape == (240, 320, 3)
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no temporary files
    # thinning keeps the step curve's values on its own points
    tx, ty = thin_roc(fpr, tpr, max_points=500)
    assert len(tx) <= 500 and tx[-1] == 1.0 and ty[-1] == 1.0
    original = set(zip(fpr.tolist(), tpr.tolist()))
    assert all(p in original for p in zip(tx.tolist(), ty.tolist()))  # only measured points
    pos = tx > 0  # on the log axis each kept point is the last one at its FAR
    idx = np.searchsorted(fpr, tx[pos], side="right") - 1
    np.testing.assert_array_equal(tpr[idx], ty[pos])
    with pytest.raises(ValueError, match="no curves"):
        plot_roc(tmp_path / "x.png", {})
