"""LFW-protocol verification (recognition.eval.verification) and flip-test extraction (features)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from recognition.eval.features import extract_embeddings, iter_batches
from recognition.eval.verification import (
    evaluate_image_pairs,
    best_threshold,
    cosine_similarity,
    evaluate_pairs,
    evaluate_scores,
    fold_indices,
    summary,
)


def test_hand_computed_two_fold_example() -> None:
    scores = np.array([0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.1, 0.6])
    issame = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    r = evaluate_scores(scores, issame, n_folds=2)
    # fold 1 held out: trained on (0.7 s, 0.4 d, 0.1 s, 0.6 d) -> best cut 0.65 (3/4) -> fold 1 all right
    # fold 2 held out: trained on (0.9 s, 0.2 d, 0.8 s, 0.3 d) -> cut 0.55 (4/4) -> 0.1 and 0.6 wrong
    np.testing.assert_allclose(r["fold_thresholds"], [0.65, 0.55])
    np.testing.assert_allclose(r["fold_accuracies"], [1.0, 0.5])
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["accuracy_std"] == pytest.approx(0.25)
    assert r["threshold"] == pytest.approx(0.6)
    assert (r["n_pairs"], r["n_genuine"], r["n_impostor"]) == (8, 4, 4)
    # all-pairs ROC: genuine {.9,.8,.7,.1}, impostor {.2,.3,.4,.6}: AUC = P(g > i) = 12/16
    assert r["auc"] == pytest.approx(12 / 16)
    assert "acc 75.00 +- 25.00" in summary(r)


def test_perfectly_separable_scores() -> None:
    rng = np.random.default_rng(0)
    issame = rng.integers(0, 2, 600).astype(bool)
    scores = np.where(issame, rng.uniform(0.5, 1.0, 600), rng.uniform(-1.0, 0.4, 600))
    r = evaluate_scores(scores, issame)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0
    assert len(r["fold_accuracies"]) == 10
    assert 0.4 < r["threshold"] < 0.5
    assert r["auc"] == pytest.approx(1.0, abs=1e-12)
    assert r["tar_at_far"][1e-1] == 1.0 and r["tar_at_far"][1e-2] == 1.0
    assert math.isnan(r["tar_at_far"][1e-3])  # < 1000 impostors
    assert r["tar_at_far_details"][1e-3]["tar_at_zero_fa"] == 1.0


def test_folds_match_sklearn_kfold() -> None:
    n = 23
    ours = fold_indices(n, 10)
    theirs = [test for _, test in KFold(n_splits=10, shuffle=False).split(np.zeros(n))]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="cannot split 5 pairs into 10 folds"):
        fold_indices(5, 10)


def test_best_threshold_is_brute_force_optimum() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 2)
    thr, acc = best_threshold(scores, labels)
    # brute force: every "score >= t" rule for t in the observed values, plus "all different"
    cands = np.r_[np.unique(scores), np.inf]
    brute = max(np.mean((scores >= t) == (labels == 1)) for t in cands)
    assert acc == pytest.approx(brute)
    assert np.mean((scores > thr) == (labels == 1)) == pytest.approx(acc)


def test_evaluate_pairs_uses_cosine_similarity() -> None:
    rng = np.random.default_rng(1)
    n = 200
    theta = rng.uniform(0, math.pi, n)
    emb1 = np.stack([np.ones(n), np.zeros(n)], 1) * rng.uniform(0.5, 3, (n, 1))  # norms must not matter
    emb2 = np.stack([np.cos(theta), np.sin(theta)], 1) * rng.uniform(0.5, 3, (n, 1))
    issame = theta < 1.0
    r = evaluate_pairs(torch.tensor(emb1), emb2, issame, n_folds=5)
    np.testing.assert_allclose(r["scores"], np.cos(theta), atol=1e-12)
    ref = evaluate_scores(np.cos(theta), issame, n_folds=5)
    assert r["accuracy"] == ref["accuracy"] == 1.0
    np.testing.assert_allclose(r["tpr"], ref["tpr"])
    with pytest.raises(ValueError, match="same shape"):
        cosine_similarity(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="zero norm"):
        cosine_similarity(np.zeros((1, 2)), np.ones((1, 2)))


# ------------------------------------------------------------------------------------ flip-test


def _symmetric_fn(x: torch.Tensor) -> torch.Tensor:
    """Mean colour and mean of squared pixels: invariant to a horizontal flip."""
    return torch.cat([x.mean(dim=(2, 3)), (x**2).mean(dim=(2, 3))], 1)


def _asymmetric_fn(x: torch.Tensor) -> torch.Tensor:
    """Left-half minus right-half mean per channel: the flip negates it."""
    w = x.shape[3] // 2
    return x[..., :w].mean(dim=(2, 3)) - x[..., w:].mean(dim=(2, 3)) + 1.0


def test_flip_test_of_symmetric_function_doubles() -> None:
    x = torch.rand(13, 3, 8, 6)
    single = extract_embeddings(_symmetric_fn, x, batch_size=4, flip=False, progress=False)
    both = extract_embeddings(_symmetric_fn, x, batch_size=4, flip=True, progress=False)
    np.testing.assert_allclose(single, _symmetric_fn(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(both, 2 * single, rtol=1e-6)
    assert both.shape == (13, 6) and both.dtype == np.float32


def test_flip_test_equals_manual_computation_for_all_input_kinds() -> None:
    x = torch.rand(10, 3, 4, 6)
    manual = (_asymmetric_fn(x) + _asymmetric_fn(torch.flip(x, dims=(3,)))).numpy()
    # with this function the flip exactly cancels the asymmetric part: each row is 2.0
    np.testing.assert_allclose(manual, 2.0, atol=1e-6)
    dataset = [(x[i], i) for i in range(10)]  # (image, label) items like ImageFolderDataset
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=3)
    for source in (x, x.numpy(), dataset, [{"image": x[i]} for i in range(10)], loader):
        got = extract_embeddings(_asymmetric_fn, source, batch_size=4, progress=False)
        np.testing.assert_allclose(got, manual, atol=1e-6)
    e, ef = extract_embeddings(_asymmetric_fn, x, batch_size=4, return_both=True, progress=False)
    np.testing.assert_allclose(e, _asymmetric_fn(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(ef, _asymmetric_fn(torch.flip(x, dims=(3,))).numpy(), atol=1e-6)
    unit = extract_embeddings(_asymmetric_fn, x, normalize=True, flip=False, progress=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_extract_embeddings_module_mode_and_no_grad() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5), torch.nn.Dropout(0.9))
    net.train()
    seen = {}

    def fn(b: torch.Tensor) -> torch.Tensor:
        out = net(b)
        seen["grad"] = out.requires_grad
        seen["training"] = net.training
        return out

    x = torch.rand(6, 3, 4, 4)
    a = extract_embeddings(net, x, flip=False, progress=False)
    b = extract_embeddings(net, x, flip=False, progress=False)
    np.testing.assert_array_equal(a, b)  # eval mode: dropout off, deterministic
    assert net.training  # restored
    extract_embeddings(fn, x, progress=False)
    assert seen["grad"] is False


def test_iter_batches_recuts_batches_and_rejects_bad_items() -> None:
    x = torch.rand(10, 3, 2, 2)
    chunks = [x[:3], x[3:4], x[4:10]]  # mixed batch sizes
    sizes = [b.shape[0] for b in iter_batches(chunks, 4)]
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(torch.cat(list(iter_batches(chunks, 4))).numpy(), x.numpy())
    with pytest.raises(ValueError, match="item 1: got None"):
        list(iter_batches([x[0], None], 4))
    with pytest.raises(ValueError, match="return_both=True needs flip=True"):
        extract_embeddings(_symmetric_fn, x, flip=False, return_both=True)
    with pytest.raises(ValueError, match="must return \\(B, d\\)"):
        extract_embeddings(lambda b: b.mean(dim=(1, 2, 3)), x, progress=False)


def test_evaluate_image_pairs_interleaved_layout() -> None:
    # pair i = images (2i, 2i+1); flat images whose colour encodes the identity
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 4, 40)
    palette = torch.eye(3)[[0, 1, 2, 0]] + torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0.5, 0.5]])
    images = palette[ids][:, :, None, None].expand(40, 3, 4, 4).contiguous()
    issame = ids[0::2] == ids[1::2]
    r = evaluate_image_pairs(lambda x: x.mean(dim=(2, 3)), images, issame, n_folds=2, progress=False)
    # cosine of the palette colours, computed directly
    c = palette[ids].numpy()
    expected = np.sum(c[0::2] * c[1::2], 1) / np.linalg.norm(c[0::2], axis=1) / np.linalg.norm(c[1::2], axis=1)
    np.testing.assert_allclose(r["scores"], expected, atol=1e-6)
    assert r["accuracy"] == 1.0
    with pytest.raises(ValueError, match="2 images per pair"):
        evaluate_image_pairs(lambda x: x.mean(dim=(2, 3)), images[:38], issame, progress=False)
