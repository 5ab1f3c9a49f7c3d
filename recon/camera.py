"""Pinhole camera: intrinsics, projection, and the fixed canonical camera of the aligned 112x112 crop.

Pixel convention (DESIGN.md section 5): x right, y down, origin at the top-left corner of the top-left
pixel; the centre of pixel (row i, col j) is (j + 0.5, i + 0.5). Camera space: OpenCV, x right,
y down, z forward (away from the camera), centimetres. u = fx * X / Z + cx, v = fy * Y / Z + cy.

Canonical camera: focal FOCAL_PER_PIXEL * size (~12.6 deg field of view), principal point at the
image centre, frontal pose (model rotated 180 deg about x) and a translation CANONICAL_TRANSLATION
(cm) solved once (least squares, `solve_translation`) so that the MEAN ICT face's five alignment points
(eye centres = mean of the 6 landmarks of each eye, nose tip 30, mouth corners 48 and 54) project onto
the ArcFace 112x112 template. Residual 1.0 px RMS (per point 1.0, 1.3, 1.5, 0.1, 0.2 px; tested in
tests/test_camera_lighting.py). The focal length is fixed rather than solved: letting it float lowers the
residual only to 0.33 px, at f = 98 px (a 60 deg field of view, camera 14 cm from the nose tip), which
would give every canonical face strong selfie distortion; the template is an average of real faces,
not of this model, so a ~1 px residual is the honest fit for a realistic camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lh2face.align import ARCFACE_TEMPLATE

from .geometry import FLIP_YZ

# Focal length in pixels per pixel of image width (1015 px at 224, a common choice for face crops).
FOCAL_PER_PIXEL = 1015.0 / 224.0

# The shared 5-point template (lh2face.align), float64 here for the solver.
ARCFACE_TEMPLATE_112 = ARCFACE_TEMPLATE.astype(np.float64)

# Solved by solve_translation(mean-face alignment points, ARCFACE_TEMPLATE_112, intrinsics(112)) with the
# bundled ICT model (tools: `python -m recon.camera` prints the values). cm, OpenCV camera axes.
CANONICAL_TRANSLATION = (0.004625, 2.807656, 98.726043)


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def intrinsics(image_size: int | tuple[int, int], focal: float | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """K (3,3) in pixels for an image of image_size (H,W) or int; focal in pixels (default
    FOCAL_PER_PIXEL * W); principal point at the image centre (W/2, H/2)."""
    h, w = _size(image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    f = FOCAL_PER_PIXEL * w if focal is None else float(focal)
    return torch.tensor([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def project(points: torch.Tensor, K: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """points (B,N,3) camera space (z > 0 in front), K (3,3) or (B,3,3) -> (B,N,2) pixel coordinates."""
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B,N,3), got {tuple(points.shape)}")
    K = K.to(points)
    if K.dim() == 2:
        K = K.expand(points.shape[0], 3, 3)
    z = points[..., 2:3]
    z = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    xy = points[..., :2] / z
    fx, fy = K[:, 0, 0][:, None], K[:, 1, 1][:, None]
    cx, cy = K[:, 0, 2][:, None], K[:, 1, 2][:, None]
    skew = K[:, 0, 1][:, None]
    u = fx * xy[..., 0] + skew * xy[..., 1] + cx
    v = fy * xy[..., 1] + cy
    return torch.stack([u, v], -1)


def solve_translation(points_model: np.ndarray, targets: np.ndarray, K: np.ndarray,
                      iters: int = 50) -> np.ndarray:
    """Translation t (3,) cm minimising sum |project(FLIP_YZ p + t) - target|^2 (Gauss-Newton, float64).

    points_model (N,3) model space, targets (N,2) pixels, K (3,3).
    """
    p = np.asarray(points_model, np.float64) @ FLIP_YZ.numpy().astype(np.float64).T
    q = np.asarray(targets, np.float64)
    K = np.asarray(K, np.float64)
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    # initial guess from the spread of the targets (weak perspective)
    spread_px = np.linalg.norm(q - q.mean(0), axis=1).mean()
    spread_cm = np.linalg.norm(p[:, :2] - p[:, :2].mean(0), axis=1).mean()
    tz = f * spread_cm / spread_px - p[:, 2].mean()
    z = p[:, 2].mean() + tz
    t = np.array([((q[:, 0].mean() - cx) * z / f) - p[:, 0].mean(), ((q[:, 1].mean() - cy) * z / f) - p[:, 1].mean(), tz])
    for _ in range(iters):
        X = p + t
        u = f * X[:, 0] / X[:, 2] + cx
        v = f * X[:, 1] / X[:, 2] + cy
        r = np.concatenate([u - q[:, 0], v - q[:, 1]])
        J = np.zeros((2 * len(p), 3))
        J[: len(p), 0] = f / X[:, 2]
        J[: len(p), 2] = -f * X[:, 0] / X[:, 2] ** 2
        J[len(p):, 1] = f / X[:, 2]
        J[len(p):, 2] = -f * X[:, 1] / X[:, 2] ** 2
        step = np.linalg.lstsq(J, -r, rcond=None)[0]
        t = t + step
        if np.abs(step).max() < 1e-12:
            break
    return t


@dataclass(frozen=True)
class CanonicalCamera:
    """R (3,3) model -> camera rotation (frontal: 180 deg about x), t (3,) cm, K (3,3) pixels, image_size."""

    R: torch.Tensor
    t: torch.Tensor
    K: torch.Tensor
    image_size: int


def canonical_camera(image_size: int = 112, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> CanonicalCamera:
    """The fixed camera of the aligned crop; for sizes other than 112 the intrinsics scale with the size
    (same field of view, same pose), so the face covers the same fraction of the crop."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return CanonicalCamera(
        R=FLIP_YZ.to(dtype=dtype, device=device),
        t=torch.tensor(CANONICAL_TRANSLATION, dtype=dtype, device=device),
        K=intrinsics(image_size, dtype=dtype, device=device),
        image_size=image_size,
    )


def template(image_size: int = 112) -> np.ndarray:
    """The ArcFace 5-point template (5,2) pixels, scaled to image_size."""
    return ARCFACE_TEMPLATE_112 * (image_size / 112.0)


if __name__ == "__main__":  # print the canonical translation for the bundled model
    from .morphable import MorphableModel

    m = MorphableModel(n_id=0, n_expr=0, n_albedo=0)
    pts = m.alignment_points(m.mean[None]).double()[0].numpy()
    K = intrinsics(112, dtype=torch.float64).numpy()
    t = solve_translation(pts, ARCFACE_TEMPLATE_112, K)
    X = pts @ FLIP_YZ.numpy().T + t
    uv = X[:, :2] / X[:, 2:] * K[0, 0] + K[:2, 2]
    err = np.linalg.norm(uv - ARCFACE_TEMPLATE_112, axis=1)
    print("CANONICAL_TRANSLATION =", tuple(float(f"{x:.6f}") for x in t))
    print("per-point error px", np.round(err, 3), "rms", np.sqrt((err**2).mean()))
