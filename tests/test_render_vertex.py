"""The fast per-vertex path of the face renders (recon.render.vertex, recon.face.FaceGeometry) against the
reference maths, and the face renders in float32 under autocast.

Truth: recon.morphable.face_area_weighted_normals and recon.lighting.sh_shading (the reference torch
code), and the pre-sharing render path written out here step by step (normals of the camera-space mesh,
colour and depth from separate renders)."""

from __future__ import annotations

import pytest
import torch

from recon import CoeffLayout, MorphableModel
from recon.camera import canonical_camera, intrinsics
from recon.canonical import normalise_depth, render_canonical
from recon.face import face_geometry, render_face
from recon.geometry import model_to_camera
from recon.lighting import sh_shading, standard_light
from recon.morphable import face_area_weighted_normals
from recon.render import build_renderer
from recon.render.vertex import shaded_colours, vertex_normals

IMPLS = ["numba", "torch"]


@pytest.fixture(scope="module")
def mm():
    return MorphableModel()


def _coeffs(layout: CoeffLayout, b: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = layout.mean_frontal(b).clone()
    p = layout.split(c)
    p = dict(p)
    p["id"] = torch.randn(b, layout.n_id, generator=g)
    p["expr"] = torch.rand(b, layout.n_expr, generator=g) * 0.3
    p["albedo"] = torch.randn(b, layout.n_albedo, 3, generator=g) * 0.5
    p["rotation"] = (torch.rand(b, 3, generator=g) - 0.5) * 0.6
    p["light"] = p["light"] + 0.2 * torch.randn(b, 27, generator=g)
    return layout.join(p)


@pytest.mark.parametrize("impl", IMPLS)
def test_vertex_normals_and_gradient_match_reference(mm, impl):
    g = torch.Generator().manual_seed(1)
    v = (mm.mean + 0.3 * torch.randn(2, mm.n_vertices, 3, generator=g)).double().requires_grad_()
    w = torch.randn(2, mm.n_vertices, 3, generator=g, dtype=torch.float64)
    ref = face_area_weighted_normals(v, mm.triangles)
    out = vertex_normals(v, mm.triangles, impl)
    assert out.dtype == torch.float64 and torch.allclose(out, ref, atol=1e-12)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), v)
    (g_out,) = torch.autograd.grad((vertex_normals(v, mm.triangles, impl) * w).sum(), v)
    assert torch.allclose(g_out, g_ref, rtol=1e-9, atol=1e-9)
    v32 = v.detach().float()
    ref32 = face_area_weighted_normals(v32, mm.triangles)
    assert torch.allclose(vertex_normals(v32, mm.triangles, impl), ref32, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shared_light", [False, True])
def test_shaded_colours_and_gradients_match_reference(mm, impl, shared_light):
    g = torch.Generator().manual_seed(2)
    n = face_area_weighted_normals(mm.mean + 0.3 * torch.randn(2, mm.n_vertices, 3, generator=g), mm.triangles)
    n = n.double().requires_grad_()
    light = (standard_light(1 if shared_light else 2) + 0.5 * torch.randn(1 if shared_light else 2, 27, generator=g))
    light = light.double().requires_grad_()
    alb = (1.3 * torch.rand(2, mm.n_vertices, 3, generator=g, dtype=torch.float64)).requires_grad_()  # some clamp
    wc, ws = (torch.randn(2, mm.n_vertices, 3, generator=g, dtype=torch.float64) for _ in range(2))
    shade_ref = sh_shading(n, light)
    col_ref = (alb * shade_ref).clamp(0.0, 1.0)
    col, shade = shaded_colours(alb, n, light, impl)
    assert torch.allclose(shade, shade_ref, atol=1e-12) and torch.allclose(col, col_ref, atol=1e-12)
    assert ((col_ref == 1.0).any() or (col_ref == 0.0).any())  # the clamp is exercised
    grads_ref = torch.autograd.grad((col_ref * wc).sum() + (shade_ref * ws).sum(), [alb, n, light])
    col, shade = shaded_colours(alb, n, light, impl)
    grads = torch.autograd.grad((col * wc).sum() + (shade * ws).sum(), [alb, n, light])
    for a, b in zip(grads, grads_ref):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def _old_render_face(mm, renderer, coeffs, size, layout):
    """The render path before the shared geometry: normals of the camera-space mesh."""
    p = layout.split(coeffs)
    vcam = model_to_camera(mm.shape(p["id"], p["expr"]), p["rotation"], p["translation"])
    normals = face_area_weighted_normals(vcam, mm.triangles)
    col = (mm.albedo(p["albedo"]) * sh_shading(normals, p["light"])).clamp(0.0, 1.0)
    return renderer(*mm.fill_holes(vcam, col), size, intrinsics(size))


def test_face_render_with_shared_geometry_equals_the_old_path(mm):
    layout = CoeffLayout.from_model(mm)
    renderer = build_renderer("torch")
    c = _coeffs(layout).requires_grad_()
    p = layout.split(c)
    neutral = face_geometry(mm, p["id"], None, p["albedo"])
    geo = face_geometry(mm, p["id"], p["expr"], albedo=neutral.albedo, neutral=neutral.shape)
    new = render_face(mm, renderer, c, 48, layout=layout, geometry=geo)
    old = _old_render_face(mm, renderer, c, 48, layout)
    assert torch.allclose(new["image"], old.image, atol=1e-5) and torch.equal(new["mask"], old.mask)
    assert torch.allclose(new["depth"], old.depth, atol=1e-4)  # camera z ~50 cm in float32
    w = torch.randn_like(old.image)
    (g_new,) = torch.autograd.grad((new["image"] * w).sum(), c)
    (g_old,) = torch.autograd.grad((old.image * w).sum(), c)
    assert torch.allclose(g_new, g_old, rtol=1e-3, atol=1e-3 * g_old.abs().max().item())


def test_canonical_one_pass_equals_separate_colour_and_depth_renders(mm):
    layout = CoeffLayout.from_model(mm)
    renderer = build_renderer("torch")
    c = _coeffs(layout, seed=3)
    canon, depth = render_canonical(mm, renderer, c, image_size=48, layout=layout)
    # two separate renders the old way: colour only, then depth only (no attributes)
    p = layout.split(c)
    cam = canonical_camera(48)
    vcam = mm.shape(p["id"], None) @ cam.R.T + cam.t
    n = face_area_weighted_normals(vcam, mm.triangles)
    col = (mm.albedo(p["albedo"]) * sh_shading(n, standard_light(c.shape[0]))).clamp(0.0, 1.0)
    colour = renderer(*mm.fill_holes(vcam, col), 48, cam.K)
    v, t, _ = mm.fill_holes(vcam, None)
    geom = renderer(v, t, None, 48, cam.K)
    assert torch.allclose(canon, colour.image.clamp(0.0, 1.0), atol=1e-5)
    assert torch.allclose(depth, normalise_depth(geom.depth, geom.mask), atol=1e-5)


def test_face_renders_are_float32_under_autocast(mm):
    layout = CoeffLayout.from_model(mm)
    renderer = build_renderer("torch")
    c = _coeffs(layout, seed=4)
    ref = render_face(mm, renderer, c, 40, layout=layout)
    ref_c = render_canonical(mm, renderer, c, image_size=40, layout=layout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = render_face(mm, renderer, c, 40, layout=layout)
        amp_c = render_canonical(mm, renderer, c, image_size=40, layout=layout)
        low = render_face(mm, renderer, c.bfloat16(), 40, layout=layout)
    for k in ("image", "mask", "depth", "landmarks2d"):
        assert amp[k].dtype == torch.float32 and low[k].dtype == torch.float32, k
        assert torch.equal(amp[k], ref[k]), k
    for a, b in zip(amp_c, ref_c):
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_projection_equals_project_vertices(dtype):
    from recon.render.base import project_vertices
    from recon.render.vertex import project

    g = torch.Generator().manual_seed(5)
    v = torch.randn(3, 500, 3, generator=g, dtype=dtype)
    v[..., 2] = v[..., 2].abs() + 20.0
    v.requires_grad_()
    K = torch.tensor([[50.0, 0.5, 24.0], [0.0, 51.0, 23.0], [0.0, 0.0, 1.0]], dtype=dtype).expand(3, 3, 3)
    ref = project_vertices(v, K)
    out = project(v, K, "numba")
    assert torch.equal(out, ref)  # same operations in the same order and dtype: bit-identical
    w = torch.randn(ref.shape, generator=g, dtype=dtype)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), v)
    (g_out,) = torch.autograd.grad((project(v, K, "numba") * w).sum(), v)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(g_out, g_ref, rtol=tol, atol=tol)


def test_fill_holes_fast_equals_the_model_method(mm):
    from recon.face import fill_holes_fast

    g = torch.Generator().manual_seed(6)
    v = (mm.mean + 0.2 * torch.randn(2, mm.n_vertices, 3, generator=g)).double().requires_grad_()
    for attrs in (None, torch.rand(2, mm.n_vertices, 3, generator=g, dtype=torch.float64),
                  torch.rand(2, mm.n_vertices, 2, generator=g, dtype=torch.float64)):
        ref, fast = mm.fill_holes(v, attrs), fill_holes_fast(mm, v, attrs)
        assert torch.equal(ref[1], fast[1])
        assert torch.allclose(ref[0], fast[0], atol=1e-12)
        assert (ref[2] is None and fast[2] is None) or torch.equal(ref[2], fast[2])
    w = torch.randn(2, mm.n_vertices + mm.hole_weights.shape[0], 3, generator=g, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((mm.fill_holes(v)[0] * w).sum(), v)
    (g_fast,) = torch.autograd.grad((fill_holes_fast(mm, v)[0] * w).sum(), v)
    assert torch.allclose(g_fast, g_ref, atol=1e-12)
