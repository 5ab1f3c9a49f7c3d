"""Reconstruction losses, the vertex-error metric, the coefficient layout and the regressor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.coeffs import CoeffLayout
from recon.geometry import euler_to_matrix
from recon.losses import (coefficient_loss, coefficient_priors, interocular_distance, landmark_loss, landmark_nme,
                          photometric_loss, vertex_error_mm)
from recon.regressor import CoeffRegressor


def test_layout_split_join_round_trip_and_slices():
    L = CoeffLayout(n_id=7, n_expr=4, n_albedo=2)
    assert L.size == 7 + 4 + 6 + 3 + 3 + 27
    x = torch.randn(3, L.size)
    parts = L.split(x)
    assert parts["albedo"].shape == (3, 2, 3) and parts["light"].shape == (3, 27)
    torch.testing.assert_close(L.join(parts), x)
    torch.testing.assert_close(parts["rotation"], x[:, 17:20])
    with pytest.raises(ValueError, match="coefficients must be"):
        L.split(torch.zeros(3, L.size + 1))
    with pytest.raises(ValueError, match="missing"):
        L.join({"id": torch.zeros(1, 7)})
    m = L.mean_frontal(2)
    p = L.split(m)
    assert torch.all(p["id"] == 0) and torch.all(p["rotation"] == 0) and p["translation"][0, 2] > 50


def test_photometric_loss_analytic():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    target[:, 0] = 0.3
    target[:, 1] = 0.4  # per-pixel colour distance 0.5 everywhere
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2] = 1
    mask[1, :, 0, 0] = 0.5
    per = photometric_loss(pred, target, mask, reduction="none")
    torch.testing.assert_close(per, torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)
    # error outside the mask is ignored
    target2 = target.clone()
    target2[0, :, 3] = 9.0
    torch.testing.assert_close(photometric_loss(pred, target2, mask, reduction="none")[0], torch.tensor(0.5), atol=1e-5, rtol=0)
    assert photometric_loss(target, target, mask) < 1e-5
    with pytest.raises(ValueError, match="mask must be"):
        photometric_loss(pred, target, mask[:, :, :2])


def test_landmark_loss_zero_at_truth_scale_free_and_gradient():
    torch.manual_seed(0)
    gt = torch.rand(3, 68, 2, dtype=torch.float64) * 100
    assert landmark_loss(gt, gt) == 0
    pred = gt + torch.randn_like(gt)
    # normalised: invariant to scaling both sets of points
    torch.testing.assert_close(landmark_loss(3 * pred, 3 * gt), landmark_loss(pred, gt))
    raw = landmark_loss(pred, gt, normalize=False, reduction="none")
    torch.testing.assert_close(raw, ((pred - gt) ** 2).sum(-1).mean(1))
    # weights: zero weight on a point ignores it
    w = torch.ones(68, dtype=torch.float64)
    w[10] = 0
    far = pred.clone()
    far[:, 10] += 1000
    torch.testing.assert_close(landmark_loss(far, gt, weights=w, normalize=False),
                               landmark_loss(pred, gt, weights=w, normalize=False))
    # NME of a uniform 1-pixel shift is 1 / inter-ocular distance
    torch.testing.assert_close(landmark_nme(gt + torch.tensor([0.6, 0.8], dtype=torch.float64), gt),
                               1 / interocular_distance(gt))
    p = pred.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: landmark_loss(q, gt), (p,))


def test_priors_and_range_penalty():
    L = CoeffLayout(n_id=3, n_expr=2, n_albedo=1)
    c = torch.zeros(2, L.size)
    parts = L.split(c)
    parts["id"][:] = torch.tensor([1.0, 2.0, 0.0])
    parts["expr"][:] = torch.tensor([-0.5, 1.5])
    c = L.join(parts)
    total, t = coefficient_priors(c, L)
    assert t["id"] == 5 and t["expr"] == 2.5 and t["albedo"] == 0
    torch.testing.assert_close(t["expr_range"], torch.tensor(0.5))
    torch.testing.assert_close(total, torch.tensor(5 + 2.5 + 10 * 0.5))
    inside = L.join({**L.split(torch.zeros(1, L.size)), "expr": torch.tensor([[0.2, 1.0]])})
    assert coefficient_priors(inside, L)[1]["expr_range"] == 0
    from recon.losses import prior_loss

    torch.testing.assert_close(prior_loss(c, L), total)
    with pytest.raises(ValueError, match="pass the matching CoeffLayout"):
        prior_loss(c)
    with pytest.raises(ValueError, match="unknown prior"):
        coefficient_priors(c, L, {"shape": 1.0})


def test_coefficient_loss_zero_at_truth_and_wraps_angles():
    L = CoeffLayout(n_id=4, n_expr=3, n_albedo=2)
    gt = torch.randn(5, L.size)
    assert coefficient_loss(gt, gt, L)[0] == 0
    shifted = gt.clone()
    shifted[:, L.slices["rotation"]] += 2 * math.pi  # the same rotation
    assert coefficient_loss(shifted, gt, L)[0] < 1e-10
    off = gt.clone()
    off[:, L.slices["id"]] += 1.0
    total, terms = coefficient_loss(off, gt, L)
    torch.testing.assert_close(terms["id"], torch.tensor(1.0))
    torch.testing.assert_close(total, torch.tensor(1.0))


def test_vertex_error_zero_for_similar_copy_and_exact_for_known_offset():
    torch.manual_seed(0)
    gt = torch.randn(2, 500, 3, dtype=torch.float64) * 5
    R = euler_to_matrix(torch.tensor([[0.4, -0.7, 0.2], [1.0, 0.1, -2.0]], dtype=torch.float64))
    pred = 1.7 * gt @ R.transpose(1, 2) + torch.tensor([3.0, -2.0, 10.0], dtype=torch.float64)
    assert vertex_error_mm(pred, gt).max() < 1e-9
    # rigid alignment cannot undo the scale
    assert vertex_error_mm(pred, gt, scale=False).min() > 1.0
    # noisy copy: the error equals the one after a brute-force least-squares similarity fit (scipy)
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    noisy = pred + 0.2 * torch.randn_like(pred)
    P, G = noisy[0].numpy(), gt[0].numpy()

    def fit(x):
        A = np.exp(x[0]) * Rotation.from_rotvec(x[1:4]).as_matrix()
        return P @ A.T + x[4:7]

    x0 = np.zeros(7)
    x0[0] = np.log(1 / 1.7)
    x0[1:4] = Rotation.from_matrix(R[0].numpy().T).as_rotvec()
    x0[4:7] = (G - P @ (np.exp(x0[0]) * Rotation.from_rotvec(x0[1:4]).as_matrix()).T).mean(0)
    res = minimize(lambda x: ((fit(x) - G) ** 2).sum(), x0, method="BFGS", options={"gtol": 1e-10})
    expect = np.linalg.norm(fit(res.x) - G, axis=1).mean() * 10
    got = vertex_error_mm(noisy, gt)[0].item()
    assert abs(got - expect) < 1e-5 * expect and 1.0 < got < 5.0
    assert vertex_error_mm(pred[0], gt[0]).dim() == 0


def test_regressor_initial_output_is_mean_frontal_and_bounded():
    torch.manual_seed(0)
    L = CoeffLayout()
    net = CoeffRegressor(L, width=8, hidden=64)
    x = torch.rand(2, 3, 64, 64)
    out = net(x)
    torch.testing.assert_close(out, L.mean_frontal(2), atol=1e-5, rtol=0)
    # raw <-> coefficient mapping round trip; rotations are tanh-bounded
    c = L.mean_frontal(4)
    c[:, L.slices["rotation"]] = torch.tensor([0.3, -1.2, 0.5])
    c[:, L.slices["translation"]] += torch.tensor([1.0, -2.0, 15.0])
    torch.testing.assert_close(net.coeffs_from_raw(net.raw_from_coeffs(c)), c, atol=1e-5, rtol=0)
    huge = net.coeffs_from_raw(torch.full((1, L.size), 1e4))
    assert huge[0, L.slices["rotation"]].abs().max() <= math.pi / 2 + 1e-6
    # every parameter receives gradient after one step away from the zero-initialised head
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    loss = ((net(x) - c[:2]) ** 2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    loss2 = ((net(x) - c[:2]) ** 2).mean()
    loss2.backward()
    assert loss2 < loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="CoeffRegressor expects"):
        net(torch.rand(2, 1, 112, 112))
