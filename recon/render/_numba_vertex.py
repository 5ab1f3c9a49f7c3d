"""numba CPU kernels for per-vertex work before rasterisation: vertex normals and SH shading.

Imported lazily (first CPU call), cached on disk. Each kernel handles a range of batch items [t0, t1)
and writes only those items, so ranges run on the renderer's thread pool without atomics
(``_numba_kernels._run``). Arithmetic is float64 whatever the storage dtype.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._numba_kernels import _run

# real SH basis constants (recon.lighting) and clamped-cosine band factors / pi
_C0 = 0.5 / math.sqrt(math.pi)
_C1 = math.sqrt(3.0 / (4.0 * math.pi))
_C2 = 0.5 * math.sqrt(15.0 / math.pi)
_C20 = 0.25 * math.sqrt(5.0 / math.pi)
_C22 = 0.25 * math.sqrt(15.0 / math.pi)
_A1 = 2.0 / 3.0
_A2 = 0.25


@njit(cache=True, nogil=True)
def _normals_fwd(v, tri, m, n, eps, t0, t1):
    """m = sum over faces of (v1 - v0) x (v2 - v0) per corner vertex (float64); n = m / max(|m|, eps)."""
    nf = tri.shape[0]
    nv = v.shape[1]
    for b in range(t0, t1):
        for i in range(nv):
            m[b, i, 0] = 0.0
            m[b, i, 1] = 0.0
            m[b, i, 2] = 0.0
        for f in range(nf):
            a0 = tri[f, 0]
            a1 = tri[f, 1]
            a2 = tri[f, 2]
            x0 = np.float64(v[b, a0, 0])
            y0 = np.float64(v[b, a0, 1])
            z0 = np.float64(v[b, a0, 2])
            ax = v[b, a1, 0] - x0
            ay = v[b, a1, 1] - y0
            az = v[b, a1, 2] - z0
            bx = v[b, a2, 0] - x0
            by = v[b, a2, 1] - y0
            bz = v[b, a2, 2] - z0
            cx = ay * bz - az * by
            cy = az * bx - ax * bz
            cz = ax * by - ay * bx
            m[b, a0, 0] += cx
            m[b, a0, 1] += cy
            m[b, a0, 2] += cz
            m[b, a1, 0] += cx
            m[b, a1, 1] += cy
            m[b, a1, 2] += cz
            m[b, a2, 0] += cx
            m[b, a2, 1] += cy
            m[b, a2, 2] += cz
        for i in range(nv):
            d = max(math.sqrt(m[b, i, 0] ** 2 + m[b, i, 1] ** 2 + m[b, i, 2] ** 2), eps)
            n[b, i, 0] = m[b, i, 0] / d
            n[b, i, 1] = m[b, i, 1] / d
            n[b, i, 2] = m[b, i, 2] / d


@njit(cache=True, nogil=True)
def _normals_bwd(v, tri, m, g, gv, eps, t0, t1):
    """Gradient of <g, n> w.r.t. the vertices (gv, zero-initialised by the caller)."""
    nf = tri.shape[0]
    nv = v.shape[1]
    gm = np.empty((nv, 3), dtype=np.float64)
    for b in range(t0, t1):
        for i in range(nv):
            mx = m[b, i, 0]
            my = m[b, i, 1]
            mz = m[b, i, 2]
            d = math.sqrt(mx * mx + my * my + mz * mz)
            gx = np.float64(g[b, i, 0])
            gy = np.float64(g[b, i, 1])
            gz = np.float64(g[b, i, 2])
            if d > eps:  # n = m / |m|: dn/dm = (I - n n^T) / |m|
                dot = (mx * gx + my * gy + mz * gz) / (d * d)
                gm[i, 0] = (gx - mx * dot) / d
                gm[i, 1] = (gy - my * dot) / d
                gm[i, 2] = (gz - mz * dot) / d
            else:  # n = m / eps
                gm[i, 0] = gx / eps
                gm[i, 1] = gy / eps
                gm[i, 2] = gz / eps
        for f in range(nf):
            a0 = tri[f, 0]
            a1 = tri[f, 1]
            a2 = tri[f, 2]
            Gx = gm[a0, 0] + gm[a1, 0] + gm[a2, 0]
            Gy = gm[a0, 1] + gm[a1, 1] + gm[a2, 1]
            Gz = gm[a0, 2] + gm[a1, 2] + gm[a2, 2]
            x0 = np.float64(v[b, a0, 0])
            y0 = np.float64(v[b, a0, 1])
            z0 = np.float64(v[b, a0, 2])
            ax = v[b, a1, 0] - x0
            ay = v[b, a1, 1] - y0
            az = v[b, a1, 2] - z0
            bx = v[b, a2, 0] - x0
            by = v[b, a2, 1] - y0
            bz = v[b, a2, 2] - z0
            # G . (a x b) = a . (b x G) = b . (G x a)
            pax = by * Gz - bz * Gy
            pay = bz * Gx - bx * Gz
            paz = bx * Gy - by * Gx
            pbx = Gy * az - Gz * ay
            pby = Gz * ax - Gx * az
            pbz = Gx * ay - Gy * ax
            gv[b, a1, 0] += pax
            gv[b, a1, 1] += pay
            gv[b, a1, 2] += paz
            gv[b, a2, 0] += pbx
            gv[b, a2, 1] += pby
            gv[b, a2, 2] += pbz
            gv[b, a0, 0] -= pax + pbx
            gv[b, a0, 1] -= pay + pby
            gv[b, a0, 2] -= paz + pbz


@njit(cache=True, nogil=True, inline="always")
def _basis(x, y, z, out):
    out[0] = _C0
    out[1] = _C1 * y
    out[2] = _C1 * z
    out[3] = _C1 * x
    out[4] = _C2 * x * y
    out[5] = _C2 * y * z
    out[6] = _C20 * (3.0 * z * z - 1.0)
    out[7] = _C2 * x * z
    out[8] = _C22 * (x * x - y * y)


@njit(cache=True, nogil=True)
def _shading_fwd(n, light, alb, out, col, t0, t1):
    """out[b,v,c] = sum_k A_k Y_k(n[b,v]) light[b,c,k]; col = clamp(alb * out, 0, 1) (when alb has rows)."""
    nv = n.shape[1]
    wl = np.empty((3, 9), dtype=np.float64)
    y = np.empty(9, dtype=np.float64)
    for b in range(t0, t1):
        lb = b if light.shape[0] > 1 else 0
        for c in range(3):
            for k in range(9):
                a = 1.0 if k == 0 else (_A1 if k < 4 else _A2)
                wl[c, k] = a * light[lb, c, k]
        for i in range(nv):
            _basis(np.float64(n[b, i, 0]), np.float64(n[b, i, 1]), np.float64(n[b, i, 2]), y)
            for c in range(3):
                s = 0.0
                for k in range(9):
                    s += wl[c, k] * y[k]
                out[b, i, c] = s
                if alb.shape[0] > 0:
                    col[b, i, c] = min(max(alb[b, i, c] * out[b, i, c], 0.0), 1.0)


@njit(cache=True, nogil=True)
def _shading_bwd(n, light, g, alb, shade, gc, gn, gl, ga, t0, t1):
    """gn (B,V,3), gl (B,3,9) and ga (B,V,3) (zeroed by the caller) of <g, shading> +
    <gc, clamp(alb * shading, 0, 1)> (the colour term only when gc has rows; the clamp passes the
    gradient where 0 <= alb * shading <= 1, as torch.clamp does)."""
    nv = n.shape[1]
    wl = np.empty((3, 9), dtype=np.float64)
    y = np.empty(9, dtype=np.float64)
    acc = np.empty((3, 9), dtype=np.float64)
    for b in range(t0, t1):
        lb = b if light.shape[0] > 1 else 0
        for c in range(3):
            for k in range(9):
                a = 1.0 if k == 0 else (_A1 if k < 4 else _A2)
                wl[c, k] = a * light[lb, c, k]
                acc[c, k] = 0.0
        for i in range(nv):
            x = np.float64(n[b, i, 0])
            yy = np.float64(n[b, i, 1])
            z = np.float64(n[b, i, 2])
            _basis(x, yy, z, y)
            g0 = np.float64(g[b, i, 0]) if g.shape[0] > 0 else 0.0
            g1 = np.float64(g[b, i, 1]) if g.shape[0] > 0 else 0.0
            g2 = np.float64(g[b, i, 2]) if g.shape[0] > 0 else 0.0
            if gc.shape[0] > 0:
                for c in range(3):
                    a = np.float64(alb[b, i, c])
                    sc = np.float64(shade[b, i, c])
                    x0 = a * sc
                    if x0 >= 0.0 and x0 <= 1.0:
                        gg = np.float64(gc[b, i, c])
                        ga[b, i, c] += gg * sc
                        if c == 0:
                            g0 += gg * a
                        elif c == 1:
                            g1 += gg * a
                        else:
                            g2 += gg * a
            for k in range(9):
                acc[0, k] += y[k] * g0
                acc[1, k] += y[k] * g1
                acc[2, k] += y[k] * g2
            gb1 = g0 * wl[0, 1] + g1 * wl[1, 1] + g2 * wl[2, 1]
            gb2 = g0 * wl[0, 2] + g1 * wl[1, 2] + g2 * wl[2, 2]
            gb3 = g0 * wl[0, 3] + g1 * wl[1, 3] + g2 * wl[2, 3]
            gb4 = g0 * wl[0, 4] + g1 * wl[1, 4] + g2 * wl[2, 4]
            gb5 = g0 * wl[0, 5] + g1 * wl[1, 5] + g2 * wl[2, 5]
            gb6 = g0 * wl[0, 6] + g1 * wl[1, 6] + g2 * wl[2, 6]
            gb7 = g0 * wl[0, 7] + g1 * wl[1, 7] + g2 * wl[2, 7]
            gb8 = g0 * wl[0, 8] + g1 * wl[1, 8] + g2 * wl[2, 8]
            gn[b, i, 0] += _C1 * gb3 + _C2 * (yy * gb4 + z * gb7) + 2.0 * _C22 * x * gb8
            gn[b, i, 1] += _C1 * gb1 + _C2 * (x * gb4 + z * gb5) - 2.0 * _C22 * yy * gb8
            gn[b, i, 2] += _C1 * gb2 + _C2 * (yy * gb5 + x * gb7) + 6.0 * _C20 * z * gb6
        for c in range(3):
            for k in range(9):
                gl[b, c, k] += (1.0 if k == 0 else (_A1 if k < 4 else _A2)) * acc[c, k]


# --------------------------------------------------------------------------------------------------
# wrappers (numpy in, numpy out)


def normals_forward(v: np.ndarray, tri: np.ndarray, eps: float):
    """v (B,V,3) f32/f64, tri (F,3) i64 -> (m (B,V,3) f64 unnormalised sums, n (B,V,3) in v's dtype)."""
    m = np.empty(v.shape, dtype=np.float64)
    n = np.empty(v.shape, dtype=v.dtype)
    _run(_normals_fwd, (v, tri, m, n, float(eps)), v.shape[0], per_worker=1)
    return m, n


def normals_backward(v: np.ndarray, tri: np.ndarray, m: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """-> gradient w.r.t. v (B,V,3) in v's dtype (scattered per face in that dtype, like index_add)."""
    gv = np.zeros(v.shape, dtype=v.dtype)
    _run(_normals_bwd, (v, tri, m, g, gv, float(eps)), v.shape[0], per_worker=1)
    return gv


def _none(like: np.ndarray) -> np.ndarray:
    return np.zeros((0,) + like.shape[1:], dtype=like.dtype)


def shading_forward(n: np.ndarray, light: np.ndarray, alb: np.ndarray | None = None):
    """n (B,V,3), light (B|1,3,9), alb (B,V,3) or None -> (shading (B,V,3) in n's dtype,
    colour clamp(alb * shading, 0, 1) or None)."""
    out = np.empty(n.shape, dtype=n.dtype)
    col = np.empty(n.shape, dtype=n.dtype) if alb is not None else _none(n)
    _run(_shading_fwd, (n, light, _none(n) if alb is None else alb, out, col), n.shape[0], per_worker=1)
    return out, (col if alb is not None else None)


def shading_backward(n: np.ndarray, light: np.ndarray, g: np.ndarray | None, alb: np.ndarray | None = None,
                     shade: np.ndarray | None = None, gc: np.ndarray | None = None):
    """g: grad of the shading (or None), gc: grad of the colour (or None; needs alb and shade) ->
    (grad normals (B,V,3) in n's dtype, grad light (B,3,9) f64 per batch item, grad albedo (B,V,3) or None)."""
    gn = np.zeros(n.shape, dtype=n.dtype)
    gl = np.zeros((n.shape[0], 3, 9), dtype=np.float64)
    ga = np.zeros(n.shape, dtype=n.dtype) if gc is not None else _none(gn)
    e = _none(n)
    _run(_shading_bwd, (n, light, e if g is None else g, e if alb is None else alb, e if shade is None else shade,
                        e if gc is None else gc, gn, gl, ga), n.shape[0], per_worker=1)
    return gn, gl, (ga if gc is not None else None)


@njit(cache=True, nogil=True)
def _project_fwd(v, K, out, t0, t1):
    """out[b,i] = (u, v, z): u = x/z K00 + y/z K01 + K02, v = y/z K11 + K12, in the inputs' dtype and in
    the order of recon.render.base.project_vertices (so float32 results are bit-identical to it)."""
    nv = v.shape[1]
    for b in range(t0, t1):
        k00 = K[b, 0, 0]
        k01 = K[b, 0, 1]
        k02 = K[b, 0, 2]
        k11 = K[b, 1, 1]
        k12 = K[b, 1, 2]
        for i in range(nv):
            z = v[b, i, 2]
            xz = v[b, i, 0] / z
            yz = v[b, i, 1] / z
            out[b, i, 0] = xz * k00 + yz * k01 + k02
            out[b, i, 1] = yz * k11 + k12
            out[b, i, 2] = z


@njit(cache=True, nogil=True)
def _project_bwd(v, K, g, gv, t0, t1):
    nv = v.shape[1]
    for b in range(t0, t1):
        k00 = np.float64(K[b, 0, 0])
        k01 = np.float64(K[b, 0, 1])
        k11 = np.float64(K[b, 1, 1])
        for i in range(nv):
            x = np.float64(v[b, i, 0])
            y = np.float64(v[b, i, 1])
            z = np.float64(v[b, i, 2])
            gu = np.float64(g[b, i, 0])
            gw = np.float64(g[b, i, 1])
            iz = 1.0 / z
            gv[b, i, 0] = gu * k00 * iz
            gv[b, i, 1] = (gu * k01 + gw * k11) * iz
            gv[b, i, 2] = g[b, i, 2] - (gu * (k00 * x + k01 * y) + gw * k11 * y) * iz * iz


def project_forward(v: np.ndarray, K: np.ndarray) -> np.ndarray:
    """v (B,V,3) camera points, K (B,3,3) in v's dtype -> screen (B,V,3) (u px, v px, z) in v's dtype."""
    out = np.empty(v.shape, dtype=v.dtype)
    _run(_project_fwd, (v, K, out), v.shape[0], per_worker=1)
    return out


def project_backward(v: np.ndarray, K: np.ndarray, g: np.ndarray) -> np.ndarray:
    """-> gradient w.r.t. v (B,V,3) in v's dtype."""
    gv = np.empty(v.shape, dtype=v.dtype)
    _run(_project_bwd, (v, K, g, gv), v.shape[0], per_worker=1)
    return gv
