"""render_face and render_canonical through the project renderer (recon.render)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.camera import canonical_camera, project
from recon.canonical import normalise_depth, render_canonical
from recon.coeffs import CoeffLayout
from recon.face import render_face
from recon.lighting import constant_light
from recon.morphable import MorphableModel
from recon.render import build_renderer


# DESIGN.md section 5: the ArcFace 112x112 five-point template (eye centres, nose tip, mouth corners)
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]])


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return MorphableModel(n_id=20, n_expr=53, n_albedo=10)


@pytest.fixture(scope="module")
def renderer():
    return build_renderer("torch")


@pytest.fixture(scope="module")
def layout(model) -> CoeffLayout:
    return CoeffLayout.from_model(model)


def _random_coeffs(layout: CoeffLayout, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = layout.split(layout.mean_frontal(batch))
    p["id"] = torch.randn(batch, layout.n_id, generator=g)
    p["albedo"] = torch.randn(batch, layout.n_albedo, 3, generator=g)
    return layout.join(p)


def test_normalise_depth_analytic():
    depth = torch.tensor([[[[0.0, 90.0], [95.0, 100.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.5]]]])  # the 0.5 pixel is a rim: kept, not used for the range
    out = normalise_depth(depth, mask)
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]]))
    depth2 = torch.tensor([[[[0.0, 90.0], [95.0, 100.0]]]])
    out2 = normalise_depth(depth2, torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]]))
    torch.testing.assert_close(out2, torch.tensor([[[[0.0, 1.0], [0.5, 0.0]]]]))
    assert normalise_depth(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)).abs().sum() == 0


def test_render_face_mean_frontal(model, renderer, layout):
    c = layout.mean_frontal(1)
    out = render_face(model, renderer, c, 112)
    assert out["image"].shape == (1, 3, 112, 112) and out["mask"].shape == (1, 1, 112, 112)
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    lm = out["landmarks2d"][0]
    five = torch.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]]).numpy()
    assert np.linalg.norm(five - ARCFACE_TEMPLATE_112, axis=1).max() < 1.6
    # the rendered depth at the nose-tip pixel is the nose-tip vertex depth, nearest of the whole face
    u, v = lm[30]
    z_pix = out["depth"][0, 0, int(v), int(u)]
    z_nose = out["vertices_cam"][0, model.lm68[30], 2]
    assert abs(z_pix - z_nose) < 0.15
    d = out["depth"][0, 0]
    assert abs(d[d > 0].min() - z_nose) < 0.15
    # every landmark but the jaw line falls on the rendered face (eye and mouth openings are filled)
    pix = lm[17:].long()
    assert out["mask"][0, 0, pix[:, 1], pix[:, 0]].min() == 1
    open_ = render_face(model, renderer, c, 112, fill_holes=False)["mask"][0, 0]
    eyes = lm[36:48].mean(0).long()  # between the eyes (bridge of the nose): covered either way
    assert open_[eyes[1], eyes[0]] == 1
    centre = lm[36:42].mean(0).long()  # the centre of an eye: an opening unless filled
    assert open_[centre[1], centre[0]] == 0


def test_render_face_shading_and_pose(model, renderer, layout):
    p = layout.split(layout.mean_frontal(2))
    p["light"] = constant_light(0.5, batch=2)
    p["rotation"] = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.radians(30), 0.0]])
    out = render_face(model, renderer, layout.join(p), 112, fill_holes=False)
    img, mask = out["image"], out["mask"][:, 0] > 0.5
    # constant light: pixel colours are the (interpolated) base albedo halved
    lo = model.base_albedo.min(0).values * 0.5
    hi = model.base_albedo.max(0).values * 0.5
    for c in range(3):
        vals = img[:, c][mask]
        assert vals.min() >= lo[c] - 1e-5 and vals.max() <= hi[c] + 1e-5
    assert (img.sum(1)[~mask] == 0).all()
    # positive yaw turns the nose to image right (relative to the eyes), and the face shifts right
    lm = out["landmarks2d"]
    rel = lm[:, 30, 0] - 0.5 * (lm[:, 36, 0] + lm[:, 45, 0])
    assert rel[1] > rel[0] + 3
    xs = torch.arange(112.0) + 0.5
    cx = [(mask[i].float().sum(0) * xs).sum() / mask[i].sum() for i in range(2)]
    assert cx[1] > cx[0] + 2


def test_render_face_gradient_matches_finite_differences(model, renderer, layout):
    """Photometric loss vs a target, differentiated w.r.t. the light (smooth, no visibility change)."""
    torch.manual_seed(0)
    c = layout.mean_frontal(1).double()
    target = torch.rand(1, 3, 48, 48, dtype=torch.float64) * 0.5
    s = layout.slices["light"]

    def loss(cc):
        out = render_face(model.double(), renderer, cc, 48)
        return (((out["image"] - target) ** 2) * out["mask"]).sum()

    c.requires_grad_(True)
    loss(c).backward()
    g = c.grad[0, s]
    for k in (0, 2, 9 + 3, 18 + 6):
        e = torch.zeros_like(c)
        e[0, s.start + k] = 1e-4
        fd = (loss(c.detach() + e) - loss(c.detach() - e)) / 2e-4
        assert abs(fd - g[k]) < 1e-5 * max(1.0, abs(fd)), (k, fd, g[k])
    model.float()


def test_canonical_ignores_pose_expression_light(model, renderer, layout):
    c = _random_coeffs(layout, 2, seed=1)
    p = layout.split(c.clone())
    p["expr"] = torch.rand(2, layout.n_expr)
    p["rotation"] = torch.tensor([[0.3, -0.6, 0.2], [-0.2, 0.9, -0.4]])
    p["translation"] = p["translation"] + torch.tensor([3.0, -2.0, 20.0])
    p["light"] = torch.randn(2, 27)
    a_img, a_dep = render_canonical(model, renderer, c)
    b_img, b_dep = render_canonical(model, renderer, layout.join(p))
    torch.testing.assert_close(a_img, b_img)
    torch.testing.assert_close(a_dep, b_dep)
    # ... and the id/albedo call form gives the same renders
    q = layout.split(c)
    c_img, c_dep = render_canonical(model, renderer, q["id"], q["albedo"])
    torch.testing.assert_close(a_img, c_img)
    torch.testing.assert_close(a_dep, c_dep)
    # while the posed render does change with the pose
    assert (render_face(model, renderer, c, 112)["mask"] != render_face(model, renderer, layout.join(p), 112)["mask"]).any()


def test_canonical_changes_with_identity_and_is_differentiable(model, renderer, layout):
    c = _random_coeffs(layout, 2, seed=2)
    mean = layout.mean_frontal(2)
    img, dep = render_canonical(model, renderer, c)
    img0, dep0 = render_canonical(model, renderer, mean)
    assert img.shape == (2, 3, 112, 112) and dep.shape == (2, 1, 112, 112)
    assert (img - img0).abs().mean() > 0.01 and (dep - dep0).abs().mean() > 0.005
    assert (img[0] - img[1]).abs().mean() > 0.01
    # depth: per face [0,1], exactly 1 at the nearest pixel, 0 on background
    for d in dep:
        assert d.max() == 1 and d.min() == 0
    bg = img0.sum(1, keepdim=True) == 0
    assert (dep0[bg] == 0).all()
    x = c.clone().requires_grad_(True)
    i2, d2 = render_canonical(model, renderer, x)
    (i2.mean() + d2.mean()).backward()
    g = layout.split(x.grad)
    assert torch.isfinite(x.grad).all()
    assert g["id"].abs().sum() > 0 and g["albedo"].abs().sum() > 0
    assert g["expr"].abs().sum() == 0 and g["rotation"].abs().sum() == 0 and g["light"].abs().sum() == 0


def test_canonical_face_lands_on_the_template(model, renderer, layout):
    """Read the nose tip off the rendered depth (its nearest pixel) and the face's left/right balance
    off the mask: both must sit where the ArcFace template puts them."""
    img, dep = render_canonical(model, renderer, layout.mean_frontal(1))
    d = dep[0, 0]
    i, j = divmod(int(torch.argmax(d)), 112)
    nose = ARCFACE_TEMPLATE_112[2]
    assert abs(j + 0.5 - nose[0]) <= 2.0 and abs(i + 0.5 - nose[1]) <= 2.0
    mask = (img[0].sum(0) > 0).float()
    xs = torch.arange(112.0) + 0.5
    cx = (mask.sum(0) * xs).sum() / mask.sum()
    assert abs(cx - ARCFACE_TEMPLATE_112[:, 0].mean()) < 1.5
    # the eyes of the template fall on the (open) eye regions of the mesh: projected eye centres
    cam = canonical_camera(112)
    five = project(model.alignment_points(model.mean[None]) @ cam.R.T + cam.t, cam.K)[0].numpy()
    assert np.linalg.norm(five - ARCFACE_TEMPLATE_112, axis=1).max() < 1.6


def test_silhouette_contour_lies_on_the_rendered_outline(model, renderer, layout):
    """Under yaw the far-side jaw landmarks sit on the face outline: covered just inside, background
    just outside (checked on the render), for both yaw directions."""
    p = layout.split(layout.mean_frontal(2))
    p["rotation"] = torch.tensor([[0.0, math.radians(40), 0.0], [0.0, -math.radians(40), 0.0]])
    out = render_face(model, renderer, layout.join(p), 224, dynamic_contour="silhouette")
    mask = out["mask"][:, 0]
    for b, (pts, outward) in enumerate(((range(10, 16), 1), (range(1, 7), -1))):
        for k in pts:
            u, v = out["landmarks2d"][b, k].tolist()
            inside = mask[b, int(v), int(u - 2.5 * outward)]
            outside = mask[b, int(v), int(u + 2.5 * outward)]
            assert inside == 1 and outside == 0, (b, k, u, v)
    # without the search, the fixed jaw vertices of the far side are hidden inside the face
    fixed = render_face(model, renderer, layout.join(p), 224)["landmarks2d"]
    u, v = fixed[0, 12].tolist()
    assert mask[0, int(v), int(u + 2.5)] == 1
