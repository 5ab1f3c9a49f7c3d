"""How much identity the 3D channels carry: pair lists and feature vectors for verification.

Pure numpy helpers used by bench/identity_3d.py (which scores the pairs with
recognition.eval.verification; recon never imports recognition):

* `all_pairs(labels)`      every unordered pair i < j and whether both photos show the same person;
* `balanced_pairs(labels)` every genuine pair plus as many impostor pairs drawn at random, shuffled so
                           that contiguous folds mix both kinds (chance accuracy 50 %);
* `coverage_region(masks)` the pixels covered by at least a fraction of the faces' masks;
* `image_features(images, region)` the region's pixels as one vector per image;
* `centre(features)`       subtract the mean over the set (the "average face"), so cosine measures how a
                           face deviates from the average, not how much it looks like a face at all;
* `standardise(features)`  per-row zero mean, unit std (removes global brightness / contrast);
* `cosine_scores(features, i, j)` the pair scores;
* `spread(features)`       how much the features vary over the set at all (mean per-dimension std);
* `identity_fraction(features, labels)` the share of that variance that lies between people.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["all_pairs", "balanced_pairs", "coverage_region", "image_features", "centre", "standardise",
           "cosine_scores", "labels_from_paths", "spread", "identity_fraction"]


def _labels(labels: Sequence) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size < 2:
        raise ValueError(f"labels must be a 1-d sequence of at least 2 identities, got shape {lab.shape}")
    return lab


def all_pairs(labels: Sequence) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair (i < j) of N labelled samples -> (i (M,), j (M,), same (M,) bool),
    M = N (N - 1) / 2, in row-major order of the upper triangle."""
    lab = _labels(labels)
    i, j = np.triu_indices(lab.size, k=1)
    return i.astype(np.int64), j.astype(np.int64), lab[i] == lab[j]


def balanced_pairs(labels: Sequence, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All genuine pairs plus an equal number of impostor pairs drawn without replacement (or all impostor
    pairs when there are fewer), the whole list shuffled with `seed` -> (i, j, same) like `all_pairs`.
    Raises ValueError when there is no genuine or no impostor pair."""
    i, j, same = all_pairs(labels)
    pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need genuine and impostor pairs; got {pos.size} genuine and {neg.size} impostor "
                         "(give at least 2 photos of at least 2 people)")
    rng = np.random.default_rng(seed)
    neg = rng.choice(neg, size=min(pos.size, neg.size), replace=False)
    keep = rng.permutation(np.concatenate([pos, neg]))
    return i[keep], j[keep], same[keep]


def coverage_region(masks: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    """masks (N,1,H,W) or (N,H,W) coverage in [0,1] -> bool (H,W): pixels with coverage > 0.5 in at least
    `min_fraction` of the N faces (the region the features are read from)."""
    m = np.asarray(masks, dtype=np.float64)
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"masks must be (N,1,H,W) or (N,H,W), got {m.shape}")
        m = m[:, 0]
    if m.ndim != 3 or m.shape[0] == 0:
        raise ValueError(f"masks must be (N,1,H,W) or (N,H,W) with N >= 1, got {m.shape}")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    return (m > 0.5).mean(0) >= min_fraction - 1e-12


def image_features(images: np.ndarray, region: Optional[np.ndarray] = None) -> np.ndarray:
    """images (N,C,H,W) -> float64 (N, C * K): the K pixels of `region` (bool (H,W); None = all pixels) of
    every channel, channel-major."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"images must be (N,C,H,W), got {x.shape}")
    if region is None:
        return x.reshape(x.shape[0], -1)
    region = np.asarray(region, dtype=bool)
    if region.shape != x.shape[2:]:
        raise ValueError(f"region {region.shape} does not match the images' (H,W) {x.shape[2:]}")
    if not region.any():
        raise ValueError("the region is empty (no pixel is covered by enough faces)")
    return x[:, :, region].reshape(x.shape[0], -1)


def centre(features: np.ndarray) -> np.ndarray:
    """(N,d) -> (N,d) minus the mean row (the set's average)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N,d), got {f.shape}")
    return f - f.mean(0, keepdims=True)


def standardise(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(N,d) -> (N,d) each row minus its mean, divided by its std (rows with std <= eps: just centred)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N,d), got {f.shape}")
    f = f - f.mean(1, keepdims=True)
    sd = f.std(1, keepdims=True)
    return f / np.where(sd > eps, sd, 1.0)


def cosine_scores(features: np.ndarray, i: np.ndarray, j: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of rows i[k] and j[k] of features (N,d) -> (M,) float64. A zero row scores 0
    against everything (no direction, no evidence either way)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N,d), got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN/inf")
    norm = np.linalg.norm(f, axis=1)
    unit = f / np.where(norm > eps, norm, np.inf)[:, None]
    return np.einsum("md,md->m", unit[np.asarray(i)], unit[np.asarray(j)])


def labels_from_paths(paths: Sequence[str]) -> np.ndarray:
    """Identity label of each photo = the name of the folder holding it (ImageFolder / LFW / AT&T layout)."""
    from pathlib import Path

    return np.array([Path(p).parent.name for p in paths])


def spread(features: np.ndarray) -> float:
    """Mean over the d dimensions of the (population) std over the N rows of features (N,d): how far the
    set's members differ from each other at all, in the features' own unit (e.g. [0,1] pixel values)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N,d) with N >= 2, got {f.shape}")
    return float(f.std(0).mean())


def identity_fraction(features: np.ndarray, labels: Sequence) -> float:
    """Between-identity share of the total variance of features (N,d): sum over dimensions of
    sum_people n_p |mean_p - mean|^2 divided by sum_i |f_i - mean|^2, in [0,1]. About (people - 1) /
    (N - 1) when the features ignore identity (random rows), 1 when every person's photos coincide.
    NaN when the features do not vary at all."""
    f = np.asarray(features, dtype=np.float64)
    lab = _labels(labels)
    if f.ndim != 2 or f.shape[0] != lab.size:
        raise ValueError(f"features must be (N,d) with N = {lab.size} labels, got {f.shape}")
    mu = f.mean(0)
    total = float(((f - mu) ** 2).sum())
    if total <= 0.0:
        return float("nan")
    between = 0.0
    for person in np.unique(lab):
        rows = f[lab == person]
        between += rows.shape[0] * float(((rows.mean(0) - mu) ** 2).sum())
    return between / total
