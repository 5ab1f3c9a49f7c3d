"""recon.fitting: analysis-by-synthesis on a synthetic face with known coefficients and on a real photo."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lh2face.align import align_face
from lh2face.io import read_image
from recon import CoeffLayout, MorphableModel
from recon.face import render_face
from dataclasses import replace

from recon.fitting import REGRESSOR_WEIGHTS, FitConfig, evaluate_regressor, fit_image, landmark_nme, train_regressor
from recon.landmarks import build_detector
from recon.render import build_renderer

PHOTOS = Path(__file__).parent / "fixtures" / "photos"


@pytest.fixture(scope="module")
def model():
    return MorphableModel()


@pytest.fixture(scope="module")
def renderer():
    return build_renderer("torch")


@pytest.fixture(scope="module")
def real_crops():
    """Aligned 112 px crops of the LFW fixtures with their dlib landmarks mapped into the crop."""
    det = build_detector("dlib")
    imgs, lms = [], []
    for p in sorted(PHOTOS.glob("*.jpg")):
        im = read_image(p)
        face = det(im)[0]
        crop, M = align_face(im, face.landmarks5, size=112, return_matrix=True)
        imgs.append(crop)
        lms.append(face.landmarks68 @ M[:, :2].T + M[:, 2])
    return np.stack(imgs), np.stack(lms).astype(np.float32)


def _stage(result, name, key="total"):
    return np.array([h[key] for h in result.history if h["stage"] == name])


def test_landmark_nme_by_hand():
    target = np.zeros((68, 2), np.float32)
    target[36] = [10.0, 20.0]
    target[45] = [50.0, 50.0]  # inter-ocular distance 50
    pred = target + np.array([3.0, 4.0], np.float32)  # every point 5 px off
    assert landmark_nme(pred, target) == pytest.approx([0.1])
    assert landmark_nme(np.stack([pred, target]), np.stack([target, target])) == pytest.approx([0.1, 0.0])


def test_fit_recovers_pose_of_a_synthetic_face(model, renderer):
    layout = CoeffLayout.from_model(model)
    g = torch.Generator().manual_seed(3)
    gt = {k: v.clone() for k, v in layout.split(layout.mean_frontal(1)).items()}
    gt["id"] = torch.randn(1, model.n_id, generator=g) * 0.8
    gt["albedo"] = torch.randn(1, model.n_albedo, 3, generator=g) * 0.5
    gt["rotation"] = torch.tensor([[-0.10, 0.30, 0.05]])  # pitch, yaw (17 deg), roll
    size = 64
    with torch.no_grad():
        out = render_face(model, renderer, layout.join(gt), size, dynamic_contour=True)
    image = out["image"] + (1 - out["mask"]) * 0.3  # grey background
    res = fit_image(image, out["landmarks2d"][0], model=model, renderer=renderer,
                    steps_pose=25, steps_shape=30, steps_photo=15)
    assert res.coeffs.shape == (1, layout.size)
    assert res.render["image"].shape == (1, 3, size, size) and res.render["depth"].shape == (1, 1, size, size)
    rot = layout.split(res.coeffs)["rotation"][0]
    assert torch.allclose(rot, gt["rotation"][0], atol=math.radians(3.0)), rot
    assert res.nme_before[0] > 0.05 and res.nme_after[0] < 0.015, (res.nme_before, res.nme_after)
    pose = _stage(res, "pose")
    assert pose[-1] < 0.1 * pose[0]  # the rigid stage removes most of the landmark error
    photo = _stage(res, "photo", "photometric")
    assert photo[-1] < photo[0]
    assert len(res.history) == 25 + 30 + 15


def test_fit_real_photo_lowers_landmark_error(model, renderer, real_crops):
    imgs, lms = real_crops
    cfg = FitConfig(steps_pose=25, steps_shape=40, steps_photo=20)
    res = fit_image(imgs[2], lms[2], model=model, renderer=renderer, config=cfg)
    assert res.nme_after[0] < 0.04 and res.nme_after[0] < 0.5 * res.nme_before[0], (res.nme_before, res.nme_after)
    photo = _stage(res, "photo", "photometric")
    assert photo[-5:].mean() < photo[:5].mean()  # the photometric curve falls
    assert np.isfinite([h["total"] for h in res.history]).all()
    mask = res.render["mask"][0, 0] > 0.5
    err = (res.render["image"][0] - torch.from_numpy(imgs[2]).permute(2, 0, 1) / 255.0).norm(dim=0)[mask].mean()
    assert err < 0.2  # mean RGB distance inside the face


def test_fit_rejects_bad_input(model, renderer):
    img = np.zeros((64, 64, 3), np.uint8)
    bad = np.full((68, 2), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        fit_image(img, bad, model=model, renderer=renderer)
    with pytest.raises(ValueError, match="68,2"):
        fit_image(img, np.zeros((5, 2)), model=model, renderer=renderer)
    with pytest.raises(ValueError, match="image"):
        fit_image(np.zeros((4, 5, 6, 7, 8), np.float32), np.zeros((68, 2)), model=model, renderer=renderer)
    with pytest.raises(TypeError):
        FitConfig(step_photo=3)  # misspelt field
    with pytest.raises(ValueError, match="landmark must be"):
        FitConfig(weights={"landmark": float("nan")})


def test_train_regressor_on_real_crops(model, renderer, real_crops):
    from recon.regressor import CoeffRegressor

    imgs, lms = real_crops
    small = imgs[:, ::2, ::2].copy()  # 56 px crops keep the test fast; landmarks scale with them
    small_lm = lms / 2.0
    torch.manual_seed(0)
    reg = CoeffRegressor(layout=CoeffLayout.from_model(model), image_size=56, width=8, hidden=64)
    before = evaluate_regressor(reg, small, small_lm, model)
    reg, hist = train_regressor(small, small_lm, regressor=reg, model=model, renderer=renderer,
                                steps=40, batch_size=4, lr=3e-3, threads=1)
    after = evaluate_regressor(reg, small, small_lm, model)
    total = np.array([h["total"] for h in hist])
    assert total[-5:].mean() < total[:5].mean()
    assert after.mean() < before.mean(), (before, after)
    # the photometric path (re-render of the regressed face against the crop) runs and is finite
    reg, hist = train_regressor(small, small_lm, regressor=reg, model=model, renderer=renderer,
                                steps=2, batch_size=2, lr=1e-4, threads=1,
                                weights=replace(REGRESSOR_WEIGHTS, photometric=1.0))
    assert 0.0 < hist[-1]["real/photometric"] < 1.0 and np.isfinite(hist[-1]["total"])


def test_train_regressor_with_synthetic_ground_truth(model, renderer, real_crops):
    from recon.regressor import CoeffRegressor
    from recon.synth import SyntheticFaces

    imgs, lms = real_crops
    from recon.pretrain import synthetic_arrays

    synth = synthetic_arrays(SyntheticFaces(3, 2, seed=1, image_size=56), progress=False)
    torch.manual_seed(0)
    reg = CoeffRegressor(layout=CoeffLayout.from_model(model), image_size=56, width=8, hidden=64)
    reg, hist = train_regressor(imgs[:, ::2, ::2].copy(), lms / 2.0, regressor=reg, model=model, renderer=renderer,
                                steps=60, batch_size=4, lr=3e-3, synthetic=synth, threads=1,
                                weights=replace(REGRESSOR_WEIGHTS, gt_shape=1.0))
    coeff = np.array([h["synth/gt_coeffs"] for h in hist])
    assert {"synth/gt_coeffs", "synth/gt_shape", "synth/landmark", "real/landmark", "real/prior"} <= set(hist[0])
    assert coeff[-10:].mean() < 0.9 * coeff[:10].mean()  # learns the ground-truth coefficients
