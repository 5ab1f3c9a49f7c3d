"""Triangle-id rasterisation (no gradient): numba CPU kernels and a vectorised torch fallback.

Both take ``screen`` (B,V,3) = (u px, v px, z cm) from :func:`recon.render.base.project_vertices`
and return the index of the nearest triangle covering each pixel centre (j+0.5, i+0.5).

Rules shared by both implementations (the tests compare them):

* coverage: the pixel centre lies inside or on the edge of the projected triangle (inclusive edge
  test; a centre on an edge shared by two triangles is resolved by the depth test);
* depth: camera z at the pixel centre, ``1 / sum(l_k / z_k)`` with screen-space barycentrics ``l``
  (perspective-correct); the smallest z wins, ties go to the lower triangle index;
* triangles with a vertex at z <= ``znear`` are dropped (no clipping), so are degenerate ones;
* with ``cull_backfaces`` triangles that appear clockwise in the image (u right, v down) are dropped,
  see :mod:`recon.render.base` for the winding rule.

numba is imported lazily, on first use (kernels are cached on disk with ``cache=True``).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

_KERNELS = None


def numba_available() -> bool:
    """True when numba imports (the CPU kernels can be used)."""
    try:
        import numba  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def _kernels():
    """Compile (or load from the on-disk cache) the numba kernels, once per process."""
    global _KERNELS
    if _KERNELS is None:
        from . import _numba_kernels

        _KERNELS = _numba_kernels
    return _KERNELS


def resolve_impl(impl: str, device: torch.device) -> str:
    """'auto' -> 'numba' on CPU when numba is importable, otherwise 'torch'."""
    if impl not in ("auto", "numba", "torch"):
        raise ValueError(f"impl must be 'auto', 'numba' or 'torch', got {impl!r}")
    if impl == "auto":
        return "numba" if device.type == "cpu" and numba_available() else "torch"
    if impl == "numba":
        if device.type != "cpu":
            raise ValueError("the numba kernels run on CPU tensors only; use impl='torch' on CUDA")
        if not numba_available():
            raise ImportError("impl='numba' needs the numba package (pip install numba)")
    return impl


@torch.no_grad()
def rasterize(
    screen: Tensor,
    triangles: Tensor,
    image_size: Tuple[int, int],
    cull_backfaces: bool = False,
    znear: float = 1e-3,
    impl: str = "auto",
) -> Tuple[Tensor, Tensor]:
    """Nearest triangle per pixel.

    screen: (B,V,3) (u px, v px, z cm); triangles: (F,3) long; image_size: (H, W).
    Returns face (B,H,W) long (-1 on background) and zbuf (B,H,W) float32 camera z in cm
    (+inf on background).
    """
    h, w = image_size
    impl = resolve_impl(impl, screen.device)
    if impl == "numba":
        k = _kernels()
        scr = screen.detach().to(torch.float64).contiguous().numpy()
        tri = triangles.detach().to(torch.int64).contiguous().numpy()
        face, zbuf = k.raster(scr, tri, int(h), int(w), bool(cull_backfaces), float(znear))
        return torch.from_numpy(face).to(torch.long), torch.from_numpy(zbuf)
    return _rasterize_torch(screen.detach(), triangles, h, w, cull_backfaces, znear)


@torch.no_grad()
def nearest_triangle(
    screen: Tensor,
    triangles: Tensor,
    face: Tensor,
    radius: float,
    cull_backfaces: bool = False,
    znear: float = 1e-3,
    impl: str = "auto",
) -> Tensor:
    """For each *uncovered* pixel, the triangle whose projection is nearest to the pixel centre.

    Only triangles within ``radius`` pixels count; since an uncovered centre lies outside every
    projected triangle, the nearest one is nearest to the silhouette of the union.
    Returns (B,H,W) long, -1 where none is within ``radius`` or the pixel is covered.
    """
    b, h, w = face.shape
    impl = resolve_impl(impl, screen.device)
    if impl == "numba":
        k = _kernels()
        scr = screen.detach().to(torch.float64).contiguous().numpy()
        tri = triangles.detach().to(torch.int64).contiguous().numpy()
        fc = face.detach().to(torch.int64).contiguous().numpy()
        near = k.nearest(scr, tri, fc, float(radius), bool(cull_backfaces), float(znear))
        return torch.from_numpy(near).to(torch.long)
    return _nearest_torch(screen.detach(), triangles, face, radius, cull_backfaces, znear)


# --------------------------------------------------------------------------------------------------
# vectorised torch implementation (any device)


def _triangle_setup(screen: Tensor, triangles: Tensor, cull_backfaces: bool, znear: float):
    """Per (batch, triangle): corner coordinates (B,F,3) u, v, z in float64, area and validity."""
    s = screen.to(torch.float64)
    tri = s[:, triangles]  # (B,F,3,3)
    u, v, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = (u[..., 1] - u[..., 0]) * (v[..., 2] - v[..., 0]) - (u[..., 2] - u[..., 0]) * (v[..., 1] - v[..., 0])
    valid = (z > znear).all(-1) & (area.abs() > 1e-12) & torch.isfinite(tri).all(-1).all(-1)
    if cull_backfaces:
        valid &= area < 0
    return u, v, z, area, valid


def _pixel_ranges(u: Tensor, v: Tensor, h: int, w: int, pad: float):
    """Integer pixel index ranges [j0, j1] x [i0, i1] whose centres lie in the padded bbox."""
    j0 = torch.ceil(u.amin(-1) - pad - 0.5).clamp(min=0)
    j1 = torch.floor(u.amax(-1) + pad - 0.5).clamp(max=w - 1)
    i0 = torch.ceil(v.amin(-1) - pad - 0.5).clamp(min=0)
    i1 = torch.floor(v.amax(-1) + pad - 0.5).clamp(max=h - 1)
    return j0.long(), j1.long(), i0.long(), i1.long()


def _candidates(valid: Tensor, j0, j1, i0, i1, max_per_chunk: int):
    """Yield chunks of (batch idx, face idx, row, col) for every pixel in every valid bbox."""
    nw = (j1 - j0 + 1).clamp(min=0)
    nh = (i1 - i0 + 1).clamp(min=0)
    count = torch.where(valid, nw * nh, torch.zeros_like(nw))
    bidx, fidx = torch.nonzero(count > 0, as_tuple=True)
    if bidx.numel() == 0:
        return
    cnt = count[bidx, fidx]
    csum = torch.cumsum(cnt, 0)
    start = 0
    n = bidx.numel()
    while start < n:
        base = int(csum[start - 1]) if start > 0 else 0
        # largest stop with csum[stop-1] - base <= max_per_chunk (at least one triangle)
        stop = int(torch.searchsorted(csum, torch.tensor(base + max_per_chunk, device=csum.device), right=True))
        stop = max(stop, start + 1)
        sb, sf, sc = bidx[start:stop], fidx[start:stop], cnt[start:stop]
        owner = torch.repeat_interleave(torch.arange(sb.numel(), device=sb.device), sc)
        first = torch.cumsum(sc, 0) - sc
        local = torch.arange(owner.numel(), device=sb.device) - first[owner]
        width = nw[sb, sf][owner]
        row = i0[sb, sf][owner] + local // width
        col = j0[sb, sf][owner] + local % width
        yield sb[owner], sf[owner], row, col
        start = stop


def _rasterize_torch(screen: Tensor, triangles: Tensor, h: int, w: int, cull: bool, znear: float,
                     max_per_chunk: int = 1 << 22) -> Tuple[Tensor, Tensor]:
    b = screen.shape[0]
    dev = screen.device
    u, v, z, area, valid = _triangle_setup(screen, triangles, cull, znear)
    j0, j1, i0, i1 = _pixel_ranges(u, v, h, w, 0.0)
    # key = (float32 depth bits << 32) | face: amin picks the nearest, ties -> lowest face index
    keys = torch.full((b * h * w,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
    for cb, cf, row, col in _candidates(valid, j0, j1, i0, i1, max_per_chunk):
        px = col.to(torch.float64) + 0.5
        py = row.to(torch.float64) + 0.5
        uu, vv, zz = u[cb, cf], v[cb, cf], z[cb, cf]  # (N,3)
        inv_a = 1.0 / area[cb, cf]
        l0 = ((uu[:, 1] - px) * (vv[:, 2] - py) - (uu[:, 2] - px) * (vv[:, 1] - py)) * inv_a
        l1 = ((uu[:, 2] - px) * (vv[:, 0] - py) - (uu[:, 0] - px) * (vv[:, 2] - py)) * inv_a
        l2 = ((uu[:, 0] - px) * (vv[:, 1] - py) - (uu[:, 1] - px) * (vv[:, 0] - py)) * inv_a
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        if not bool(inside.any()):
            continue
        q = l0 / zz[:, 0] + l1 / zz[:, 1] + l2 / zz[:, 2]
        depth = (1.0 / q).to(torch.float32)
        sel = inside & (depth > 0)
        dbits = depth[sel].view(torch.int32).to(torch.int64)
        key = (dbits << 32) | cf[sel]
        pix = (cb[sel] * h + row[sel]) * w + col[sel]
        keys.scatter_reduce_(0, pix, key, reduce="amin")
    hit = keys != torch.iinfo(torch.int64).max
    face = torch.where(hit, keys & 0xFFFFFFFF, torch.full_like(keys, -1))
    zbits = (keys >> 32).to(torch.int32)
    zbuf = torch.where(hit, zbits.view(torch.float32), torch.full_like(zbits, 0).to(torch.float32) + float("inf"))
    return face.view(b, h, w), zbuf.view(b, h, w)


def point_triangle_distance(px: Tensor, py: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Euclidean distance (pixels) from points (N,) to the filled triangles u, v (N,3); 0 inside."""
    d2 = None
    for a, c in ((0, 1), (1, 2), (2, 0)):
        ex, ey = u[:, c] - u[:, a], v[:, c] - v[:, a]
        wx, wy = px - u[:, a], py - v[:, a]
        t = ((wx * ex + wy * ey) / (ex * ex + ey * ey).clamp_min(1e-20)).clamp(0.0, 1.0)
        dx, dy = wx - t * ex, wy - t * ey
        e2 = dx * dx + dy * dy
        d2 = e2 if d2 is None else torch.minimum(d2, e2)
    area = (u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (u[:, 2] - u[:, 0]) * (v[:, 1] - v[:, 0])
    e0 = (u[:, 1] - px) * (v[:, 2] - py) - (u[:, 2] - px) * (v[:, 1] - py)
    e1 = (u[:, 2] - px) * (v[:, 0] - py) - (u[:, 0] - px) * (v[:, 2] - py)
    e2 = area - e0 - e1
    inside = (e0 * area >= 0) & (e1 * area >= 0) & (e2 * area >= 0)
    return torch.where(inside, torch.zeros_like(d2), d2.clamp_min(1e-12).sqrt())


def _nearest_torch(screen: Tensor, triangles: Tensor, face: Tensor, radius: float, cull: bool,
                   znear: float, max_per_chunk: int = 1 << 22) -> Tensor:
    b, h, w = face.shape
    dev = screen.device
    u, v, z, area, valid = _triangle_setup(screen, triangles, cull, znear)
    j0, j1, i0, i1 = _pixel_ranges(u, v, h, w, float(radius))
    covered = face.reshape(-1) >= 0
    keys = torch.full((b * h * w,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
    for cb, cf, row, col in _candidates(valid, j0, j1, i0, i1, max_per_chunk):
        pix = (cb * h + row) * w + col
        keep = ~covered[pix]
        if not bool(keep.any()):
            continue
        cb, cf, row, col, pix = cb[keep], cf[keep], row[keep], col[keep], pix[keep]
        d = point_triangle_distance(col.to(torch.float64) + 0.5, row.to(torch.float64) + 0.5,
                                    u[cb, cf], v[cb, cf]).to(torch.float32)
        sel = d <= radius
        key = (d[sel].view(torch.int32).to(torch.int64) << 32) | cf[sel]
        keys.scatter_reduce_(0, pix[sel], key, reduce="amin")
    hit = keys != torch.iinfo(torch.int64).max
    return torch.where(hit, keys & 0xFFFFFFFF, torch.full_like(keys, -1)).view(b, h, w)


__all__ = ["rasterize", "nearest_triangle", "numba_available", "resolve_impl", "point_triangle_distance"]
