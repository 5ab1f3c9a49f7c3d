"""Differentiable per-pixel interpolation given the rasterised triangle ids.

For every covered pixel centre p = (j+0.5, i+0.5) with visible triangle (a, b, c), screen corners
(u_k, v_k) and camera depths z_k:

    l_k   = screen-space barycentrics of p (edge functions / signed area)
    w_k   = (l_k / z_k) / sum_m (l_m / z_m)       perspective-correct weights
    depth = 1 / sum_m (l_m / z_m)                  camera z (cm)
    image = sum_k w_k * attribute_k

Gradients flow to the screen positions (hence to the camera-space vertices through the projection)
and to the attributes; the triangle id itself is piecewise constant (no gradient), so the hard mask
has none: use :func:`soft_silhouette` for silhouette gradients.

Two implementations with identical maths: ``numba`` (CPU; an autograd Function whose backward
scatters with a numba kernel, no (B,H,W,3,3) temporaries) and ``torch`` (gathers the covered pixels
and lets autograd do the rest; works on any device).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from .rasterize import _kernels, point_triangle_distance, resolve_impl


def _storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype is computed from / stored as float32 by the kernels."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _InterpolateNumba(torch.autograd.Function):
    """numba forward / backward; the kernels compute in float64 and store in the inputs' dtype."""

    @staticmethod
    def forward(ctx, screen: Tensor, attributes: Tensor, triangles: Tensor, face: Tensor):
        k = _kernels()
        a_dtype = _storage_dtype(attributes.dtype)
        s_dtype = _storage_dtype(screen.dtype)
        scr = screen.detach().to(torch.float64).contiguous().numpy()
        att = attributes.detach().to(a_dtype).contiguous().numpy()
        tri = triangles.detach().to(torch.int64).contiguous().numpy()
        fc = face.detach().to(torch.int64).contiguous().numpy()
        image, depth = k.interp_forward(scr, att, tri, fc, np.float64 if s_dtype == torch.float64 else np.float32)
        ctx.arrays = (scr, att, tri, fc)
        ctx.dtypes = (screen.dtype, attributes.dtype, s_dtype, a_dtype)
        return torch.from_numpy(image).to(attributes.dtype), torch.from_numpy(depth).to(screen.dtype)

    @staticmethod
    def backward(ctx, g_image: Tensor, g_depth: Tensor):
        k = _kernels()
        scr, att, tri, fc = ctx.arrays
        s_in, a_in, s_dtype, a_dtype = ctx.dtypes
        shape = (fc.shape[0], 1) + fc.shape[1:]
        if g_image is None:
            g_image = torch.zeros((fc.shape[0], att.shape[2]) + fc.shape[1:], dtype=a_dtype)
        if g_depth is None:
            g_depth = torch.zeros(shape, dtype=s_dtype)
        gi = g_image.detach().to(a_dtype).contiguous().numpy()
        gd = g_depth.detach().to(s_dtype).contiguous().numpy()
        g_scr, g_att = k.interp_backward(scr, att, tri, fc, gi, gd)
        g_s = torch.from_numpy(g_scr).to(s_in) if ctx.needs_input_grad[0] else None
        g_a = torch.from_numpy(g_att).to(a_in) if ctx.needs_input_grad[1] else None
        return g_s, g_a, None, None


def _barycentric_torch(screen: Tensor, triangles: Tensor, face: Tensor):
    """Covered pixels -> (flat pixel index (N,), batch (N,), vertex ids (N,3), w (N,3), depth (N,))."""
    b, h, w = face.shape
    flat = face.reshape(-1)
    pix = torch.nonzero(flat >= 0, as_tuple=True)[0]
    f = flat[pix]
    bi = torch.div(pix, h * w, rounding_mode="floor")
    rem = pix - bi * (h * w)
    row = torch.div(rem, w, rounding_mode="floor")
    col = rem - row * w
    vid = triangles[f]  # (N,3)
    s = screen[bi[:, None], vid]  # (N,3,3)
    u, v, z = s[..., 0], s[..., 1], s[..., 2]
    px = col.to(screen.dtype) + 0.5
    py = row.to(screen.dtype) + 0.5
    du = u - px[:, None]
    dv = v - py[:, None]
    # e_k = cross(corner_{k+1} - p, corner_{k+2} - p)
    e = du.roll(-1, 1) * dv.roll(-2, 1) - du.roll(-2, 1) * dv.roll(-1, 1)
    area = e.sum(1, keepdim=True)
    q = e / (area * z)
    qs = q.sum(1, keepdim=True)
    return pix, bi, vid, q / qs, 1.0 / qs[:, 0]


def _interpolate_torch(screen: Tensor, attributes: Tensor, triangles: Tensor, face: Tensor):
    b, h, w = face.shape
    c = attributes.shape[2]
    pix, bi, vid, wts, depth = _barycentric_torch(screen, triangles, face)
    att = attributes[bi[:, None], vid]  # (N,3,C)
    vals = (wts[..., None].to(att.dtype) * att).sum(1)  # (N,C)
    image = attributes.new_zeros(b * h * w, c).index_put((pix,), vals)
    dimg = screen.new_zeros(b * h * w).index_put((pix,), depth)
    return image.view(b, h, w, c).permute(0, 3, 1, 2).contiguous(), dimg.view(b, 1, h, w)


def interpolate(
    screen: Tensor, attributes: Tensor, triangles: Tensor, face: Tensor, impl: str = "auto"
) -> Tuple[Tensor, Tensor]:
    """Perspective-correct interpolation at pixel centres.

    screen (B,V,3) (u px, v px, z cm), attributes (B,V,C), triangles (F,3) long, face (B,H,W) long
    (-1 = background). Returns image (B,C,H,W) and depth (B,1,H,W) cm, both 0 on background;
    differentiable w.r.t. ``screen`` and ``attributes``.
    """
    impl = resolve_impl(impl, screen.device)
    if impl == "numba":
        return _InterpolateNumba.apply(screen, attributes, triangles, face)
    return _interpolate_torch(screen, attributes, triangles, face)


def rim_profile(d: Tensor, sigma: float, radius: float) -> Tensor:
    """Soft coverage of an uncovered pixel at distance d px from the silhouette.

    ``(2 sigmoid(-d/sigma) - c) / (1 - c)`` with ``c = 2 sigmoid(-radius/sigma)``: 1 at the silhouette,
    0 at ``radius`` and beyond, continuous on both ends, strictly decreasing in between.
    """
    c = 2.0 / (1.0 + math.exp(radius / sigma))
    return ((2.0 * torch.sigmoid(-d / sigma) - c) / (1.0 - c)).clamp_min(0.0)


def soft_silhouette(
    screen: Tensor, triangles: Tensor, face: Tensor, near: Tensor, sigma: float, radius: float
) -> Tensor:
    """Coverage with a soft outer rim: (B,1,H,W).

    Covered pixels are 1. An uncovered pixel whose nearest triangle (``near``, from
    :func:`recon.render.rasterize.nearest_triangle` with the same ``radius``) lies at distance d px
    gets :func:`rim_profile` (d, sigma, radius), differentiable w.r.t. the screen positions of that
    triangle: moving the silhouette outwards raises the mask there.
    """
    b, h, w = face.shape
    mask = (face >= 0).to(screen.dtype).reshape(-1)
    flat = near.reshape(-1)
    pix = torch.nonzero(flat >= 0, as_tuple=True)[0]
    if pix.numel() == 0:
        return mask.view(b, 1, h, w)
    f = flat[pix]
    bi = torch.div(pix, h * w, rounding_mode="floor")
    rem = pix - bi * (h * w)
    row = torch.div(rem, w, rounding_mode="floor")
    col = rem - row * w
    s = screen[bi[:, None], triangles[f]]  # (N,3,3)
    d = point_triangle_distance(col.to(screen.dtype) + 0.5, row.to(screen.dtype) + 0.5, s[..., 0], s[..., 1])
    return mask.index_put((pix,), rim_profile(d, sigma, radius)).view(b, 1, h, w)
