"""Five-point face alignment to the ArcFace 112x112 template, with numpy only (no OpenCV).

Coordinates follow DESIGN.md section 5: pixel coordinates (x right, y down), origin at the top-left
corner of the top-left pixel, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5). An affine
matrix M (2, 3) maps a source point p = (x, y) to M[:, :2] @ p + M[:, 2] in the output image.

Landmark order (as insightface / RetinaFace): left eye, right eye (in the image), nose tip, left mouth
corner, right mouth corner.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

ARCFACE_TEMPLATE: np.ndarray = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ARCFACE_TEMPLATE.setflags(write=False)

SizeLike = Union[int, Sequence[int]]


def _as_points(a: np.ndarray, name: str) -> np.ndarray:
    p = np.asarray(a, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 2:
        raise ValueError(f"{name}: expected an (N, 2) array of points with N >= 2, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name}: points contain NaN or inf")
    return p


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src onto dst (Umeyama 1991).

    Args:
        src, dst: (N, 2) corresponding points, N >= 2, pixels.
    Returns:
        M (2, 3) float64 with dst ~= src @ M[:, :2].T + M[:, 2]. Reflections are excluded.
    """
    s = _as_points(src, "similarity_transform src")
    d = _as_points(dst, "similarity_transform dst")
    if s.shape != d.shape:
        raise ValueError(f"similarity_transform: src {s.shape} and dst {d.shape} must have the same shape")
    n = s.shape[0]
    mu_s, mu_d = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc**2).sum() / n
    if var_s <= 1e-12:
        raise ValueError("similarity_transform: source points are all (nearly) identical; cannot fit a transform")
    cov = dc.T @ sc / n  # (2, 2) cross-covariance
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # best proper rotation, not a reflection
        e[1, 1] = -1.0
    rot = u @ e @ vt
    scale = float((sig * np.diag(e)).sum() / var_s)
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"invert_affine: expected a (2, 3) matrix, got {m.shape}")
    a = m[:, :2]
    if abs(np.linalg.det(a)) < 1e-12:
        raise ValueError("invert_affine: the matrix is singular")
    ai = np.linalg.inv(a)
    out = np.empty((2, 3), dtype=np.float64)
    out[:, :2] = ai
    out[:, 2] = -ai @ m[:, 2]
    return out


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine map to (N, 2) points."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def _size_hw(size: SizeLike) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f"warp_affine: size must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"warp_affine: output size must be positive, got {(h, w)}")
    return h, w


def warp_affine(image: np.ndarray, m: np.ndarray, size: SizeLike = (112, 112), border_value: float = 0.0) -> np.ndarray:
    """Warp an image with the affine map m (source -> output coordinates), bilinear sampling.

    Output pixel (i, j) takes the source value at m^-1 (j + 0.5, i + 0.5), interpolated bilinearly between
    source pixel centres; samples outside the source blend with `border_value` (constant border).

    Args:
        image: uint8 (H, W, C) or (H, W); float arrays are accepted and returned as float32.
        m: (2, 3) affine matrix in the pixel convention above.
        size: output size, an int or (height, width).
    Returns:
        (height, width, C) or (height, width), uint8 (rounded) for uint8 input.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"warp_affine: expected an image (H, W) or (H, W, C), got shape {img.shape}")
    if not (img.dtype == np.uint8 or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"warp_affine: image dtype must be uint8 or float, got {img.dtype}")
    oh, ow = _size_hw(size)
    inv = invert_affine(m)
    src = img.astype(np.float32)
    if src.ndim == 2:
        src = src[..., None]
    h, w, c = src.shape
    # pad one pixel of border_value on each side so out-of-range neighbours read the border constant
    padded = np.full((h + 2, w + 2, c), border_value, dtype=np.float32)
    padded[1:-1, 1:-1] = src

    jj, ii = np.meshgrid(np.arange(ow, dtype=np.float64) + 0.5, np.arange(oh, dtype=np.float64) + 0.5)
    x = inv[0, 0] * jj + inv[0, 1] * ii + inv[0, 2]
    y = inv[1, 0] * jj + inv[1, 1] * ii + inv[1, 2]
    # continuous array index: pixel centre (c + 0.5) -> index c; +1 for the padding
    u = x - 0.5 + 1.0
    v = y - 0.5 + 1.0
    u0 = np.floor(u)
    v0 = np.floor(v)
    fu = (u - u0).astype(np.float32)[..., None]
    fv = (v - v0).astype(np.float32)[..., None]
    # neighbours entirely outside the padded image read the border; clip indices and mask weights
    u0i, v0i = u0.astype(np.int64), v0.astype(np.int64)

    def tap(vi: np.ndarray, ui: np.ndarray) -> np.ndarray:
        inside = (ui >= 0) & (ui < w + 2) & (vi >= 0) & (vi < h + 2)
        vals = padded[np.clip(vi, 0, h + 1), np.clip(ui, 0, w + 1)]
        return np.where(inside[..., None], vals, np.float32(border_value))

    out = (
        tap(v0i, u0i) * (1 - fu) * (1 - fv)
        + tap(v0i, u0i + 1) * fu * (1 - fv)
        + tap(v0i + 1, u0i) * (1 - fu) * fv
        + tap(v0i + 1, u0i + 1) * fu * fv
    )
    if img.ndim == 2:
        out = out[..., 0]
    if img.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)


def template_for_size(size: int = 112) -> np.ndarray:
    """ArcFace template scaled to a square crop of side `size` (float64 (5, 2), pixels)."""
    if int(size) < 1:
        raise ValueError(f"template_for_size: size must be positive, got {size}")
    return ARCFACE_TEMPLATE.astype(np.float64) * (float(size) / 112.0)


def alignment_matrix(landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    """(2, 3) similarity taking the five landmarks (pixels) onto the template for a size x size crop."""
    lm = _as_points(landmarks5, "landmarks5")
    if lm.shape != (5, 2):
        raise ValueError(f"landmarks5: expected (5, 2) points (eyes, nose, mouth corners), got {lm.shape}")
    return similarity_transform(lm, template_for_size(size))


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = 112, return_matrix: bool = False):
    """Crop a face aligned to the ArcFace template.

    Args:
        image: uint8 (H, W, 3) RGB (grey (H, W) is expanded to RGB).
        landmarks5: (5, 2) pixels in the DESIGN.md convention.
        size: output side in pixels (template scaled by size / 112).
        return_matrix: also return the (2, 3) source -> crop matrix.
    Returns:
        uint8 (size, size, 3), and M if return_matrix.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"align_face: expected an RGB image (H, W, 3), got shape {img.shape}")
    img = img[..., :3]
    m = alignment_matrix(landmarks5, size)
    out = warp_affine(img, m, (int(size), int(size)))
    return (out, m) if return_matrix else out


__all__ = [
    "ARCFACE_TEMPLATE",
    "similarity_transform",
    "invert_affine",
    "transform_points",
    "warp_affine",
    "template_for_size",
    "alignment_matrix",
    "align_face",
]
