"""Rotations and rigid/similarity transforms (torch, batched, differentiable).

Euler convention (used by the coefficient vector's `rotation` slice): angles = (pitch, yaw, roll) in
radians, rotations about the MODEL axes (+x right, +y up, +z towards the viewer), composed as
R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (pitch applied first). Right-hand rule, so a positive yaw moves the
nose towards +x (the viewer's right, image right), a positive pitch moves the nose down (the face
looks down), a positive roll turns the top of the head towards -x (counter-clockwise as the viewer sees it).
"""

from __future__ import annotations

import math

import torch

# Model space (+y up, +z to viewer) -> OpenCV camera space (y down, z forward): 180 deg about x.
FLIP_YZ = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])


def _check_last(x: torch.Tensor, n: int, name: str) -> None:
    if not torch.is_tensor(x) or x.shape[-1] != n:
        raise ValueError(f"{name} must be a tensor with last dimension {n}, got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")


def rot_x(a: torch.Tensor) -> torch.Tensor:
    """(...,) radians -> (...,3,3) rotation about +x."""
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], -1).reshape(*a.shape, 3, 3)


def rot_y(a: torch.Tensor) -> torch.Tensor:
    """(...,) radians -> (...,3,3) rotation about +y."""
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*a.shape, 3, 3)


def rot_z(a: torch.Tensor) -> torch.Tensor:
    """(...,) radians -> (...,3,3) rotation about +z."""
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*a.shape, 3, 3)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(...,3) (pitch, yaw, roll) radians -> (...,3,3) R = Rz(roll) Ry(yaw) Rx(pitch)."""
    _check_last(angles, 3, "angles (pitch, yaw, roll)")
    return rot_z(angles[..., 2]) @ rot_y(angles[..., 1]) @ rot_x(angles[..., 0])


def matrix_to_euler(R: torch.Tensor) -> torch.Tensor:
    """(...,3,3) rotation -> (...,3) (pitch, yaw, roll), inverse of euler_to_matrix for |yaw| < pi/2.

    R = Rz(c) Ry(b) Rx(a) gives R[2,0] = -sin b, R[2,1] = cos b sin a, R[2,2] = cos b cos a,
    R[1,0] = sin c cos b, R[0,0] = cos c cos b.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape (...,3,3), got {tuple(R.shape)}")
    yaw = torch.asin((-R[..., 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    roll = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    return torch.stack([pitch, yaw, roll], -1)


def model_to_camera_rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B,3) Euler angles -> (B,3,3) rotation from model space to OpenCV camera space: FLIP_YZ @ R(angles)."""
    R = euler_to_matrix(angles)
    return FLIP_YZ.to(R) @ R


def apply_pose(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """points (B,N,3), R (B,3,3) or (3,3), t (B,3) or (3,) -> (B,N,3) = R p + t."""
    _check_last(points, 3, "points")
    if R.dim() == 2:
        R = R.expand(points.shape[0], 3, 3)
    if t.dim() == 1:
        t = t.expand(points.shape[0], 3)
    return points @ R.transpose(-1, -2) + t[:, None, :]


def model_to_camera(verts: torch.Tensor, angles: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Model-space vertices (B,V,3) cm -> OpenCV camera space (B,V,3) cm.

    cam = FLIP_YZ @ R(angles) @ v + translation: rotate about the model origin, turn the model to face
    the camera (180 deg about x), then translate (cm, camera axes). Zero angles = frontal.
    """
    return apply_pose(verts, model_to_camera_rotation(angles), translation)


def similarity_align(src: torch.Tensor, dst: torch.Tensor, scale: bool = True,
                     weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity (Umeyama 1991) mapping src onto dst.

    src, dst (B,N,3); weights (N,) or (B,N) optional. Returns s (B,), R (B,3,3) with det +1, t (B,3) such
    that s * src @ R^T + t ~ dst. With scale=False, s = 1 (rigid Procrustes).
    """
    if src.shape != dst.shape or src.dim() != 3 or src.shape[-1] != 3:
        raise ValueError(f"src and dst must both be (B,N,3), got {tuple(src.shape)} and {tuple(dst.shape)}")
    B, N, _ = src.shape
    w = torch.ones(B, N, dtype=src.dtype, device=src.device) if weights is None else weights.to(src).expand(B, N)
    w = w / w.sum(1, keepdim=True)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]
    cov = (w[..., None] * xd).transpose(1, 2) @ xs  # (B,3,3) = sum w d s^T
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh
    if scale:
        var_s = (w * (xs**2).sum(-1)).sum(1)
        s = (S * torch.diagonal(D, dim1=-2, dim2=-1)).sum(-1) / var_s.clamp_min(1e-12)
    else:
        s = torch.ones(B, dtype=src.dtype, device=src.device)
    t = mu_d - s[:, None] * (mu_s[:, None, :] @ R.transpose(1, 2))[:, 0]
    return s, R, t


def deg(x: float) -> float:
    """Degrees -> radians (tiny helper for readable constants)."""
    return x * math.pi / 180.0
