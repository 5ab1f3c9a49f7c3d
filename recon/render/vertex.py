"""Per-vertex work every face render does first: vertex normals and SH shading, with a fast CPU path.

Same maths as :func:`recon.morphable.face_area_weighted_normals` and :func:`recon.lighting.sh_shading`
(those are the reference and the path on other devices); on CPU with numba the forward and backward are
fused numba kernels (``_numba_vertex``) instead of a dozen full-size tensor ops each, the step's largest
render cost before (docs/BENCH.md, "joint step breakdown"). Results agree with the reference to float
rounding (the kernels accumulate in float64); ``tests/test_render_vertex.py`` checks values and gradients.
"""

from __future__ import annotations

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
        gv = k.normals_backward(v, tri, m, _np(g.to(torch.float64)), NORMAL_EPS)
        return torch.from_numpy(gv).to(ctx.dtype), None


class _ShadingNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, normals: Tensor, light: Tensor):
        from . import _numba_vertex as k

        n = _np(normals if normals.dtype in (torch.float32, torch.float64) else normals.float())
        lt = _np(light.to(torch.float64))
        ctx.arrays = (n, lt)
        ctx.dtypes = (normals.dtype, light.dtype, light.shape[0])
        return torch.from_numpy(k.shading_forward(n, lt)).to(normals.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        from . import _numba_vertex as k

        n, lt = ctx.arrays
        n_dtype, l_dtype, lb = ctx.dtypes
        gn, gl = k.shading_backward(n, lt, _np(g.to(torch.float64)))
        g_light = torch.from_numpy(gl)
        if lb == 1:
            g_light = g_light.sum(0, keepdim=True)
        return torch.from_numpy(gn).to(n_dtype), g_light.to(l_dtype)


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


def sh_shading(normals: Tensor, light: Tensor, impl: str = "auto") -> Tensor:
    """Lambertian SH shading: normals (B,V,3) unit camera space, light (B,27) or (B,3,9) -> (B,V,3).

    Equals :func:`recon.lighting.sh_shading` (its shape checks and conventions); impl as in
    :func:`vertex_normals`.
    """
    if resolve_impl(impl, normals.device) != "numba":
        from recon.lighting import sh_shading as reference

        return reference(normals, light)
    if normals.dim() != 3 or normals.shape[-1] != 3:
        raise ValueError(f"normals must be (B,V,3), got {tuple(normals.shape)}")
    if light.dim() == 2 and light.shape[1] == 27:
        light = light.reshape(-1, 3, 9)
    if light.dim() != 3 or light.shape[1:] != (3, 9) or light.shape[0] not in (1, normals.shape[0]):
        raise ValueError(f"light must be (B,27) or (B,3,9) with B={normals.shape[0]}, got {tuple(light.shape)}")
    return _ShadingNumba.apply(normals, light)


__all__ = ["vertex_normals", "sh_shading"]
