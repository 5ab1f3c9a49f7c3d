"""lh2face.align: Umeyama similarity, bilinear warp in the DESIGN.md pixel convention, 5-point alignment."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lh2face.align import (
    ARCFACE_TEMPLATE,
    align_face,
    invert_affine,
    similarity_transform,
    transform_points,
    warp_affine,
)


def _similarity(scale: float, theta: float, tx: float, ty: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _blobs(points, shape, sigma=2.0, amp=1.0):
    """Float image with Gaussian dots centred at continuous points (x, y); pixel centres at +0.5."""
    h, w = shape
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    out = np.zeros(shape)
    for x, y in points:
        out += amp * np.exp(-((jj - x) ** 2 + (ii - y) ** 2) / (2 * sigma**2))
    return out


def _centroid(img, x, y, r=6):
    """Intensity-weighted centroid (continuous coords) of the window of radius r around (x, y)."""
    h, w = img.shape
    i0, i1 = max(int(y) - r, 0), min(int(y) + r + 1, h)
    j0, j1 = max(int(x) - r, 0), min(int(x) + r + 1, w)
    win = img[i0:i1, j0:j1].astype(np.float64)
    jj, ii = np.meshgrid(np.arange(j0, j1) + 0.5, np.arange(i0, i1) + 0.5)
    return np.array([(win * jj).sum() / win.sum(), (win * ii).sum() / win.sum()])


def test_template_values():
    assert ARCFACE_TEMPLATE.shape == (5, 2) and ARCFACE_TEMPLATE.dtype == np.float32
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ARCFACE_TEMPLATE[4], [70.7299, 92.2041], rtol=0, atol=1e-4)
    with pytest.raises(ValueError):
        ARCFACE_TEMPLATE[0, 0] = 1.0  # read-only: nobody can corrupt the shared template


@pytest.mark.parametrize("seed", range(5))
def test_similarity_recovered_exactly(seed):
    rng = np.random.default_rng(seed)
    m_true = _similarity(rng.uniform(0.3, 3.0), rng.uniform(-np.pi, np.pi), *rng.uniform(-50, 50, 2))
    src = rng.uniform(0, 200, (5, 2))
    m = similarity_transform(src, transform_points(src, m_true))
    np.testing.assert_allclose(m, m_true, atol=1e-9)


def test_similarity_is_least_squares_with_noise():
    """Against the linear least-squares solution for M = [[a, -b, tx], [b, a, ty]] (np.linalg.lstsq)."""
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 100, (12, 2))
    dst = transform_points(src, _similarity(1.3, 0.4, 5, -3)) + rng.normal(0, 2.0, (12, 2))
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    np.testing.assert_allclose(similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_similarity_excludes_reflection_and_rejects_bad_input():
    src = ARCFACE_TEMPLATE.astype(np.float64)
    mirrored = src * [-1, 1] + [112, 0]  # a mirror image: the best *proper* similarity is wanted
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    rows = [[x, -y, 1, 0] for x, y in src] + [[y, x, 0, 1] for x, y in src]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.concatenate([mirrored[:, 0], mirrored[:, 1]]), rcond=None)[0]
    np.testing.assert_allclose(m, [[a, -b, tx], [b, a, ty]], atol=1e-9)
    with pytest.raises(ValueError, match="identical"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="same shape"):
        similarity_transform(np.zeros((4, 2)), ARCFACE_TEMPLATE)


def test_warp_identity_and_integer_shift_are_exact():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(warp_affine(img, np.array([[1.0, 0, 0], [0, 1, 0]]), (20, 30)), img)
    shifted = warp_affine(img, np.array([[1.0, 0, 3], [0, 1, -2]]), (20, 30))  # x + 3, y - 2
    assert np.array_equal(shifted[:18, 3:], img[2:, :27])
    assert (shifted[:, :3] == 0).all() and (shifted[18:] == 0).all()


def test_warp_hand_computed_upsampling():
    """2x upscale of a 2x2 float image; output pixel centres map back to quarter-pixel positions."""
    img = np.array([[0.0, 4.0], [8.0, 12.0]], dtype=np.float32)
    out = warp_affine(img, np.array([[2.0, 0, 0], [0, 2.0, 0]]), (4, 4))
    # output (1,1): centre (1.5,1.5) -> source (0.75,0.75) -> index offset (0.25,0.25) from pixel (0,0)
    assert out[1, 1] == pytest.approx(0.75 * 0.75 * 0 + 0.25 * 0.75 * 4 + 0.75 * 0.25 * 8 + 0.25 * 0.25 * 12)
    # output (2,1): centre (1.5,2.5) -> source (0.75,1.25) -> between rows 0/1 at 0.75, cols 0/1 at 0.25
    assert out[2, 1] == pytest.approx(0.25 * (0.75 * 0 + 0.25 * 4) + 0.75 * (0.75 * 8 + 0.25 * 12))
    # output (0,0): source (0.25,0.25) -> index (-0.25,-0.25): 9/16 weight on pixel (0,0), rest border 0
    assert out[0, 0] == pytest.approx(0.75 * 0.75 * 0.0)
    assert out[0, 1] == pytest.approx(0.75 * (0.75 * 0 + 0.25 * 4))


def test_warp_matches_pillow_affine_bilinear():
    """PIL's AFFINE/BILINEAR transform uses the same pixel-centre convention (centres at +0.5)."""
    rng = np.random.default_rng(3)
    img = (rng.uniform(0, 255, (60, 50, 3))).astype(np.uint8)
    m = _similarity(0.8, 0.3, 10, 4)
    inv = invert_affine(m)
    ours = warp_affine(img, m, (48, 40)).astype(int)
    ref = np.asarray(
        Image.fromarray(img).transform((40, 48), Image.Transform.AFFINE, tuple(inv.ravel()), Image.Resampling.BILINEAR)
    ).astype(int)
    # compare where the whole 2x2 neighbourhood lies inside the source (border rules may differ)
    jj, ii = np.meshgrid(np.arange(40) + 0.5, np.arange(48) + 0.5)
    x = inv[0, 0] * jj + inv[0, 1] * ii + inv[0, 2]
    y = inv[1, 0] * jj + inv[1, 1] * ii + inv[1, 2]
    inside = (x > 1) & (x < 49) & (y > 1) & (y < 59)
    assert inside.sum() > 1000
    assert np.abs(ours - ref)[inside].max() <= 1  # rounding only


@pytest.mark.parametrize("seed", range(3))
def test_warped_dots_land_where_the_transform_says(seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(25, 95, (5, 2)) + rng.uniform(0, 1, (5, 2))  # sub-pixel positions
    img = _blobs(pts, (120, 120), sigma=2.0).astype(np.float32)
    m = _similarity(rng.uniform(0.8, 1.3), rng.uniform(-0.5, 0.5), *rng.uniform(-10, 10, 2))
    out = warp_affine(img, m, (140, 140))
    for p, q in zip(pts, transform_points(pts, m)):
        np.testing.assert_allclose(_centroid(out, *q), q, atol=0.03)
    # uint8 path: rounding to integers moves the centroid only slightly
    out8 = warp_affine(np.clip(img * 255, 0, 255).astype(np.uint8), m, (140, 140))
    for q in transform_points(pts, m):
        np.testing.assert_allclose(_centroid(out8, *q), q, atol=0.1)


def test_round_trip_warp_and_inverse():
    img = (_blobs([(20.3, 30.7), (45.1, 22.9), (33.3, 50.5)], (64, 64), sigma=4.0) * 200).astype(np.float32)
    m = _similarity(1.1, 0.25, 3.0, -2.0)
    back = warp_affine(warp_affine(img, m, (80, 80)), invert_affine(m), (64, 64))
    interior = (slice(12, 52), slice(12, 52))
    assert np.abs(back[interior] - img[interior]).max() < 0.06 * img.max()  # two bilinear passes blur slightly
    np.testing.assert_allclose(invert_affine(invert_affine(m)), m, atol=1e-12)


def test_align_face_puts_landmarks_on_template():
    rng = np.random.default_rng(11)
    # a 'photo' whose five dots are the template under a random similarity
    to_photo = _similarity(2.1, 0.35, 40.0, 25.0)
    lm = transform_points(ARCFACE_TEMPLATE, to_photo) + rng.normal(0, 0.05, (5, 2))
    photo = (np.clip(_blobs(lm, (320, 300), sigma=4.0), 0, 1) * 255).astype(np.uint8)
    photo = np.repeat(photo[..., None], 3, axis=2)
    crop, m = align_face(photo, lm, size=112, return_matrix=True)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(m, similarity_transform(lm, ARCFACE_TEMPLATE))
    for q in ARCFACE_TEMPLATE:
        np.testing.assert_allclose(_centroid(crop[..., 0], *q, r=4), q, atol=0.15)
    crop224 = align_face(photo[..., 0], lm, size=224)  # grey input, bigger crop: template scaled by 2
    assert crop224.shape == (224, 224, 3)
    np.testing.assert_allclose(_centroid(crop224[..., 1], *(2 * ARCFACE_TEMPLATE[2]), r=8), 2 * ARCFACE_TEMPLATE[2], atol=0.2)
    with pytest.raises(ValueError, match="landmarks5"):
        align_face(photo, lm[:4])
