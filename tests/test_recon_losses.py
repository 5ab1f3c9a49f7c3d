"""Reconstruction losses, the vertex-error metric, the coefficient layout and the regressor."""

from __future__ import annotations

import math
from dataclasses import replace

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


def _fixed_reco_input():
    """A fixed batch: renders, targets, coefficients and ground truth (default MorphableModel layout)."""
    g = torch.Generator().manual_seed(7)
    L = CoeffLayout()
    B, S = 3, 8
    rendered = {"image": torch.rand(B, 3, S, S, generator=g), "mask": (torch.rand(B, 1, S, S, generator=g) > 0.3).float(),
                "landmarks2d": torch.rand(B, 68, 2, generator=g) * S}
    images = torch.rand(B, 3, S, S, generator=g)
    coeffs = torch.randn(B, L.size, generator=g) * 0.5
    gt = torch.randn(B, L.size, generator=g) * 0.5
    lms = torch.rand(B, 68, 2, generator=g) * S
    return L, rendered, images, coeffs, gt, lms


def test_reconstruction_loss_equals_the_former_joint_terms():
    """The composer reproduces what joint/losses.py summed before (cfg.photometric, landmark, prior, gt_coeffs
    weights times the separate recon.losses terms) on a fixed input."""
    from recon.losses import ReconLossWeights, prior_loss, reconstruction_loss

    L, rendered, images, coeffs, gt, lms = _fixed_reco_input()
    p, lw, pr, gw = 0.7, 1.3, 0.001, 2.0  # the former recon.photometric / landmark / prior / gt_coeffs_weight
    old = {"photometric": p * photometric_loss(rendered["image"], images, rendered["mask"]),
           "landmark": lw * landmark_loss(rendered["landmarks2d"], lms),
           "prior": pr * prior_loss(coeffs, L),
           "gt_coeffs": gw * coefficient_loss(coeffs, gt, L)[0]}
    w = ReconLossWeights(photometric=p, landmark=lw, prior_id=pr, prior_expr=pr, prior_albedo=pr,
                         prior_expr_range=10 * pr, gt_coeffs=gw)
    total, terms = reconstruction_loss(rendered, images, coeffs, L, w, landmarks=lms, gt_coeffs=gt)
    assert set(terms) == set(old)
    for k in old:
        torch.testing.assert_close(terms[k], old[k], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(total, sum(old.values()), rtol=1e-6, atol=1e-9)
    # terms without their inputs (no landmarks, no ground truth) are left out, zero weights too
    _, terms = reconstruction_loss(rendered, images, coeffs, L, w)
    assert set(terms) == {"photometric", "prior"}
    _, terms = reconstruction_loss(rendered, images, coeffs, L, ReconLossWeights(photometric=0, prior_id=0, prior_expr=0,
                                                                                  prior_albedo=0, prior_expr_range=0),
                                   landmarks=lms)
    assert set(terms) == {"landmark"}


def test_reconstruction_loss_equals_the_former_fit_terms():
    """The per-photo fit's former terms: photometric under an extra mask, per-point landmark weights x 50,
    priors with their own weights, and the light whiteness written out by hand."""
    from recon.fitting import _LM_WEIGHTS, FIT_WEIGHTS
    from recon.losses import reconstruction_loss

    L, rendered, images, coeffs, _, lms = _fixed_reco_input()
    extra = torch.zeros_like(rendered["mask"])
    extra[..., :4] = 1.0
    w_lm = torch.from_numpy(_LM_WEIGHTS)
    light = L.split(coeffs)["light"].reshape(3, 3, 9)
    old = {"photometric": photometric_loss(rendered["image"], images, rendered["mask"] * extra),
           "landmark": 50.0 * landmark_loss(rendered["landmarks2d"], lms, weights=w_lm),
           "prior": coefficient_priors(coeffs, L, {"id": 2e-4, "expr": 1e-3, "albedo": 3e-4, "expr_range": 10.0})[0],
           "light": 1e-2 * ((light - light.mean(1, keepdim=True)) ** 2).sum((1, 2)).mean()}
    _, terms = reconstruction_loss(rendered, images, coeffs, L, FIT_WEIGHTS, landmarks=lms, landmark_weights=w_lm,
                                   mask=extra)
    assert set(terms) == set(old)
    for k in old:
        torch.testing.assert_close(terms[k], old[k], rtol=1e-6, atol=1e-9)


def test_gt_shape_term_is_the_mean_squared_vertex_distance():
    from recon.losses import ReconLossWeights, reconstruction_loss
    from recon.morphable import MorphableModel

    mm = MorphableModel()
    L, _, _, coeffs, gt, _ = _fixed_reco_input()
    zero = ReconLossWeights(photometric=0, landmark=0, prior_id=0, prior_expr=0, prior_albedo=0, prior_expr_range=0)
    _, terms = reconstruction_loss(None, None, coeffs, L, replace(zero, gt_shape=3.0), gt_coeffs=gt, model=mm)
    d = mm.shape(L.split(coeffs)["id"], None) - mm.shape(L.split(gt)["id"], None)  # (B,V,3) cm
    torch.testing.assert_close(terms["gt_shape"], 3.0 * (d**2).sum(-1).mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="MorphableModel"):
        reconstruction_loss(None, None, coeffs, L, replace(zero, gt_shape=1.0), gt_coeffs=gt)
    with pytest.raises(ValueError, match="must be a finite number"):
        ReconLossWeights(landmark=-1.0)
