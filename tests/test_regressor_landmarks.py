"""The regressor's landmark trunk (CoeffRegressor(trunk="landmarks")): soft-argmax against known positions,
the landmark normalisation's invariances, the initial mean-face output, the save / load round trip, the
stop-gradient between the coefficient head and the trunk, and that training on the direct landmark loss
moves the trunk's points towards the targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.coeffs import CoeffLayout
from recon.regressor import CoeffRegressor, load_pretrained_regressor, normalised_landmarks, save_regressor, soft_argmax


def test_soft_argmax_of_a_peaked_map_is_the_pixel_centre():
    logits = torch.full((1, 2, 8, 10), -1e4)
    logits[0, 0, 3, 7] = 0.0  # row 3, column 7
    logits[0, 1, 0, 0] = 0.0
    pts = soft_argmax(logits)
    torch.testing.assert_close(pts[0, 0], torch.tensor([(7 + 0.5) / 10, (3 + 0.5) / 8]))
    torch.testing.assert_close(pts[0, 1], torch.tensor([0.5 / 10, 0.5 / 8]))


def test_soft_argmax_of_a_flat_map_is_the_centre_and_two_equal_peaks_average():
    torch.testing.assert_close(soft_argmax(torch.zeros(1, 1, 6, 6))[0, 0], torch.tensor([0.5, 0.5]))
    logits = torch.full((1, 1, 4, 4), -1e4)
    logits[0, 0, 1, 0] = logits[0, 0, 1, 2] = 0.0
    torch.testing.assert_close(soft_argmax(logits)[0, 0], torch.tensor([(0.5 + 2.5) / 2 / 4, 1.5 / 4]))


def test_normalised_landmarks_are_invariant_to_shift_and_scale():
    torch.manual_seed(0)
    p = torch.rand(3, 68, 2)
    a, b = normalised_landmarks(p), normalised_landmarks(2.5 * p + torch.tensor([0.3, -0.2]))
    torch.testing.assert_close(a[:, :136], b[:, :136])
    torch.testing.assert_close(b[:, 136:138], 2.5 * p.mean(1) + torch.tensor([0.3, -0.2]))
    rms = (p - p.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).sqrt()
    torch.testing.assert_close(a[:, 138], rms)
    torch.testing.assert_close(b[:, 138], 2.5 * rms)
    assert torch.allclose(a[:, :136].pow(2).sum(1), torch.full((3,), 68.0))  # unit RMS per point


def test_initial_output_is_the_mean_face_and_landmarks_are_in_pixels():
    reg = CoeffRegressor(CoeffLayout(), image_size=32, width=8, hidden=16, trunk="landmarks").eval()
    with torch.no_grad():
        coeffs, pts = reg.forward_landmarks(torch.rand(2, 3, 32, 48))
    torch.testing.assert_close(coeffs, reg.layout.mean_frontal()[None].expand(2, -1))
    assert pts.shape == (2, 68, 2)
    assert float(pts[..., 0].max()) <= 48 and float(pts[..., 1].max()) <= 32 and float(pts.min()) >= 0


def test_bad_trunk_and_size_are_named():
    with pytest.raises(ValueError, match="unknown regressor trunk 'heat'"):
        CoeffRegressor(trunk="heat")
    reg = CoeffRegressor(width=8, hidden=16, trunk="landmarks")
    with pytest.raises(ValueError, match="multiple of 16"):
        reg(torch.rand(1, 3, 40, 40))


def test_save_load_round_trip_keeps_the_trunk(tmp_path):
    torch.manual_seed(1)
    reg = CoeffRegressor(CoeffLayout(), image_size=32, width=8, hidden=16, trunk="landmarks")
    with torch.no_grad():
        for p in reg.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reg.eval()
    save_regressor(reg, tmp_path / "r.pt", half=False)
    back = load_pretrained_regressor(tmp_path / "r.pt")
    assert back.architecture()["trunk"] == "landmarks" and back.predicts_landmarks
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for got, want in zip(back.forward_landmarks(x), reg.forward_landmarks(x)):
            torch.testing.assert_close(got, want)
    # a pooled-trunk file has no 'trunk' key (files saved before the option load unchanged)
    assert "trunk" not in CoeffRegressor(width=8, hidden=16).architecture()


def test_coefficient_loss_does_not_reach_the_trunk_but_the_landmark_loss_does():
    from recon.fitting import trunk_landmark_loss

    torch.manual_seed(0)
    reg = CoeffRegressor(CoeffLayout(), image_size=32, width=8, hidden=16, trunk="landmarks")
    x = torch.rand(4, 3, 32, 32)
    coeffs, pts = reg.forward_landmarks(x)
    coeffs.pow(2).sum().backward()
    assert all(p.grad is None for p in reg.trunk.parameters())
    assert float(reg.head.weight.grad.abs().sum()) > 0 and reg.hidden[0].weight.grad is not None
    reg.zero_grad(set_to_none=True)
    _, pts = reg.forward_landmarks(x)
    trunk_landmark_loss(pts, torch.full_like(pts, 16.0), 32).backward()
    assert float(sum(p.grad.abs().sum() for p in reg.trunk.parameters() if p.grad is not None)) > 0
    assert reg.head.weight.grad is None


def test_trunk_landmark_loss_is_the_mean_distance_in_crop_units():
    from recon.fitting import trunk_landmark_loss

    pts = torch.zeros(1, 68, 2)
    tgt = torch.zeros(1, 68, 2)
    tgt[..., 0] = 3.0
    tgt[..., 1] = 4.0  # every point 5 px away
    assert float(trunk_landmark_loss(pts, tgt, 50)) == pytest.approx(0.1)


def test_training_moves_the_trunk_landmarks_to_the_targets():
    """Fixed target points for every crop: the direct landmark loss (train_regressor's trunk term) must
    bring the trunk's points much closer to them within a few dozen steps."""
    from recon.fitting import train_regressor

    rng = np.random.default_rng(0)
    images = (rng.uniform(0, 255, size=(16, 32, 32, 3))).astype(np.uint8)
    target = np.tile(np.stack([np.linspace(6, 26, 68), np.linspace(8, 24, 68)[::-1]], -1)[None], (16, 1, 1))
    reg = CoeffRegressor(CoeffLayout(), image_size=32, width=8, hidden=16, trunk="landmarks")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        before = float((reg.eval().forward_landmarks(x)[1] - torch.from_numpy(target).float()).norm(dim=-1).mean())
    reg, hist = train_regressor(images, target, reg, steps=60, batch_size=8, lr=3e-3, threads=1)
    with torch.no_grad():
        after = float((reg.forward_landmarks(x)[1] - torch.from_numpy(target).float()).norm(dim=-1).mean())
    assert "trunk_landmark" in hist[-1]
    assert after < 0.5 * before, (before, after)


def test_full_readout_solves_the_ridge_normal_equations():
    """recon.pretrain.refit_full_readout: the new output layer W (with bias b) satisfies the ridge normal
    equations X^T (X W - Y) + lam W = 0 (bias not shrunk) for the features X and raw targets Y."""
    from recon.pretrain import hidden_features, refit_full_readout

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    reg = CoeffRegressor(CoeffLayout(), image_size=32, width=8, hidden=16, trunk="landmarks")
    raw = torch.from_numpy(rng.normal(0, 0.3, size=(40, reg.layout.size))).float()
    syn = {"image": rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8),
           "coeffs": reg.coeffs_from_raw(raw).detach().numpy(), "identity": np.arange(40)}
    out = refit_full_readout(reg, syn, ridges=(10.0,))
    assert out["full_readout_ridge"] == 10.0 and out["full_readout_val_mse_after"] < out["full_readout_val_mse_before"]
    X = hidden_features(reg, syn["image"])
    Y = raw.double()
    W, b = reg.head.weight.T.double(), reg.head.bias.double()
    resid = X @ W + b - Y
    torch.testing.assert_close(X.T @ resid + 10.0 * W, torch.zeros_like(W), atol=2e-3, rtol=0)
    torch.testing.assert_close(resid.sum(0), torch.zeros(Y.shape[1], dtype=Y.dtype), atol=2e-3, rtol=0)
