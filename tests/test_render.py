"""The project's renderer (backend 'torch', numba and vectorised implementations) against independent truths.

* analytic ray casting (ray through each pixel centre intersected with the triangle's 3-D plane,
  barycentrics in 3-D) for coverage, depth and perspective-correct colour of a triangle and a cube;
* finite differences for gradients w.r.t. vertices and attributes (and the soft silhouette);
* a round trip: fit a pose back from its own render.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recon.render import build_renderer, project_vertices
from recon.render.rasterize import nearest_triangle, rasterize

IMPLS = ["numba", "torch"]
ICT_NPZ = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets/ict-face/ict_face_mesh.npz"  # bundled mesh


def _K(f, cx, cy, dtype=torch.float64):
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def raycast(verts: np.ndarray, tris: np.ndarray, attrs: np.ndarray, h: int, w: int, K: np.ndarray,
            farthest: bool = False):
    """Ground truth by ray casting through pixel centres (float64 numpy).

    Returns depth (H,W) (inf = miss), attributes (H,W,C), margin (H,W): the smallest |barycentric|
    of the hit (or of the nearest miss) so callers can skip centres that sit on an edge.
    ``farthest`` keeps the last hit along each ray instead of the first.
    """
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d = np.linalg.solve(K, np.stack([jj.ravel(), ii.ravel(), np.ones(h * w)]))  # (3,N), d_z = 1
    depth = np.full(h * w, np.inf)
    far = np.full(h * w, -np.inf)
    out = np.zeros((h * w, attrs.shape[1]))
    margin = np.full(h * w, np.inf)
    for a, b, c in tris:
        A, B, C = verts[a], verts[b], verts[c]
        n = np.cross(B - A, C - A)
        t = (n @ A) / (n @ d)  # ray parameter = camera z since d_z = 1
        P = d * t  # (3,N)
        # barycentrics of P in the 3-D triangle (signed sub-areas along n)
        nn = n @ n
        la = np.cross(B - P.T, C - P.T) @ n / nn
        lb = np.cross(C - P.T, A - P.T) @ n / nn
        lc = 1.0 - la - lb
        lmin = np.minimum(la, np.minimum(lb, lc))
        margin = np.minimum(margin, np.abs(lmin))
        hit = (lmin > 0) & (t > 0) & ((t > far) if farthest else (t < depth))
        depth[hit] = t[hit]
        far[hit] = t[hit]
        out[hit] = (la[hit, None] * attrs[a] + lb[hit, None] * attrs[b] + lc[hit, None] * attrs[c])
    return depth.reshape(h, w), out.reshape(h, w, -1), margin.reshape(h, w)


@pytest.mark.parametrize("impl", IMPLS)
def test_single_triangle_matches_raycast(impl):
    h, w = 40, 48
    K = _K(60.0, 23.0, 21.0)
    verts = np.array([[-6.0, -5.0, 30.0], [7.0, -2.0, 45.0], [-1.0, 8.0, 38.0]])
    tris = np.array([[0, 1, 2]])
    colours = np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    gt_depth, gt_col, margin = raycast(verts, tris, colours, h, w, K.numpy())
    r = build_renderer("torch", impl=impl)
    out = r(torch.tensor(verts)[None], torch.tensor(tris), torch.tensor(colours)[None], (h, w), K)
    sure = margin > 1e-6
    hit = np.isfinite(gt_depth)
    assert hit.sum() > 200 and (~hit).sum() > 200  # a real test: both classes present
    mask = out.mask[0, 0].numpy() > 0.5
    np.testing.assert_array_equal(mask[sure], hit[sure])
    np.testing.assert_allclose(out.depth[0, 0].numpy()[sure & hit], gt_depth[sure & hit], rtol=1e-9)
    img = out.image[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(img[sure & hit], gt_col[sure & hit], atol=1e-9)
    assert (out.depth[0, 0].numpy()[~mask] == 0).all() and (img[~mask] == 0).all()
    # the linear (non perspective-correct) interpolation differs: the test can tell them apart
    scr = project_vertices(torch.tensor(verts)[None], K[None])[0].numpy()
    i, j = np.argwhere(sure & hit)[len(np.argwhere(sure & hit)) // 2]
    p = np.array([j + 0.5, i + 0.5])
    T = np.array([scr[1, :2] - scr[0, :2], scr[2, :2] - scr[0, :2]]).T
    s, q = np.linalg.solve(T, p - scr[0, :2])
    linear = (1 - s - q) * colours[0] + s * colours[1] + q * colours[2]
    assert np.abs(linear - gt_col[i, j]).max() > 1e-3
    np.testing.assert_allclose(img[i, j], gt_col[i, j], atol=1e-9)


def _cube(center, half, rx, ry):
    """8 corners of a rotated cube (camera space) and 12 triangles wound counter-clockwise from outside."""
    c = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64) * half
    cx_, sx_ = math.cos(rx), math.sin(rx)
    cy_, sy_ = math.cos(ry), math.sin(ry)
    Rx = np.array([[1, 0, 0], [0, cx_, -sx_], [0, sx_, cx_]])
    Ry = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    v = c @ (Ry @ Rx).T + np.asarray(center)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tris = []
    for a, b, cc, d in quads:
        tris += [(a, b, cc), (a, cc, d)]
    tris = np.array(tris)
    # orient every triangle so its normal points away from the cube centre (outward)
    for k, (a, b, cc) in enumerate(tris):
        n = np.cross(v[b] - v[a], v[cc] - v[a])
        if n @ (v[a] - center) < 0:
            tris[k] = (a, cc, b)
    return v, tris


@pytest.mark.parametrize("impl", IMPLS)
def test_cube_occlusion_depth_and_colour(impl):
    """A rotated cube: visible surface, depth and the 3-D hit point (as colour) match ray casting."""
    h, w = 48, 64
    K = _K(70.0, 32.0, 24.0)
    verts, tris = _cube([0.5, -0.3, 20.0], 3.0, 0.5, 0.7)
    attrs = verts.copy()  # colour = camera-space position: the image must equal the hit point
    gt_depth, gt_pos, margin = raycast(verts, tris, attrs, h, w, K.numpy())
    hit = np.isfinite(gt_depth)
    sure = margin > 1e-6
    for order in (np.arange(12), np.arange(12)[::-1].copy()):  # z-buffer, not painter's order
        r = build_renderer("torch", impl=impl)
        out = r(torch.tensor(verts)[None], torch.tensor(tris[order]), torch.tensor(attrs)[None], (h, w), K)
        mask = out.mask[0, 0].numpy() > 0.5
        np.testing.assert_array_equal(mask[sure], hit[sure])
        d = out.depth[0, 0].numpy()
        np.testing.assert_allclose(d[sure & hit], gt_depth[sure & hit], rtol=1e-9)
        img = out.image[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(img[sure & hit], gt_pos[sure & hit], atol=1e-8)
        if order[0] == 0:
            out0 = out
    # back-face culling: the cube's outward CCW faces are front faces, so culling changes nothing
    rc = build_renderer("torch", impl=impl, cull_backfaces=True)
    oc = rc(torch.tensor(verts)[None], torch.tensor(tris), torch.tensor(attrs)[None], (h, w), K)
    assert torch.equal(oc.face, out0.face)
    np.testing.assert_allclose(oc.depth[0, 0].numpy()[sure], np.where(hit, gt_depth, 0)[sure], rtol=1e-9)
    # ...while flipping every triangle makes the near side back facing: the inside of the far side shows
    oflip = rc(torch.tensor(verts)[None], torch.tensor(tris[:, ::-1].copy()), torch.tensor(attrs)[None], (h, w), K)
    far_depth, _, _ = raycast(verts, tris, attrs, h, w, K.numpy(), farthest=True)
    np.testing.assert_allclose(oflip.depth[0, 0].numpy()[sure], np.where(hit, far_depth, 0)[sure], rtol=1e-9)
    assert (far_depth[hit] > gt_depth[hit] + 1.0).mean() > 0.5


def _bumpy_grid(n=5, size=8.0, z=25.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.linspace(-size / 2, size / 2, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    zz = z + 0.8 * torch.rand(n, n, generator=g, dtype=torch.float64)
    verts = torch.stack([xx + 0.2 * torch.rand(n, n, generator=g, dtype=torch.float64), yy, zz], -1).reshape(-1, 3)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j + 1, (i + 1) * n + j
            tris += [(a, d, c), (a, c, b)]
    return verts, torch.tensor(tris)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_finite_differences(impl):
    """d(loss)/d(vertices, attributes) vs central differences; the pixel->triangle map stays fixed."""
    h, w = 24, 24
    K = _K(50.0, 12.0, 12.0)
    verts, tris = _bumpy_grid()
    verts = verts[None].repeat(2, 1, 1)
    verts[1] += torch.tensor([0.4, -0.3, 1.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    attrs = torch.rand(2, verts.shape[1], 2, generator=g, dtype=torch.float64)
    wi = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64)
    wd = torch.randn(2, 1, h, w, generator=g, dtype=torch.float64)
    r = build_renderer("torch", impl=impl)

    def loss_fn(v, a):
        out = r(v, tris, a, (h, w), K)
        return (out.image * wi).sum() + 0.1 * (out.depth * wd).sum(), out.face

    v = verts.clone().requires_grad_(True)
    a = attrs.clone().requires_grad_(True)
    loss, face0 = loss_fn(v, a)
    gv, ga = torch.autograd.grad(loss, (v, a))
    assert gv.abs().max() > 1e-3 and ga.abs().max() > 1e-3
    eps = 1e-6
    idx = torch.randperm(verts.numel(), generator=g)[:40]
    for k in idx.tolist():
        vp, vm = verts.clone(), verts.clone()
        vp.view(-1)[k] += eps
        vm.view(-1)[k] -= eps
        lp, fp = loss_fn(vp, attrs)
        lm, fm = loss_fn(vm, attrs)
        assert torch.equal(fp, face0) and torch.equal(fm, face0)
        fd = (lp - lm) / (2 * eps)
        assert fd.item() == pytest.approx(gv.view(-1)[k].item(), rel=1e-5, abs=1e-6)
    for k in torch.randperm(attrs.numel(), generator=g)[:20].tolist():
        ap, am = attrs.clone(), attrs.clone()
        ap.view(-1)[k] += 1e-3
        am.view(-1)[k] -= 1e-3
        fd = (loss_fn(verts, ap)[0] - loss_fn(verts, am)[0]) / 2e-3
        assert fd.item() == pytest.approx(ga.view(-1)[k].item(), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
def test_soft_silhouette_gradient(impl):
    """Hard mask: no vertex gradient. Soft edges: pushing the right edge outward raises the mask sum,
    matching finite differences."""
    h, w = 20, 20
    K = _K(40.0, 10.0, 10.0)
    verts, tris = _bumpy_grid(n=3, size=4.0, z=20.0, seed=3)
    verts = verts[None]
    right = verts[0, :, 0] > 1.5  # the three right-column vertices
    hard = build_renderer("torch", impl=impl)
    v = verts.clone().requires_grad_(True)
    out = hard(v, tris, None, (h, w), K)
    assert not out.mask.requires_grad  # hard coverage carries no gradient
    soft = build_renderer("torch", impl=impl, soft_edges=1.0)

    def msum(vv):
        return soft(vv, tris, None, (h, w), K).mask.sum()

    s = msum(v)
    assert s.item() > out.mask.sum().item()  # a rim of partial coverage outside the silhouette
    # the rim profile runs continuously from 1 at the silhouette to 0 at its outer radius (4 sigma)
    from recon.render.interpolate import rim_profile

    d = torch.linspace(0.0, 5.0, 51, dtype=torch.float64)
    p = rim_profile(d, 1.0, 4.0)
    assert p[0].item() == pytest.approx(1.0) and p[40].item() == pytest.approx(0.0, abs=1e-12)
    assert (p[1:41] < p[:40]).all() and (p[40:] == 0).all()
    m = soft(v, tris, None, (h, w), K).mask
    assert ((m >= 0) & (m <= 1)).all() and ((m > 0) & (m < 1)).sum() > 10
    (gv,) = torch.autograd.grad(s, v)
    assert (gv[0, right, 0] > 0).all()  # moving the right column to +x grows the silhouette
    assert (gv[0, verts[0, :, 0] < -1.5, 0] < 0).all()  # the left column grows towards -x
    for k in range(verts.numel()):
        vp, vm = verts.clone(), verts.clone()
        vp.view(-1)[k] += 1e-6
        vm.view(-1)[k] -= 1e-6
        fd = (msum(vp) - msum(vm)) / 2e-6
        assert fd.item() == pytest.approx(gv.view(-1)[k].item(), rel=1e-4, abs=1e-6)


def _ict_mesh():
    d = np.load(ICT_NPZ)
    v = torch.tensor(d["mean"], dtype=torch.float64) * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    v[:, 2] += 50.0
    return v, torch.tensor(d["triangles"].astype(np.int64))


def test_numba_and_vectorised_agree_on_ict():
    v, tris = _ict_mesh()
    b, s = 2, 64
    V = v[None].repeat(b, 1, 1)
    V[1] += torch.tensor([1.0, 0.5, 5.0], dtype=torch.float64)
    K = _K(s * 2.0, s / 2, s / 2)
    scr = project_vertices(V, K[None].expand(b, 3, 3))
    fa, za = rasterize(scr, tris, (s, s), impl="numba")
    fb, zb = rasterize(scr, tris, (s, s), impl="torch")
    assert (fa >= 0).float().mean() > 0.3
    assert (fa == fb).float().mean() > 0.999
    assert torch.allclose(za[fa >= 0], zb[fa >= 0])
    na = nearest_triangle(scr, tris, fa, 3.0, impl="numba")
    nb = nearest_triangle(scr, tris, fa, 3.0, impl="torch")
    assert (na >= 0).sum() > 100 and (na == nb).float().mean() > 0.999
    # the ICT winding is front facing after the 180 degree x rotation: culling keeps the face
    fc, _ = rasterize(scr, tris, (s, s), cull_backfaces=True, impl="numba")
    assert (fc == fa).float().mean() > 0.995
    # gradients of both implementations agree
    g = torch.Generator().manual_seed(0)
    attrs = torch.rand(b, v.shape[0], 3, generator=g, dtype=torch.float64)
    wi = torch.randn(b, 3, s, s, generator=g, dtype=torch.float64)
    grads = []
    for impl in IMPLS:
        vv = V.clone().requires_grad_(True)
        aa = attrs.clone().requires_grad_(True)
        out = build_renderer("torch", impl=impl, soft_edges=1.0)(vv, tris, aa, s, K)
        ((out.image * wi).sum() + out.depth.sum() + out.mask.sum()).backward()
        grads.append((vv.grad, aa.grad, out.mask))
    assert torch.allclose(grads[0][2], grads[1][2], atol=1e-6)
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-9)


def test_vectorised_rasteriser_chunking_is_exact():
    """The torch (CUDA) rasteriser splits its candidate pixels into chunks: any split gives the
    same ids as one chunk and as the numba kernels."""
    from recon.render.rasterize import _nearest_torch, _rasterize_torch

    v, tris = _ict_mesh()
    s = 40
    K = _K(s * 2.0, s / 2, s / 2)
    scr = project_vertices(v[None], K[None])
    ref, zref = rasterize(scr, tris, (s, s), impl="numba")
    for chunk in (1 << 22, 2999):
        face, z = _rasterize_torch(scr, tris, s, s, False, 1e-3, max_per_chunk=chunk)
        assert (face == ref).float().mean() > 0.999
        assert torch.allclose(z[ref >= 0], zref[ref >= 0])
    near_ref = nearest_triangle(scr, tris, ref, 2.0, impl="numba")
    near = _nearest_torch(scr, tris, ref, 2.0, False, 1e-3, max_per_chunk=2999)
    assert (near_ref >= 0).sum() > 20 and (near == near_ref).float().mean() > 0.999
    # a triangle with more candidate pixels than a chunk holds is still done whole
    big = torch.tensor([[[-10.0, -10.0, 5.0, 30.0, -10.0, 5.0, -10.0, 30.0, 5.0]]]).view(1, 3, 3)
    big_scr = project_vertices(big, _K(4.0, 8.0, 8.0)[None])
    one = torch.tensor([[0, 1, 2]])
    f_small, _ = _rasterize_torch(big_scr, one, 16, 16, False, 1e-3, max_per_chunk=7)
    f_ref, _ = rasterize(big_scr, one, (16, 16), impl="numba")
    assert torch.equal(f_small, f_ref) and (f_ref >= 0).sum() > 100


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """pitch, yaw, roll (radians) -> R = Rz Ry Rx (3,3), differentiable."""
    p, y, r = angles.unbind()
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    Rx = torch.stack([one, zero, zero, zero, p.cos(), -p.sin(), zero, p.sin(), p.cos()]).view(3, 3)
    Ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()]).view(3, 3)
    Rz = torch.stack([r.cos(), -r.sin(), zero, r.sin(), r.cos(), zero, zero, zero, one]).view(3, 3)
    return Rz @ Ry @ Rx


def test_round_trip_pose_fit():
    """Render the ICT face at a known pose, start elsewhere, fit the pose by gradient descent on the
    rendered image + soft mask: the known pose comes back."""
    torch.manual_seed(0)
    v, tris = _ict_mesh()
    v = v.float()
    centre = v.mean(0)
    local = v - centre
    # smooth colour that moves with the surface: a function of the model-space position
    colour = torch.stack([torch.sin(local[:, 0] / 4), torch.cos(local[:, 1] / 5), local[:, 2] / 10], -1)[None]
    s = 48
    K = _K(s * 2.2, s / 2, s / 2, torch.float32)
    r = build_renderer("torch", soft_edges=1.0)

    def render(angles, trans):
        verts = local @ _rotation(angles).T + centre + trans
        return r(verts[None], tris, colour, s, K)

    true_a = torch.tensor([0.10, -0.15, 0.05])
    true_t = torch.tensor([0.8, -0.5, 2.0])
    with torch.no_grad():
        target = render(true_a, true_t)
    a = torch.zeros(3, requires_grad=True)
    t = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([{"params": [a], "lr": 0.02}, {"params": [t], "lr": 0.1}])
    first = None
    for it in range(80):
        out = render(a, t)
        loss = ((out.image - target.image) ** 2).mean() + ((out.mask - target.mask) ** 2).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
    # start was 8.6 degrees and 2.3 cm away
    assert (a.detach() - true_a).abs().max().item() < math.radians(1.0)
    assert (t.detach() - true_t).abs().max().item() < 0.25


def test_bad_inputs_are_clear_errors():
    r = build_renderer("torch")
    K = _K(10.0, 4.0, 4.0, torch.float32)
    v = torch.rand(1, 3, 3) + torch.tensor([0.0, 0.0, 5.0])
    tri = torch.tensor([[0, 1, 2]])
    a = torch.rand(1, 3, 1)
    with pytest.raises(ValueError, match="vertices"):
        r(v[0], tri, a, 8, K)
    with pytest.raises(ValueError, match="triangles"):
        r(v, tri.view(-1), a, 8, K)
    with pytest.raises(ValueError, match="outside"):
        r(v, tri + 1, a, 8, K)
    r(v, tri, a, 8, K)  # valid: remembered, and an in-place edit must still be caught
    tri[0, 2] = 3
    with pytest.raises(ValueError, match="outside"):
        r(v, tri, a, 8, K)
    tri[0, 2] = 2
    with pytest.raises(ValueError, match="attributes"):
        r(v, tri, torch.rand(1, 4, 1), 8, K)
    with pytest.raises(ValueError, match="K"):
        r(v, tri, a, 8, torch.eye(2))
    with pytest.raises(ValueError, match="image_size"):
        r(v, tri, a, (8, 0), K)
    with pytest.raises(KeyError, match="unknown renderer backend"):
        build_renderer("opengl")
    with pytest.raises(ValueError, match="soft_edges"):
        build_renderer("torch", soft_edges=-1.0)


def test_render_in_forked_worker_after_parent_rendered():
    """The CPU kernels' thread pool is per process: a forked DataLoader-style worker must not hang."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("platform without fork")
    n = torch.get_num_threads()
    torch.set_num_threads(2)  # make the parent create its pool
    try:
        assert _forked_mask_sum(0) == 32.0
        with mp.get_context("fork").Pool(2) as pool:
            sums = pool.map_async(_forked_mask_sum, range(2)).get(timeout=60)
    finally:
        torch.set_num_threads(n)
    # screen corners (6,6) (10,6) (8,10): rows 6.5 / 7.5 / 8.5 hold 4 + 2 + 2 centres, 4 images
    assert sums == [32.0, 32.0]


def _forked_mask_sum(_):
    torch.set_num_threads(2)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    v = torch.tensor([[[-1.0, -1, 10], [1, -1, 10], [0, 1, 10]]]).repeat(4, 1, 1)
    out = build_renderer("torch", impl="numba")(v, torch.tensor([[0, 1, 2]]), None, 16, K)
    return float(out.mask.sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_vectorised_matches_numba_on_ict():
    """On a GPU machine: the CUDA path gives the CPU kernels' pixels, values and gradients."""
    v, tris = _ict_mesh()
    b, s = 2, 64
    V = v[None].repeat(b, 1, 1)
    V[1] += torch.tensor([1.0, 0.5, 5.0], dtype=torch.float64)
    K = _K(s * 2.0, s / 2, s / 2)
    g = torch.Generator().manual_seed(0)
    attrs = torch.rand(b, v.shape[0], 3, generator=g, dtype=torch.float64)
    wi = torch.randn(b, 3, s, s, generator=g, dtype=torch.float64)
    res = []
    for device, impl in (("cpu", "numba"), ("cuda", "torch")):
        vv = V.detach().to(device).clone().requires_grad_(True)  # a fresh leaf per device
        aa = attrs.detach().to(device).clone().requires_grad_(True)
        out = build_renderer("torch", impl=impl, soft_edges=1.0)(vv, tris.to(device), aa, s, K.to(device))
        ((out.image * wi.to(device)).sum() + out.depth.sum() + out.mask.sum()).backward()
        res.append([t.detach().cpu() for t in (out.face, out.image, out.depth, out.mask, vv.grad, aa.grad)])
    (fa, ia, da, ma, gva, gaa), (fb, ib, db, mb, gvb, gab) = res
    assert (fa == fb).float().mean() > 0.999
    same = fa == fb
    assert torch.allclose(ia.permute(0, 2, 3, 1)[same], ib.permute(0, 2, 3, 1)[same], atol=1e-9)
    assert torch.allclose(da[:, 0][same], db[:, 0][same], rtol=1e-9)
    assert torch.allclose(ma, mb, atol=1e-6)
    assert torch.allclose(gva, gvb, rtol=1e-6, atol=1e-6) and torch.allclose(gaa, gab, rtol=1e-6, atol=1e-9)
