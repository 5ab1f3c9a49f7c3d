"""Score-based verification metrics: ROC curve, AUC, TAR at fixed FAR, a markdown TAR table.

Conventions: a *score* is a similarity (higher means "same identity"); a pair is accepted when
``score >= threshold``. ``labels`` are 1 (genuine / same identity) or 0 (impostor). FAR is the
fraction of impostor pairs accepted, TAR the fraction of genuine pairs accepted.

Pure numpy; accepts numpy arrays, lists or torch tensors (converted on the host).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

#: The FAR operating points reported for IJB-B/C and the verification sets.
DEFAULT_FARS: Tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _as_1d(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 2 and 1 in arr.shape:  # (N, 1) or (1, N) column / row vectors
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_scores_labels(scores: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray]:
    s = _as_1d(scores, "scores").astype(np.float64)
    y = _as_1d(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if s.size == 0:
        raise ValueError("no scores given (empty array)")
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise ValueError(f"{bad} score(s) are NaN or infinite; check the embeddings (NaN in the model output?)")
    if y.dtype == bool:
        y = y.astype(np.int64)
    uniq = np.unique(y)
    if not np.all(np.isin(uniq, (0, 1))):
        raise ValueError(f"labels must be 0/1 or bool (1 = same identity), got values {uniq[:10].tolist()}")
    return s, y.astype(np.int64)


def roc_curve(scores: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of similarity scores, one point per distinct threshold (tied scores form one point).

    Args:
        scores: (N,) similarities, higher = more likely genuine.
        labels: (N,) 1 genuine / 0 impostor (bool accepted).
    Returns:
        fpr, tpr, thresholds: each (K+1,) float64, thresholds decreasing; the first point is
        (0, 0) at threshold +inf, then one point per distinct score value ``t`` with
        fpr = #impostors with score >= t / #impostors (same for tpr on genuine pairs).
        This is scikit-learn's ``roc_curve(..., drop_intermediate=False)`` convention (>= 1.3).
    Raises ValueError when there are no genuine or no impostor pairs.
    """
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC needs both genuine and impostor pairs; got {n_pos} genuine and {n_neg} impostor"
        )
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores -> one point per distinct threshold
    last_of_run = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def auc(fpr: Any, tpr: Any) -> float:
    """Area under a curve given by points (fpr, tpr) with fpr non-decreasing (trapezoidal rule)."""
    x = _as_1d(fpr, "fpr").astype(np.float64)
    yv = _as_1d(tpr, "tpr").astype(np.float64)
    if x.shape != yv.shape or x.size < 2:
        raise ValueError(f"auc needs two arrays of equal length >= 2, got {x.shape} and {yv.shape}")
    dx = np.diff(x)
    if np.any(dx < 0):
        raise ValueError("auc: fpr must be non-decreasing (pass the output of roc_curve)")
    return float(np.sum(dx * (yv[1:] + yv[:-1]) / 2.0))


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC of (scores, labels); 0.5 = chance, 1 = perfectly separable."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return auc(fpr, tpr)


def tar_at_far_details(
    scores: Any,
    labels: Any,
    fars: Iterable[float] = DEFAULT_FARS,
    roc: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
) -> Dict[float, Dict[str, Any]]:
    """TAR at each target FAR with the operating point behind it.

    For a target ``f`` the operating point is the ROC point with the largest FAR not above ``f``
    (equivalently the lowest threshold whose FAR <= f), i.e. the best TAR achievable without
    exceeding ``f`` on this set. No interpolation between points. (insightface's IJB script takes
    the ROC point whose FAR is *nearest* to ``f``, which may lie slightly above it; with IJB-C's
    ~15.6 M impostor pairs the two differ by at most a few impostors' worth of FAR.)

    A FAR of ``f`` can only be measured with at least ``1/f`` impostor pairs (one false accept
    among them is a FAR of ``1/n_impostor``). Below that count the entry is *not reliable*: ``tar``
    is NaN, ``reliable`` False and ``reason`` says how many impostors would be needed; the TAR at
    zero false accepts that the data does allow is kept under ``tar_at_zero_fa`` for reference.

    Returns ``{far: {"tar", "threshold", "far_achieved", "n_impostor", "n_genuine", "reliable",
    "reason", "tar_at_zero_fa"}}`` with plain Python floats / ints / bools / str-or-None.
    """
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    fpr, tpr, thr = roc if roc is not None else roc_curve(s, y)
    out: Dict[float, Dict[str, Any]] = {}
    for far in fars:
        far = float(far)
        if not (0.0 < far <= 1.0):
            raise ValueError(f"target FAR must be in (0, 1], got {far}")
        # last ROC index with fpr <= far (fpr is non-decreasing; index 0 has fpr 0)
        k = int(np.searchsorted(fpr, far * (1 + 1e-12), side="right") - 1)
        reliable = n_neg * far >= 1.0 - 1e-9
        needed = int(math.ceil(1.0 / far - 1e-9))
        entry: Dict[str, Any] = {
            "tar": float(tpr[k]) if reliable else float("nan"),
            "threshold": float(thr[k]),
            "far_achieved": float(fpr[k]),
            "n_impostor": n_neg,
            "n_genuine": n_pos,
            "reliable": bool(reliable),
            "reason": None
            if reliable
            else f"FAR {format_far(far)} needs >= {needed} impostor pairs, only {n_neg} available",
            "tar_at_zero_fa": float(tpr[int(np.searchsorted(fpr, 0.0, side="right") - 1)]),
        }
        out[far] = entry
    return out


def tar_at_far(
    scores: Any,
    labels: Any,
    fars: Iterable[float] = DEFAULT_FARS,
    roc: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None,
) -> Dict[float, float]:
    """``{far: TAR}`` at the lowest threshold whose FAR <= far (see :func:`tar_at_far_details`).

    The value is NaN when the impostor count is below ``1/far`` (that FAR cannot be measured on
    this set); :func:`tar_at_far_details` gives the reason and the operating points.
    """
    return {f: d["tar"] for f, d in tar_at_far_details(scores, labels, fars, roc=roc).items()}


def format_far(far: float) -> str:
    """1e-4 -> '1e-4', 0.25 -> '0.25' (table headers and dictionary keys meant for people)."""
    far = float(far)
    if far > 0:
        exp = round(math.log10(far))
        if abs(far - 10.0**exp) <= 1e-9 * far:
            return f"1e{exp}"
    return f"{far:g}"


def tar_table_markdown(
    rows: Mapping[str, Mapping[float, Any]],
    fars: Optional[Sequence[float]] = None,
    percent: bool = True,
    digits: int = 2,
) -> str:
    """Markdown table, one row per method, one column per FAR.

    Args:
        rows: ``{method: {far: tar}}`` or ``{method: {far: details-dict}}`` (the output of
            :func:`tar_at_far` or :func:`tar_at_far_details`).
        fars: column order; default the union of keys, ascending.
        percent: print TAR x 100.
    Unreliable / NaN entries print as ``n/a`` and a footnote lists the reasons.
    """
    if fars is None:
        fars = sorted({float(f) for r in rows.values() for f in r})
    header = "| Method | " + " | ".join(f"TAR@FAR={format_far(f)}" for f in fars) + " |"
    sep = "|---|" + "|".join("---:" for _ in fars) + "|"
    lines = [header, sep]
    notes = []
    for name, r in rows.items():
        cells = []
        for f in fars:
            v = r.get(f, r.get(float(f)))
            reason = None
            if isinstance(v, Mapping):
                reason = v.get("reason")
                v = v.get("tar")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("n/a")
                if reason and reason not in notes:
                    notes.append(reason)
            else:
                val = float(v) * (100.0 if percent else 1.0)
                cells.append(f"{val:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"n/a: {n}" for n in notes) + "\n"
    return text
