"""Per-vertex work every face render does first: vertex normals and SH shading, with a fast CPU path.

Same maths as :func:`recon.morphable.face_area_weighted_normals` and :func:`recon.lighting.sh_shading`
(those are the reference and the path on other devices); on CPU with numba the forward and backward are
fused numba kernels (``_numba_vertex``) instead of a dozen full-size tensor ops each, the step's largest
render cost before (docs/BENCH.md, "joint step breakdown"). Results agree with the reference to float
rounding (the kernels accumulate in float64); ``tests/test_render_vertex.py`` checks values and gradients.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .rasterize import resolve_impl

NORMAL_EPS = 1e-12  # face_area_weighted_normals' default


def _np(x: Tensor):
    return x.detach().contiguous().numpy()


class _NormalsNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, verts: Tensor, triangles: Tensor):
        from . import _numba_vertex as k

        v = _np(verts if verts.dtype in (torch.float32, torch.float64) else verts.float())
        tri = _np(triangles.to(torch.int64))
        m, n = k.normals_forward(v, tri, NORMAL_EPS)
        ctx.arrays = (v, tri, m)
        ctx.dtype = verts.dtype
        return torch.from_numpy(n).to(verts.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        from . import _numba_vertex as k

        v, tri, m = ctx.arrays
        gv = k.normals_backward(v, tri, m, _np(g.to(torch.from_numpy(v).dtype)), NORMAL_EPS)
        return torch.from_numpy(gv).to(ctx.dtype), None


class _ShadingNumba(torch.autograd.Function):
    """(albedo (B,V,3), normals, light) -> (colour = clamp(albedo x shading, 0, 1), shading)."""

    @staticmethod
    def forward(ctx, albedo: Tensor, normals: Tensor, light: Tensor):
        from . import _numba_vertex as k

        dt = normals.dtype if normals.dtype in (torch.float32, torch.float64) else torch.float32
        n = _np(normals.to(dt))
        a = _np(albedo.to(dt))
        lt = _np(light.to(torch.float64))
        shade, col = k.shading_forward(n, lt, a)
        ctx.arrays = (n, lt, a, shade)
        ctx.dtypes = (albedo.dtype, normals.dtype, light.dtype, light.shape[0])
        return torch.from_numpy(col).to(normals.dtype), torch.from_numpy(shade).to(normals.dtype)

    @staticmethod
    def backward(ctx, g_col: Tensor, g_shade: Tensor):
        from . import _numba_vertex as k

        n, lt, a, shade = ctx.arrays
        a_dtype, n_dtype, l_dtype, lb = ctx.dtypes
        dt = torch.from_numpy(n).dtype  # the kernels read any float dtype and accumulate in float64
        gs = None if g_shade is None else _np(g_shade.to(dt))
        gc = None if g_col is None else _np(g_col.to(dt))
        gn, gl, ga = k.shading_backward(n, lt, gs, a, shade, gc)
        g_light = torch.from_numpy(gl)
        if lb == 1:
            g_light = g_light.sum(0, keepdim=True)
        g_alb = None if ga is None else torch.from_numpy(ga).to(a_dtype)
        return g_alb, torch.from_numpy(gn).to(n_dtype), g_light.to(l_dtype)


class _ProjectNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vertices: Tensor, K: Tensor):
        from . import _numba_vertex as k

        v = _np(vertices)
        kk = _np(K.to(vertices.dtype).expand(vertices.shape[0], 3, 3))
        ctx.arrays = (v, kk)
        return torch.from_numpy(k.project_forward(v, kk))

    @staticmethod
    def backward(ctx, g: Tensor):
        from . import _numba_vertex as k

        v, kk = ctx.arrays
        return torch.from_numpy(k.project_backward(v, kk, _np(g.to(torch.from_numpy(v).dtype)))), None


def project(vertices: Tensor, K: Tensor, impl: str = "auto") -> Tensor:
    """:func:`recon.render.base.project_vertices` (camera points (B,V,3) -> (u px, v px, z cm)) with a numba
    forward and backward on CPU when K needs no gradient; the reference elsewhere."""
    from .base import project_vertices

    if (resolve_impl(impl, vertices.device) != "numba" or K.requires_grad
            or vertices.dtype not in (torch.float32, torch.float64)):
        return project_vertices(vertices, K)
    return _ProjectNumba.apply(vertices, K)


def vertex_normals(verts: Tensor, triangles: Tensor, impl: str = "auto") -> Tensor:
    """Area-weighted unit vertex normals: verts (B,V,3), triangles (F,3) long -> (B,V,3).

    Equals :func:`recon.morphable.face_area_weighted_normals`; impl 'auto' (numba on CPU when
    importable), 'numba' or 'torch' (the reference).
    """
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B,V,3), got {tuple(verts.shape)}")
    if resolve_impl(impl, verts.device) == "numba":
        return _NormalsNumba.apply(verts, triangles)
    from recon.morphable import face_area_weighted_normals

    return face_area_weighted_normals(verts, triangles)


def _check_light(normals: Tensor, light: Tensor) -> Tensor:
    if normals.dim() != 3 or normals.shape[-1] != 3:
        raise ValueError(f"normals must be (B,V,3), got {tuple(normals.shape)}")
    if light.dim() == 2 and light.shape[1] == 27:
        light = light.reshape(-1, 3, 9)
    if light.dim() != 3 or light.shape[1:] != (3, 9) or light.shape[0] not in (1, normals.shape[0]):
        raise ValueError(f"light must be (B,27) or (B,3,9) with B={normals.shape[0]}, got {tuple(light.shape)}")
    return light


def shaded_colours(albedo: Tensor, normals: Tensor, light: Tensor, impl: str = "auto") -> Tuple[Tensor, Tensor]:
    """Lambertian SH shading and the clamped colour: albedo (B,V,3) in [0,1], normals (B,V,3) unit camera
    space, light (B,27) or (B,3,9) -> (colour = clamp(albedo x shading, 0, 1), shading), each (B,V,3).

    The shading equals :func:`recon.lighting.sh_shading` (its conventions and shape checks); impl as in
    :func:`vertex_normals` (numba: one fused kernel forward and one backward).
    """
    if resolve_impl(impl, normals.device) != "numba":
        from recon.lighting import sh_shading as reference

        shade = reference(normals, light)
        return (albedo * shade).clamp(0.0, 1.0), shade
    light = _check_light(normals, light)
    if albedo.shape != normals.shape:
        raise ValueError(f"albedo must be (B,V,3) like the normals {tuple(normals.shape)}, got {tuple(albedo.shape)}")
    return _ShadingNumba.apply(albedo, normals, light)


__all__ = ["vertex_normals", "shaded_colours", "project"]
