"""Geometry (Euler angles, pose), camera (intrinsics, projection, canonical camera) and SH lighting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.camera import CANONICAL_TRANSLATION, canonical_camera, intrinsics, project, solve_translation
from recon.geometry import (FLIP_YZ, euler_to_matrix, matrix_to_euler, model_to_camera, rot_x, rot_y,
                            similarity_align)
from recon.lighting import constant_light, directional_light, sh_basis, sh_shading, standard_light
from recon.morphable import MorphableModel


# DESIGN.md section 5: the ArcFace 112x112 five-point template (eye centres, nose tip, mouth corners)
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]])


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return MorphableModel(n_id=5, n_expr=5, n_albedo=2)


# ------------------------------------------------------------------------------------------ geometry
def test_euler_matrices_are_rotations_and_invert():
    torch.manual_seed(0)
    ang = (torch.rand(64, 3, dtype=torch.float64) - 0.5) * torch.tensor([2.0, 2.8, 2.0], dtype=torch.float64)
    R = euler_to_matrix(ang)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye)
    torch.testing.assert_close(torch.det(R), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(matrix_to_euler(R), ang)
    # composition order: pitch first, then yaw, then roll
    torch.testing.assert_close(R[5], euler_to_matrix(ang[5:6] * torch.tensor([[0, 0, 1.0]], dtype=torch.float64))[0]
                               @ rot_y(ang[5, 1]) @ rot_x(ang[5, 0]))


def test_pose_signs_in_the_image(model):
    """Positive yaw moves the nose to image right, positive pitch moves it down, frontal is upright."""
    K = intrinsics(112)
    t = torch.tensor([CANONICAL_TRANSLATION])
    lm = model.mean[model.lm68][None]

    def nose_minus_eyes(angles):
        uv = project(model_to_camera(lm, torch.tensor([angles]), t), K)[0]
        return uv[30] - 0.5 * (uv[36] + uv[45])

    front = nose_minus_eyes([0.0, 0.0, 0.0])
    assert abs(front[0]) < 0.05 and front[1] > 0  # nose below the eyes, centred
    assert nose_minus_eyes([0.0, 0.4, 0.0])[0] > 3  # yaw > 0: image right
    assert nose_minus_eyes([0.3, 0.0, 0.0])[1] > front[1] + 2  # pitch > 0: looks down
    # camera flip: model +y (up) -> camera -y, model +z (towards viewer) -> camera -z (nearer)
    torch.testing.assert_close(FLIP_YZ @ torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, -2.0, -3.0]))


def test_similarity_align_recovers_transform():
    torch.manual_seed(0)
    src = torch.randn(2, 30, 3, dtype=torch.float64)
    R = euler_to_matrix(torch.tensor([[0.3, -1.0, 2.0], [0.1, 0.2, -0.3]], dtype=torch.float64))
    s = torch.tensor([2.5, 0.7], dtype=torch.float64)
    t = torch.tensor([[1.0, 2, 3], [-4, 0, 1]], dtype=torch.float64)
    dst = s[:, None, None] * src @ R.transpose(1, 2) + t[:, None]
    s2, R2, t2 = similarity_align(src, dst)
    torch.testing.assert_close(s2, s)
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
    # a reflection is not a rotation: the result keeps det +1
    mirrored = dst * torch.tensor([-1.0, 1, 1], dtype=torch.float64)
    _, R3, _ = similarity_align(src, mirrored)
    torch.testing.assert_close(torch.det(R3), torch.ones(2, dtype=torch.float64))


# -------------------------------------------------------------------------------------------- camera
def test_intrinsics_pixel_centre_convention():
    K = intrinsics((100, 120), focal=200.0)
    torch.testing.assert_close(K, torch.tensor([[200.0, 0, 60], [0, 200.0, 50], [0, 0, 1]]))
    # the optical axis hits the image centre: the corner shared by the four middle pixels
    p = torch.tensor([[[0.0, 0.0, 10.0]]])
    torch.testing.assert_close(project(p, K), torch.tensor([[[60.0, 50.0]]]))
    # a point aimed at the centre of pixel (row 0, col 0) lands on (0.5, 0.5)
    z = 7.0
    q = torch.tensor([[[(0.5 - 60) * z / 200, (0.5 - 50) * z / 200, z]]])
    torch.testing.assert_close(project(q, K), torch.tensor([[[0.5, 0.5]]]))
    # batched K
    Kb = torch.stack([K, intrinsics((100, 120), focal=100.0)])
    out = project(torch.tensor([[[1.0, 2.0, 4.0]], [[1.0, 2.0, 4.0]]]), Kb)
    torch.testing.assert_close(out[:, 0], torch.tensor([[110.0, 150.0], [85.0, 100.0]]))
    with pytest.raises(ValueError, match="points must be"):
        project(torch.zeros(3, 3), K)


def test_canonical_camera_places_mean_face_on_template(model):
    cam = canonical_camera(112)
    five = model.alignment_points(model.mean[None])
    uv = project(five @ cam.R.T + cam.t, cam.K)[0].numpy()
    err = np.linalg.norm(uv - ARCFACE_TEMPLATE_112, axis=1)
    assert err.max() < 1.6 and math.sqrt((err**2).mean()) < 1.05, err
    # the stored constant is the least-squares optimum (re-solved independently here)
    t = solve_translation(five[0].double().numpy(), ARCFACE_TEMPLATE_112, cam.K.double().numpy())
    np.testing.assert_allclose(t, CANONICAL_TRANSLATION, atol=1e-3)

    def cost(tt):
        X = five[0].double().numpy() @ FLIP_YZ.double().numpy().T + tt
        p = X[:, :2] / X[:, 2:] * cam.K[0, 0].item() + 56.0
        return ((p - ARCFACE_TEMPLATE_112) ** 2).sum()

    for d in np.eye(3) * 0.05:
        assert cost(t + d) > cost(t) and cost(t - d) > cost(t)
    # other crop sizes: same placement, scaled
    cam224 = canonical_camera(224)
    uv224 = project(five @ cam224.R.T + cam224.t, cam224.K)[0].numpy()
    np.testing.assert_allclose(uv224, 2 * uv, atol=1e-4)


# ------------------------------------------------------------------------------------------ lighting
def _sphere_grid(n_theta: int = 400, n_phi: int = 800) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint quadrature on the unit sphere: directions (N,3) float64 and solid-angle weights (N,)."""
    th = (torch.arange(n_theta, dtype=torch.float64) + 0.5) * math.pi / n_theta
    ph = (torch.arange(n_phi, dtype=torch.float64) + 0.5) * 2 * math.pi / n_phi
    T, P = torch.meshgrid(th, ph, indexing="ij")
    d = torch.stack([torch.sin(T) * torch.cos(P), torch.sin(T) * torch.sin(P), torch.cos(T)], -1).reshape(-1, 3)
    w = (torch.sin(T) * (math.pi / n_theta) * (2 * math.pi / n_phi)).reshape(-1)
    return d, w


def test_sh_basis_is_orthonormal():
    d, w = _sphere_grid(200, 400)
    Y = sh_basis(d)
    gram = (Y * w[:, None]).T @ Y
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=2e-4, rtol=0)


def test_shading_equals_numerical_irradiance_integral():
    """E(n)/pi from the 9-term formula vs brute-force integral of L(w) max(0, n.w) dw / pi."""
    torch.manual_seed(0)
    light = torch.randn(1, 3, 9, dtype=torch.float64)
    d, w = _sphere_grid()
    radiance = sh_basis(d) @ light[0].T  # (N,3), band-limited environment
    normals = torch.nn.functional.normalize(torch.randn(1, 12, 3, dtype=torch.float64), dim=-1)
    cos = (normals[0] @ d.T).clamp_min(0)  # (12,N)
    truth = (cos * w) @ radiance / math.pi
    got = sh_shading(normals, light.reshape(1, 27))[0]
    torch.testing.assert_close(got, truth, atol=2e-4, rtol=0)


def test_constant_and_directional_light_analytic():
    n = torch.nn.functional.normalize(torch.randn(1, 50, 3), dim=-1)
    torch.testing.assert_close(sh_shading(n, constant_light((0.2, 0.5, 0.9))), torch.tensor([0.2, 0.5, 0.9]).expand(1, 50, 3))
    # band-1 only light along camera -z: shading = (A_1/pi) * c * Y1 coefficient * 0.4886 * n_z
    light = torch.zeros(1, 3, 9)
    light[:, :, 2] = 1.0  # Y10 (z) coefficient
    s = sh_shading(n, light)
    torch.testing.assert_close(s[..., 0], (2.0 / 3.0) * 0.4886025 * n[..., 2], atol=1e-6, rtol=0)
    # directional: a normal facing the light is brighter than one perpendicular, than one facing away
    L = directional_light((0.0, 0.0, -1.0), intensity=1.0)
    s3 = sh_shading(torch.tensor([[[0, 0, -1.0], [1, 0, 0], [0, 0, 1.0]]]), L)[0, :, 0]
    expected_front = (1 / (4 * math.pi)) + (2 / 3) * 3 / (4 * math.pi) + (1 / 4) * 5 / (4 * math.pi)
    assert abs(s3[0] - expected_front) < 1e-5 and s3[0] > s3[1] > s3[2]
    std = sh_shading(torch.tensor([[[0, -0.3, -1.0]]]) / math.sqrt(1.09), standard_light())
    assert 0.9 < std.min() <= std.max() < 1.0
    with pytest.raises(ValueError, match="light must be"):
        sh_shading(n, torch.zeros(1, 26))
