"""numba CPU kernels of the renderer. Imported lazily (first CPU render), cached on disk.

All kernels work in float64 on (B,V,3) screen coordinates (u px, v px, z cm) and (F,3) int64
triangles. They are serial, ``nogil`` functions over a range of tasks (batch x row bands, or rows);
the wrappers below run the ranges on a small Python thread pool (``torch.get_num_threads()``
workers). No numba ``parallel=True``: its OpenMP workers spin after each region and starve
PyTorch's own threads (measured here: torch reductions 50x slower right after a parallel kernel on a
busy 2-core machine). Backward passes scatter into one gradient buffer per chunk (no atomics).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit


@njit(cache=True, inline="always")
def _corners(scr, tri, b, f):
    """Vertex ids and screen (u px, v px, z cm) of triangle f's three corners in batch item b."""
    a0 = tri[f, 0]
    a1 = tri[f, 1]
    a2 = tri[f, 2]
    return (a0, a1, a2, scr[b, a0, 0], scr[b, a0, 1], scr[b, a0, 2], scr[b, a1, 0], scr[b, a1, 1], scr[b, a1, 2],
            scr[b, a2, 0], scr[b, a2, 1], scr[b, a2, 2])


@njit(cache=True, inline="always")
def _edge_functions(u0, v0, u1, v1, u2, v2, px, py):
    """Twice the signed areas of the sub-triangles opposite each corner, seen from pixel (px, py)."""
    e0 = (u1 - px) * (v2 - py) - (u2 - px) * (v1 - py)
    e1 = (u2 - px) * (v0 - py) - (u0 - px) * (v2 - py)
    e2 = (u0 - px) * (v1 - py) - (u1 - px) * (v0 - py)
    return e0, e1, e2


@njit(cache=True, inline="always")
def _box(scr, tri, b, f, h, w, cull, znear, pad):
    """Integer pixel range (row0, row1, col0, col1) of triangle f in batch item b whose centres lie in its
    bbox padded by `pad` px; row0 > row1 = skip (behind znear, non-finite, degenerate, culled or off-image)."""
    a0, a1, a2, u0, v0, z0, u1, v1, z1, u2, v2, z2 = _corners(scr, tri, b, f)
    if not (z0 > znear and z1 > znear and z2 > znear):
        return 1, 0, 1, 0
    if not (math.isfinite(u0) and math.isfinite(u1) and math.isfinite(u2)
            and math.isfinite(v0) and math.isfinite(v1) and math.isfinite(v2)):
        return 1, 0, 1, 0
    area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
    if abs(area) <= 1e-12:
        return 1, 0, 1, 0
    if cull and area > 0:
        return 1, 0, 1, 0
    umin = min(u0, min(u1, u2)) - pad
    umax = max(u0, max(u1, u2)) + pad
    vmin = min(v0, min(v1, v2)) - pad
    vmax = max(v0, max(v1, v2)) + pad
    r0 = max(0.0, math.ceil(vmin - 0.5))
    r1 = min(h - 1.0, math.floor(vmax - 0.5))
    c0 = max(0.0, math.ceil(umin - 0.5))
    c1 = min(w - 1.0, math.floor(umax - 0.5))
    if r0 > r1 or c0 > c1:
        return 1, 0, 1, 0
    return int(r0), int(r1), int(c0), int(c1)


@njit(cache=True, nogil=True)
def _setup(scr, tri, h, w, cull, znear, pad, box):
    """Integer pixel ranges (row0,row1,col0,col1) per (batch, triangle); row0 > row1 = skip."""
    nb = scr.shape[0]
    nf = tri.shape[0]
    for b in range(nb):
        for f in range(nf):
            r0, r1, c0, c1 = _box(scr, tri, b, f, h, w, cull, znear, pad)
            box[b, f, 0] = r0
            box[b, f, 1] = r1
            box[b, f, 2] = c0
            box[b, f, 3] = c1


@njit(cache=True, nogil=True)
def _raster(scr, tri, cull, znear, band, face, zbuf, t0, t1):
    """Tasks t0..t1 of (batch item, row band): nearest triangle and its depth per pixel. Each band
    computes the triangles' pixel ranges itself (`_box`): no (B,F,4) range buffer to allocate and fill."""
    nb, h, w = face.shape
    nf = tri.shape[0]
    nbands = (h + band - 1) // band
    for t in range(t0, t1):
        b = t // nbands
        r0 = (t - b * nbands) * band
        r1 = min(h, r0 + band)
        for i in range(r0, r1):
            for j in range(w):
                face[b, i, j] = -1
                zbuf[b, i, j] = np.inf
        for f in range(nf):
            i0, i1, j0, j1 = _box(scr, tri, b, f, h, w, cull, znear, 0.0)
            if i0 > i1 or i1 < r0 or i0 >= r1:
                continue
            a0, a1, a2, u0, v0, z0, u1, v1, z1, u2, v2, z2 = _corners(scr, tri, b, f)
            inv_a = 1.0 / ((u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0))
            for i in range(max(i0, r0), min(i1, r1 - 1) + 1):
                py = i + 0.5
                for j in range(j0, j1 + 1):
                    px = j + 0.5
                    l0 = ((u1 - px) * (v2 - py) - (u2 - px) * (v1 - py)) * inv_a
                    if l0 < 0.0:
                        continue
                    l1 = ((u2 - px) * (v0 - py) - (u0 - px) * (v2 - py)) * inv_a
                    if l1 < 0.0:
                        continue
                    l2 = ((u0 - px) * (v1 - py) - (u1 - px) * (v0 - py)) * inv_a
                    if l2 < 0.0:
                        continue
                    q = l0 / z0 + l1 / z1 + l2 / z2
                    zz = np.float32(1.0 / q)
                    if zz > 0 and zz < zbuf[b, i, j]:
                        zbuf[b, i, j] = zz
                        face[b, i, j] = f


@njit(cache=True, inline="always")
def _seg_dist2(px, py, ax, ay, bx, by):
    ex = bx - ax
    ey = by - ay
    wx = px - ax
    wy = py - ay
    den = ex * ex + ey * ey
    t = 0.0
    if den > 1e-20:
        t = (wx * ex + wy * ey) / den
        t = min(1.0, max(0.0, t))
    dx = wx - t * ex
    dy = wy - t * ey
    return dx * dx + dy * dy


@njit(cache=True, nogil=True)
def _nearest(scr, tri, box, band, face, sat, radius, near, t0, t1):
    nb, h, w = face.shape
    nf = tri.shape[0]
    nbands = (h + band - 1) // band
    for t in range(t0, t1):
        b = t // nbands
        r0 = (t - b * nbands) * band
        r1 = min(h, r0 + band)
        best = np.full((r1 - r0, w), np.inf, dtype=np.float32)
        for i in range(r0, r1):
            for j in range(w):
                near[b, i, j] = -1
        for f in range(nf):
            i0 = box[b, f, 0]
            i1 = box[b, f, 1]
            if i0 > i1 or i1 < r0 or i0 >= r1:
                continue
            j0 = box[b, f, 2]
            j1 = box[b, f, 3]
            # skip triangles whose padded box holds no uncovered pixel (summed-area table)
            ra = max(i0, r0)
            rb = min(i1, r1 - 1) + 1
            if sat[b, rb, j1 + 1] - sat[b, ra, j1 + 1] - sat[b, rb, j0] + sat[b, ra, j0] == 0:
                continue
            a0, a1, a2, u0, v0, _z0, u1, v1, _z1, u2, v2, _z2 = _corners(scr, tri, b, f)
            for i in range(max(i0, r0), min(i1, r1 - 1) + 1):
                py = i + 0.5
                for j in range(j0, j1 + 1):
                    if face[b, i, j] >= 0:
                        continue
                    px = j + 0.5
                    d2 = min(_seg_dist2(px, py, u0, v0, u1, v1),
                             min(_seg_dist2(px, py, u1, v1, u2, v2), _seg_dist2(px, py, u2, v2, u0, v0)))
                    d = np.float32(math.sqrt(d2))
                    if d <= radius and d < best[i - r0, j]:
                        best[i - r0, j] = d
                        near[b, i, j] = f


@njit(cache=True, nogil=True)
def _interp_fwd(scr, attr, tri, face, image, depth, t0, t1):
    nb, h, w = face.shape
    nc = attr.shape[2]
    for r in range(t0, t1):
        b = r // h
        i = r - b * h
        py = i + 0.5
        for j in range(w):
            f = face[b, i, j]
            if f < 0:
                continue
            a0, a1, a2, u0, v0, z0, u1, v1, z1, u2, v2, z2 = _corners(scr, tri, b, f)
            px = j + 0.5
            e0, e1, e2 = _edge_functions(u0, v0, u1, v1, u2, v2, px, py)
            area = e0 + e1 + e2
            q0 = e0 / (area * z0)
            q1 = e1 / (area * z1)
            q2 = e2 / (area * z2)
            qs = q0 + q1 + q2
            w0 = q0 / qs
            w1 = q1 / qs
            w2 = q2 / qs
            depth[b, 0, i, j] = 1.0 / qs
            for c in range(nc):
                image[b, c, i, j] = w0 * attr[b, a0, c] + w1 * attr[b, a1, c] + w2 * attr[b, a2, c]


@njit(cache=True, nogil=True)
def _interp_bwd(scr, attr, tri, face, g_image, g_depth, g_scr, g_attr, t0, t1):
    nb, h, w = face.shape
    nc = attr.shape[2]
    for r in range(t0, t1):
        b = r // h
        i = r - b * h
        py = i + 0.5
        for j in range(w):
            f = face[b, i, j]
            if f < 0:
                continue
            a0, a1, a2, u0, v0, z0, u1, v1, z1, u2, v2, z2 = _corners(scr, tri, b, f)
            px = j + 0.5
            e0, e1, e2 = _edge_functions(u0, v0, u1, v1, u2, v2, px, py)
            area = e0 + e1 + e2
            l0 = e0 / area
            l1 = e1 / area
            l2 = e2 / area
            q0 = l0 / z0
            q1 = l1 / z1
            q2 = l2 / z2
            qs = q0 + q1 + q2
            w0 = q0 / qs
            w1 = q1 / qs
            w2 = q2 / qs
            gw0 = 0.0
            gw1 = 0.0
            gw2 = 0.0
            for c in range(nc):
                g = g_image[b, c, i, j]
                if g == 0.0:
                    continue
                g_attr[b, a0, c] += w0 * g
                g_attr[b, a1, c] += w1 * g
                g_attr[b, a2, c] += w2 * g
                gw0 += g * attr[b, a0, c]
                gw1 += g * attr[b, a1, c]
                gw2 += g * attr[b, a2, c]
            gd = g_depth[b, 0, i, j]
            if gw0 == 0.0 and gw1 == 0.0 and gw2 == 0.0 and gd == 0.0:
                continue
            # w_k = q_k / sum q ; depth = 1 / sum q
            sw = w0 * gw0 + w1 * gw1 + w2 * gw2
            gq0 = (gw0 - sw) / qs - gd / (qs * qs)
            gq1 = (gw1 - sw) / qs - gd / (qs * qs)
            gq2 = (gw2 - sw) / qs - gd / (qs * qs)
            # q_k = l_k / z_k
            gl0 = gq0 / z0
            gl1 = gq1 / z1
            gl2 = gq2 / z2
            g_scr[b, a0, 2] -= gq0 * q0 / z0
            g_scr[b, a1, 2] -= gq1 * q1 / z1
            g_scr[b, a2, 2] -= gq2 * q2 / z2
            # l_k = e_k / (e0 + e1 + e2)
            sl = l0 * gl0 + l1 * gl1 + l2 * gl2
            ge0 = (gl0 - sl) / area
            ge1 = (gl1 - sl) / area
            ge2 = (gl2 - sl) / area
            # e0 = (u1-px)(v2-py) - (u2-px)(v1-py), and cyclic
            g_scr[b, a1, 0] += ge0 * (v2 - py) - ge2 * (v0 - py)
            g_scr[b, a2, 1] += ge0 * (u1 - px) - ge1 * (u0 - px)
            g_scr[b, a2, 0] += ge1 * (v0 - py) - ge0 * (v1 - py)
            g_scr[b, a1, 1] += ge2 * (u0 - px) - ge0 * (u2 - px)
            g_scr[b, a0, 0] += ge2 * (v1 - py) - ge1 * (v2 - py)
            g_scr[b, a0, 1] += ge1 * (u2 - px) - ge2 * (u1 - px)


# --------------------------------------------------------------------------------------------------
# python-level wrappers (numpy in, numpy out)

_POOL = None
_POOL_KEY = (0, 0)  # (workers, pid): a forked child (DataLoader worker) must not reuse the parent's pool
_POOL_LOCK = threading.Lock()


def _workers() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def _pool(n: int) -> ThreadPoolExecutor:
    """The kernel thread pool (created lazily; recreated after fork or a thread-count change)."""
    global _POOL, _POOL_KEY
    key = (n, os.getpid())
    with _POOL_LOCK:
        if _POOL is None or _POOL_KEY != key:
            if _POOL is not None and _POOL_KEY[1] == key[1]:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="lh2face-render")
            _POOL_KEY = key
        return _POOL


def _chunks(n_tasks: int, n_chunks: int):
    n_chunks = max(1, min(n_tasks, n_chunks))
    edges = np.linspace(0, n_tasks, n_chunks + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _run(fn, args, n_tasks: int, per_worker: int = 4) -> int:
    """Run fn(*args, t0, t1) over [0, n_tasks) split into chunks on the thread pool; returns #chunks."""
    n = _workers()
    ranges = _chunks(n_tasks, n * per_worker if n > 1 else 1)
    if len(ranges) <= 1:
        for t0, t1 in ranges:
            fn(*args, t0, t1)
        return len(ranges)
    futures = [_pool(n).submit(fn, *args, t0, t1) for t0, t1 in ranges]
    for f in futures:
        f.result()
    return len(ranges)


def _band_rows(nb: int, h: int) -> int:
    tasks_wanted = 8 * _workers()
    bands = max(1, -(-tasks_wanted // max(nb, 1)))
    return max(1, -(-h // bands))


def raster(scr: np.ndarray, tri: np.ndarray, h: int, w: int, cull: bool, znear: float):
    """scr (B,V,3) f64, tri (F,3) i64 -> face (B,H,W) int64 (-1 bg), zbuf (B,H,W) f32 (inf bg)."""
    nb = scr.shape[0]
    face = np.empty((nb, h, w), dtype=np.int64)
    zbuf = np.empty((nb, h, w), dtype=np.float32)
    band = _band_rows(nb, h)
    _run(_raster, (scr, tri, bool(cull), float(znear), band, face, zbuf), nb * (-(-h // band)), per_worker=1)
    return face, zbuf


def nearest(scr, tri, face, radius: float, cull: bool, znear: float):
    """Nearest triangle within ``radius`` px for uncovered pixels; (B,H,W) int64, -1 none."""
    nb, h, w = face.shape
    box = np.empty((nb, tri.shape[0], 4), dtype=np.int64)
    _setup(scr, tri, h, w, cull, znear, float(radius), box)
    near = np.empty((nb, h, w), dtype=np.int64)
    band = _band_rows(nb, h)
    sat = np.zeros((nb, h + 1, w + 1), dtype=np.int64)
    sat[:, 1:, 1:] = (face < 0).cumsum(1).cumsum(2)
    _run(_nearest, (scr, tri, box, band, face, sat, np.float32(radius), near), nb * (-(-h // band)), per_worker=1)
    return near


def interp_forward(scr, attr, tri, face, depth_dtype=np.float64):
    """-> image (B,C,H,W) in attr's dtype, depth (B,1,H,W) in ``depth_dtype``; zeros on background.

    Arithmetic is float64 whatever the storage dtype.
    """
    nb, h, w = face.shape
    image = np.zeros((nb, attr.shape[2], h, w), dtype=attr.dtype)
    depth = np.zeros((nb, 1, h, w), dtype=depth_dtype)
    _run(_interp_fwd, (scr, attr, tri, face, image, depth), nb * h)
    return image, depth


def interp_backward(scr, attr, tri, face, g_image, g_depth):
    """-> grad screen (B,V,3) f64, grad attributes (B,V,C) in attr's dtype (one buffer per chunk, summed)."""
    nb, h, w = face.shape
    n = _workers()
    ranges = _chunks(nb * h, n)
    g_scr = np.zeros((len(ranges),) + scr.shape, dtype=np.float64)
    g_attr = np.zeros((len(ranges),) + attr.shape, dtype=attr.dtype)
    if len(ranges) == 1:
        _interp_bwd(scr, attr, tri, face, g_image, g_depth, g_scr[0], g_attr[0], *ranges[0])
    else:
        pool = _pool(n)
        futures = [
            pool.submit(_interp_bwd, scr, attr, tri, face, g_image, g_depth, g_scr[k], g_attr[k], t0, t1)
            for k, (t0, t1) in enumerate(ranges)
        ]
        for f in futures:
            f.result()
    if len(ranges) == 1:
        return g_scr[0], g_attr[0]
    return g_scr.sum(0), g_attr.sum(0)
