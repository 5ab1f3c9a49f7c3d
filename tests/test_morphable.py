"""MorphableModel: asset compaction, linear shape model, albedo, normals, landmarks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.morphable import MorphableModel
from recon.render.vertex import vertex_normals

SRC = Path(__file__).resolve().parents[2] / "shared/assets/ict-face/ict_face_region.npz"


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return MorphableModel()


def test_sizes_and_mesh(model):
    assert (model.n_id, model.n_expr, model.n_albedo) == (100, 53, 20)
    assert model.mean.shape == (9409, 3) and model.triangles.shape == (18460, 3)
    assert model.triangles.min() == 0 and model.triangles.max() == 9408
    assert model.lm68.shape == (68,) and len(model.expr_names) == 53
    assert model.expr_names[0] == "browDown_L"


@pytest.mark.skipif(not SRC.exists(), reason="source npz (../shared/assets/ict-face) not present in this checkout")
def test_compact_asset_matches_source_within_a_micrometre_per_mode(model):
    with np.load(SRC) as src:
        np.testing.assert_array_equal(model.mean.numpy(), src["mean"])
        np.testing.assert_array_equal(model.triangles.numpy(), src["triangles"])
        np.testing.assert_array_equal(model.lm68.numpy(), src["lm68"])
        id_err = np.abs(model.id_basis.numpy() - src["id_basis"]).max()
        ex_err = np.abs(model.expr_basis.numpy() - src["expr_basis"]).max()
        # a face with 3-sigma weights on all modes, against the float32 source
        rng = np.random.default_rng(1)
        w = rng.standard_normal((1, 100)).astype(np.float32) * 3
        e = rng.uniform(0, 1, (1, 53)).astype(np.float32)
        ref = src["mean"] + np.einsum("bk,kvc->bvc", w, src["id_basis"]) + np.einsum("bk,kvc->bvc", e, src["expr_basis"])
    assert id_err < 1e-3 and ex_err < 2e-3  # cm
    got = model.shape(torch.from_numpy(w), torch.from_numpy(e)).numpy()
    assert np.linalg.norm(got - ref, axis=-1).max() * 10 < 0.1  # mm


def test_shape_is_affine_in_coefficients(model):
    torch.manual_seed(0)
    a, b = torch.randn(2, 100), torch.rand(2, 53)
    zero = model.shape(torch.zeros(2, 100), torch.zeros(2, 53))
    torch.testing.assert_close(zero, model.mean.expand(2, -1, -1))
    torch.testing.assert_close(model.shape(None, None)[0], model.mean)
    lhs = model.shape(a, b) - model.mean
    rhs = (model.shape(a, None) - model.mean) + (model.shape(None, b) - model.mean)
    torch.testing.assert_close(lhs, rhs, atol=1e-4, rtol=0)
    # one unit identity weight adds exactly that basis vector
    e0 = torch.zeros(1, 100)
    e0[0, 3] = 1
    torch.testing.assert_close(model.shape(e0)[0] - model.mean, model.id_basis[3], atol=1e-5, rtol=0)


def test_units_and_axes(model):
    m = model.mean
    lm = m[model.lm68]
    # centimetres: the outer eye corners of an adult are 8-11 cm apart
    iod = (lm[45] - lm[36]).norm().item()
    assert 7.5 < iod < 11.5
    # +x to the viewer's right: iBUG 36 (image-left eye corner) has x < 0; +y up: brows above the chin
    assert lm[36, 0] < 0 < lm[45, 0]
    assert lm[19, 1] > lm[30, 1] > lm[8, 1]
    # +z towards the viewer: the nose tip is the frontmost landmark
    assert int(torch.argmax(lm[:, 2])) == 30


def test_truncated_model_and_dtype_device():
    m = MorphableModel(n_id=10, n_expr=5, n_albedo=4).to(torch.float64)
    v = m.shape(torch.randn(3, 10, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64))
    assert v.shape == (3, 9409, 3) and v.dtype == torch.float64
    assert m.albedo(torch.zeros(3, 4, 3, dtype=torch.float64)).dtype == torch.float64


def test_bad_inputs_name_the_problem(model):
    with pytest.raises(ValueError, match="id coefficients must be"):
        model.shape(torch.zeros(2, 99))
    with pytest.raises(ValueError, match="albedo"):
        model.albedo(torch.zeros(2, 7, 3))
    with pytest.raises(ValueError, match="n_id"):
        MorphableModel(n_id=101)


def test_albedo_base_range_and_linearity(model):
    base = model.albedo(torch.zeros(1, 20, 3))[0]
    torch.testing.assert_close(base, model.base_albedo)
    assert 0.3 < base.mean() < 0.9
    torch.manual_seed(0)
    big = model.albedo(10 * torch.randn(4, 20, 3))
    assert big.min() >= 0 and big.max() <= 1 and (big == 0).any() and (big == 1).any()
    # small coefficients stay inside (0,1): exactly linear, and flat (2,60) layout agrees
    a = 0.1 * torch.randn(2, 20, 3)
    torch.testing.assert_close(model.albedo(a) - base, torch.einsum("bkc,kv->bvc", a, model.albedo_basis))
    torch.testing.assert_close(model.albedo(a.reshape(2, 60)), model.albedo(a))
    # mode 0 is the constant (skin tone): it shifts every vertex equally
    e = torch.zeros(1, 20, 3)
    e[0, 0, 1] = 0.5
    d = model.albedo(e)[0] - base
    torch.testing.assert_close(d, torch.tensor([0.0, 0.5 * 0.08, 0.0]).expand(9409, 3), atol=1e-5, rtol=0)


def _dirichlet_ratio(verts: np.ndarray, tris: np.ndarray, f: np.ndarray) -> float:
    """int |grad f|^2 / int f^2 for a piecewise-linear f on a triangle mesh (per-triangle gradients)."""
    p0, p1, p2 = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    n = np.cross(p1 - p0, p2 - p0)
    area2 = np.linalg.norm(n, axis=1)
    nh = n / area2[:, None]
    # gradient of the linear interpolant: sum_i f_i (nh x e_i) / (2A), e_i = edge opposite vertex i
    g = sum(f[tris[:, i]][:, None] * np.cross(nh, e) for i, e in enumerate((p2 - p1, p0 - p2, p1 - p0))) / area2[:, None]
    energy = (0.5 * area2 * (g**2).sum(1)).sum()
    mass = np.zeros(len(verts))
    for k in range(3):
        np.add.at(mass, tris[:, k], area2 / 6)
    return energy / (mass * f**2).sum()


def test_albedo_basis_is_smooth_laplacian_eigenbasis():
    with np.load(Path(__file__).resolve().parents[1] / "assets/ict-face/ict_face_mesh.npz") as z:
        basis, eig, verts, tris = z["albedo_basis"].astype(np.float64), z["albedo_eigenvalues"], z["mean"].astype(np.float64), z["triangles"]
    assert basis.shape == (40, 9409)
    assert np.allclose(basis[0], basis[0].mean(), rtol=1e-4)  # constant mode first
    ratios = np.array([_dirichlet_ratio(verts, tris, basis[k]) for k in range(0, 40, 6)])
    # the Rayleigh quotient of an eigenvector is its eigenvalue (independent gradient-based energy)
    np.testing.assert_allclose(ratios, eig[0:40:6], rtol=2e-3, atol=1e-6)
    assert np.all(np.diff(eig) >= -1e-6)
    # a random smooth combination is smoother than the last mode; unit RMS scaling
    np.testing.assert_allclose(np.sqrt((basis**2).mean(1)), 1.0, rtol=1e-4)


@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_vertex_normals_on_sphere_and_plane(impl):
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    v = torch.tensor(s.vertices, dtype=torch.float64)[None]
    f = torch.tensor(s.faces, dtype=torch.long)
    n = vertex_normals(v, f, impl)[0]
    radial = v[0] / v[0].norm(dim=1, keepdim=True)
    assert (n * radial).sum(1).min() > 0.999  # outward, unit
    torch.testing.assert_close(n.norm(dim=1), torch.ones(len(n), dtype=torch.float64))
    # a counter-clockwise (seen from +z) square: normals +z; area weighting is exact for a fan
    sq = torch.tensor([[[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.0]]])
    nf = vertex_normals(sq.double(), torch.tensor([[0, 1, 2], [0, 2, 3]]), impl)
    torch.testing.assert_close(nf[0], torch.tensor([[0, 0, 1.0]], dtype=torch.float64).expand(4, 3))
    # area weighting: a vertex shared by a big triangle (normal +z) and a small one (normal +x)
    pts = torch.tensor([[[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, -1], [0, 1, 0]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 3, 4]])
    n0 = vertex_normals(pts, tri, impl)[0, 0]
    expect = torch.tensor([1.0, 0, 16.0], dtype=torch.float64)  # |cross| = 2 x area: 16 (z) and 1 (x)
    torch.testing.assert_close(n0, expect / expect.norm())


@pytest.mark.parametrize("impl", ["torch", "numba"])
def test_vertex_normals_gradient_matches_finite_differences(impl):
    v = torch.tensor([[[0, 0, 0], [1, 0, 0.2], [0.1, 1, 0], [1.2, 1.1, 0.4]]], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([[0, 1, 2], [1, 3, 2]])
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, f, impl), (v,))


def test_model_normals_face_forward_and_landmarks(model):
    n = model.vertex_normals(model.mean[None])[0]
    assert n[model.lm68[30], 2] > 0.9  # nose tip normal towards the viewer
    lm = model.landmarks(model.mean[None])
    torch.testing.assert_close(lm[0], model.mean[model.lm68])
    five = model.alignment_points(model.mean[None])[0]
    torch.testing.assert_close(five[0], model.mean[model.lm68[36:42]].mean(0))
    assert five[0, 0] < 0 < five[1, 0] and five[3, 0] < 0 < five[4, 0]


def test_contour_landmarks_follow_yaw(model):
    yaw = torch.tensor([0.0, math.radians(40), -math.radians(40)])
    idx = model.landmark_indices(yaw)
    assert torch.equal(idx[0], model.lm68)
    assert torch.equal(idx[1, 9:17], model.jaw_left) and torch.equal(idx[1, :9], model.lm68[:9])
    assert torch.equal(idx[2, 0:8], model.jaw_right) and torch.equal(idx[2, 8:], model.lm68[8:])
    lm = model.landmarks(model.mean[None].expand(3, -1, -1), yaw)
    torch.testing.assert_close(lm[1, 9:17], model.mean[model.jaw_left])
    # the swapped contour lies further back (smaller z): it is the silhouette under yaw
    assert (model.mean[model.jaw_left, 2] <= model.mean[model.lm68[9:17], 2] + 1e-6).all()
