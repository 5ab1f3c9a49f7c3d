"""Pair verification with the LFW protocol (10-fold threshold selection) plus ROC / TAR@FAR.

Protocol (as used for LFW, CFP, AgeDB verification .bin sets, e.g. insightface
``recognition/arcface_torch/eval/verification.py``): the pairs are split into ``n_folds``
contiguous folds in file order (LFW's pairs.txt lists its 10 official sets one after another,
so contiguous folds are the official splits); for each fold the threshold with the best accuracy
on the other folds is applied to the held-out fold. Reported: mean and (population) standard
deviation of the held-out accuracies, and the mean of the selected thresholds.

The threshold search here is exact rather than a grid: every midpoint between consecutive
distinct training scores is a candidate (a pair is called "same" when score > threshold).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

from .metrics import DEFAULT_FARS, _check_scores_labels, auc, roc_curve, tar_at_far_details


def _to_numpy_2d(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, d) embeddings, got shape {arr.shape}")
    return arr


def cosine_similarity(emb1: Any, emb2: Any, eps: float = 1e-12) -> np.ndarray:
    """Row-wise cosine similarity of (N, d) and (N, d) -> (N,) float64 in [-1, 1]."""
    a = _to_numpy_2d(emb1, "emb1")
    b = _to_numpy_2d(emb2, "emb2")
    if a.shape != b.shape:
        raise ValueError(f"emb1 and emb2 must have the same shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    if np.any(na <= eps) or np.any(nb <= eps):
        raise ValueError("some embeddings have zero norm; cosine similarity is undefined for them")
    return np.einsum("ij,ij->i", a, b) / (na * nb)


def fold_indices(n: int, n_folds: int) -> List[np.ndarray]:
    """Contiguous folds over range(n), the first n % n_folds folds one longer (like KFold, no shuffle)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if n < n_folds:
        raise ValueError(f"cannot split {n} pairs into {n_folds} folds; use fewer folds")
    return [np.asarray(f, dtype=np.int64) for f in np.array_split(np.arange(n), n_folds)]


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> Tuple[float, float]:
    """Threshold maximising accuracy of the rule "same iff score > threshold".

    Candidates: one below all scores, the midpoints between consecutive distinct scores, one above
    all. Ties in accuracy go to the lowest candidate threshold. Returns (threshold, accuracy).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    n = s.size
    n_pos = int(y.sum())
    # cut after position k (k = 0..n): the lowest k scores are called "different".
    # Only cuts between distinct values (and the two ends) are realisable thresholds.
    neg_below = np.r_[0, np.cumsum(1 - y_sorted)]  # impostors among the lowest k
    pos_below = np.r_[0, np.cumsum(y_sorted)]
    correct = neg_below + (n_pos - pos_below)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s_sorted[1:] != s_sorted[:-1]
    cand = np.nonzero(valid)[0]
    k = int(cand[np.argmax(correct[cand])])
    span = float(s_sorted[-1] - s_sorted[0]) or 1.0
    if k == 0:
        thr = float(s_sorted[0] - 1e-3 * span)
    elif k == n:
        thr = float(s_sorted[-1] + 1e-3 * span)
    else:
        thr = float((s_sorted[k - 1] + s_sorted[k]) / 2.0)
    return thr, float(correct[k]) / n


def evaluate_scores(
    scores: Any,
    issame: Any,
    n_folds: int = 10,
    fars: Iterable[float] = DEFAULT_FARS,
) -> Dict[str, Any]:
    """LFW-protocol accuracy and ROC metrics from pair similarity scores.

    Args:
        scores: (N,) similarities (higher = same), in pair-file order.
        issame: (N,) bool / 0-1, True for genuine pairs.
        n_folds: folds for threshold selection (10 for LFW).
        fars: FAR targets for the TAR table.
    Returns a plain dict:
        accuracy, accuracy_std (population std over folds), threshold (mean of fold thresholds),
        fold_accuracies, fold_thresholds (lists), best_threshold_all / accuracy_all (threshold
        fitted on all pairs and its accuracy, optimistic), tar_at_far {far: TAR or NaN},
        tar_at_far_details {far: dict}, fpr, tpr, roc_thresholds (numpy arrays), auc,
        n_pairs, n_genuine, n_impostor.
    """
    s, y = _check_scores_labels(scores, issame)
    n = s.size
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == n:
        raise ValueError(f"verification needs both genuine and impostor pairs; got {n_pos} of {n} genuine")
    folds = fold_indices(n, n_folds)
    accs: List[float] = []
    thrs: List[float] = []
    for test_idx in folds:
        train = np.ones(n, dtype=bool)
        train[test_idx] = False
        thr, _ = best_threshold(s[train], y[train])
        pred = s[test_idx] > thr
        accs.append(float(np.mean(pred == (y[test_idx] == 1))))
        thrs.append(thr)
    thr_all, acc_all = best_threshold(s, y)
    roc = roc_curve(s, y)
    details = tar_at_far_details(s, y, fars, roc=roc)
    fpr, tpr, roc_thr = roc
    return {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "threshold": float(np.mean(thrs)),
        "fold_accuracies": accs,
        "fold_thresholds": thrs,
        "best_threshold_all": thr_all,
        "accuracy_all": acc_all,
        "tar_at_far": {f: d["tar"] for f, d in details.items()},
        "tar_at_far_details": details,
        "fpr": fpr,
        "tpr": tpr,
        "roc_thresholds": roc_thr,
        "auc": auc(fpr, tpr),
        "n_pairs": int(n),
        "n_genuine": n_pos,
        "n_impostor": int(n - n_pos),
    }


def evaluate_pairs(
    emb1: Any,
    emb2: Any,
    issame: Any,
    n_folds: int = 10,
    fars: Iterable[float] = DEFAULT_FARS,
) -> Dict[str, Any]:
    """Verification of embedding pairs: cosine similarity, then :func:`evaluate_scores`.

    Args:
        emb1, emb2: (N, d) embeddings of the two sides of each pair (any norm; torch or numpy).
        issame: (N,) bool, True for genuine pairs.
    Returns the dict of :func:`evaluate_scores` plus ``scores`` (N,) cosine similarities.
    """
    scores = cosine_similarity(emb1, emb2)
    out = evaluate_scores(scores, issame, n_folds=n_folds, fars=fars)
    out["scores"] = scores
    return out


def evaluate_image_pairs(
    embed_fn: Any,
    images: Any,
    issame: Any,
    batch_size: int = 64,
    flip: bool = True,
    device: Any = "cpu",
    n_folds: int = 10,
    fars: Iterable[float] = DEFAULT_FARS,
    progress: bool = True,
) -> Dict[str, Any]:
    """Verification set of interleaved pairs (the verification .bin layout: images 2i and 2i+1 form
    pair i): flip-test embeddings, then :func:`evaluate_pairs`.

    Args:
        embed_fn: (B, 3, H, W) float [0, 1] -> (B, d).
        images: (2N, 3, H, W) float [0, 1] tensor, or a Dataset / iterable of 2N images.
        issame: (N,) bool.
    """
    from .features import extract_embeddings

    same = np.asarray(issame.detach().cpu().numpy() if hasattr(issame, "detach") else issame).reshape(-1)
    emb = extract_embeddings(embed_fn, images, batch_size=batch_size, flip=flip, device=device, progress=progress)
    if emb.shape[0] != 2 * same.shape[0]:
        raise ValueError(
            f"{emb.shape[0]} images for {same.shape[0]} pairs; a verification set holds 2 images per pair"
        )
    return evaluate_pairs(emb[0::2], emb[1::2], same, n_folds=n_folds, fars=fars)


def summary(result: Dict[str, Any], fars: Iterable[float] = (1e-3, 1e-2)) -> str:
    """One line for logs: 'acc 99.12 +- 0.30 | TAR@FAR=1e-3 95.00 | ...'."""
    from .metrics import format_far

    parts = [f"acc {100 * result['accuracy']:.2f} +- {100 * result['accuracy_std']:.2f}"]
    for f in fars:
        v = result["tar_at_far"].get(float(f))
        parts.append(f"TAR@FAR={format_far(f)} " + ("n/a" if v is None or v != v else f"{100 * v:.2f}"))
    return " | ".join(parts)
