"""von Mises-Fisher maths on the sphere S^{n-1}, in torch, on any device, without host synchronisation.

Notation (DESIGN.md section 2): order v = n/2 - 1,

    log C_n(kappa) = v log kappa - (v + 1) log(2 pi) - log I_v(kappa)      (vMF normaliser)
    A_n(kappa)     = I_{v+1}(kappa) / I_v(kappa)                           (mean resultant length)
    d/dkappa log C_n(kappa) = -A_n(kappa),
    d/dkappa A_n(kappa)     = 1 - A_n^2 - (n - 1) A_n / kappa.

How log I_v(x) is computed (every step elementwise, no data-dependent Python branching):

1. Shift the order up by an integer K so that V = v + K >= 50 (K = 0 when v is already large).
2. At order V use the uniform asymptotic (Debye) expansion (DLMF 10.41.3, polynomials u_k from the
   recurrence DLMF 10.41.10), which for V >= 50 and 9 terms is accurate to ~1e-15 relative for every x:
       log I_V(V z) = V eta - log(2 pi V)/2 - log(1 + z^2)/4 + log sum_k u_k(t) / V^k,
       t = 1/sqrt(1 + z^2), eta = sqrt(1 + z^2) + log(z / (1 + sqrt(1 + z^2))).
   The same expansion at V + 1 gives the ratio r_V = I_{V+1}/I_V.
3. Walk the ratio down with the backward recurrence r_{j-1} = 1 / (2 j / x + r_j) (DLMF 10.29.1), which
   contracts errors (|d r_{j-1}/d r_j| = r_{j-1}^2 < 1), accumulating log I_v = log I_V - sum log r_j.
   The last ratio is A_n itself.

All arithmetic runs in float64 internally (a few elementwise ops per sample) and the result is cast
back to the input dtype; half/bfloat16 inputs are therefore returned rounded, so keep the vMF terms of
a loss in float32 or wider.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Dict, List, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "log_bessel_iv",
    "log_normalizer",
    "log_normalizer_at_zero",
    "mean_resultant_length",
    "bessel_ratio",
]

Order = Union[int, float, torch.Tensor]

_V_MIN = 50.0  # smallest order at which the Debye expansion is used directly
_N_TERMS = 9  # u_0 .. u_8
_KAPPA_FLOOR = 1e-30  # kappa is clamped from below (log kappa must stay finite)


@lru_cache(maxsize=1)
def _debye_polynomials() -> Tuple[Tuple[float, ...], ...]:
    """Coefficients (ascending powers of t) of u_0..u_{N-1} from DLMF 10.41.10, exact rationals -> float.

    u_0 = 1, u_{k+1}(t) = t^2 (1 - t^2) u_k'(t) / 2 + (1/8) int_0^t (1 - 5 s^2) u_k(s) ds.
    """
    polys: List[List[Fraction]] = [[Fraction(1)]]
    for _ in range(_N_TERMS - 1):
        u = polys[-1]
        deg = len(u) - 1
        out = [Fraction(0)] * (deg + 4)
        # t^2 (1 - t^2) u'(t) / 2
        for p in range(1, deg + 1):
            c = u[p] * p / 2
            out[p + 1] += c
            out[p + 3] -= c
        # (1/8) int_0^t (1 - 5 s^2) u(s) ds
        for p in range(deg + 1):
            out[p + 1] += u[p] / (8 * (p + 1))
            out[p + 3] -= 5 * u[p] / (8 * (p + 3))
        polys.append(out)
    return tuple(tuple(float(c) for c in u) for u in polys)


_MATRIX_CACHE: Dict[Tuple[str, torch.dtype], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _debye_tensors(device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P (D+1, N) with u_k(t) = sum_p P[p, k] t^p, exponents 0..D, exponents 0..N-1), cached per device.

    The first call on a device uploads these constants once; later calls copy nothing from the host.
    """
    key = (str(device), dtype)
    if key not in _MATRIX_CACHE:
        polys = _debye_polynomials()
        deg = max(len(u) for u in polys)
        mat = torch.zeros(deg, len(polys), dtype=dtype)
        for k, u in enumerate(polys):
            mat[: len(u), k] = torch.tensor(u, dtype=dtype)
        _MATRIX_CACHE[key] = (
            mat.to(device),
            torch.arange(deg, dtype=dtype).to(device),
            torch.arange(len(polys), dtype=dtype).to(device),
        )
    return _MATRIX_CACHE[key]


def _log_iv_debye(order: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log I_order(x) by the uniform asymptotic expansion; accurate for order >= 50 (float64 tensors).

    Vectorised: the powers of t and of 1/order are formed in one op each and the polynomials u_k(t)
    in one matrix product, so the cost is a handful of kernels whatever the number of terms.
    """
    mat, t_exp, k_exp = _debye_tensors(x.device, x.dtype)
    z = x / order
    w = torch.sqrt(1.0 + z * z)
    t = 1.0 / w
    eta = w + torch.log(z) - torch.log1p(w)
    u = torch.pow(t.unsqueeze(-1), t_exp) @ mat  # (..., N): u_k(t)
    series = (u * torch.pow((1.0 / order).unsqueeze(-1), k_exp)).sum(-1)
    return order * eta - 0.5 * torch.log(2.0 * math.pi * order) - 0.5 * torch.log(w) + torch.log(series)


def _shift(n: Order) -> int:
    """Integer K with v + K >= _V_MIN for the given n (fixed worst case when n is a tensor)."""
    if isinstance(n, torch.Tensor):
        return int(math.ceil(_V_MIN + 1.0))  # any n >= 0: v >= -1
    return max(0, int(math.ceil(_V_MIN - (float(n) / 2.0 - 1.0))))


def _check_n(n: Order) -> None:
    if isinstance(n, torch.Tensor):
        if n.is_floating_point() or n.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8):
            return
        raise TypeError(f"vmf: dimension n must be a number or a numeric tensor, got dtype {n.dtype}")
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"vmf: dimension n must be an int (the sphere S^(n-1) lives in R^n), got {n!r}")
    if n < 2:
        raise ValueError(f"vmf: dimension n must be >= 2, got {n}")


def _log_iv_and_ratio(v: Order, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log I_v(x), I_{v+1}(x)/I_v(x)) in float64; `v` is the order v = n/2 - 1 (number or tensor)."""
    K = _shift(2.0 * v + 2.0) if not isinstance(v, torch.Tensor) else _shift(v)
    x = x.to(torch.float64).clamp_min(_KAPPA_FLOOR)
    if isinstance(v, torch.Tensor):
        vv = v.to(device=x.device, dtype=torch.float64)
    else:
        vv = torch.full((), float(v), dtype=torch.float64, device=x.device)  # a fill, no host copy
    V = vv + K
    V, x = torch.broadcast_tensors(V, x)
    both = _log_iv_debye(torch.stack([V, V + 1.0], -1), x.unsqueeze(-1))  # orders V and V + 1 at once
    log_iv = both[..., 0]
    ratio = torch.exp(both[..., 1] - log_iv)  # r_V = I_{V+1} / I_V
    for k in range(K):
        j = V - k  # r_{j-1} = I_j / I_{j-1} = 1 / (2 j / x + r_j)
        ratio = 1.0 / (2.0 * j / x + ratio)
        log_iv = log_iv - torch.log(ratio)
    return log_iv, ratio


def _order(n: Order) -> Order:
    return n / 2.0 - 1.0 if not isinstance(n, torch.Tensor) else n.to(torch.float64) / 2.0 - 1.0


def log_bessel_iv(v: Order, x: torch.Tensor) -> torch.Tensor:
    """log I_v(x), modified Bessel function of the first kind, for order v >= 0 and x > 0.

    v: number or tensor broadcastable with x; x: tensor (any shape), float32/float64, any device.
    Returns a tensor of the broadcast shape in x's dtype (float64 when x is an integer tensor).
    Not differentiable in v; in x its gradient is I_v'/I_v = v/x + I_{v+1}/I_v.
    """
    x = torch.as_tensor(x)
    if isinstance(v, (int, float)) and v < 0:
        raise ValueError(f"log_bessel_iv: order v must be >= 0, got {v}")
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    return _LogBesselIv.apply(x, v).to(out_dtype)


class _LogBesselIv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, v: Order) -> torch.Tensor:  # type: ignore[override]
        log_iv, ratio = _log_iv_and_ratio(v, x)
        ctx.v = v
        ctx.save_for_backward(x, ratio)
        return log_iv.to(x.dtype) if x.is_floating_point() else log_iv

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, ratio = ctx.saved_tensors
        v = ctx.v
        vv = v.to(device=x.device, dtype=torch.float64) if isinstance(v, torch.Tensor) else float(v)
        d = vv / x.to(torch.float64).clamp_min(_KAPPA_FLOOR) + ratio
        g = grad * d.to(grad.dtype)
        return _sum_to(g, x.shape), None


def _sum_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to `shape`."""
    if g.shape == shape:
        return g
    while g.dim() > len(shape):
        g = g.sum(0)
    for i, s in enumerate(shape):
        if s == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdim=True)
    return g


class _Ratio(torch.autograd.Function):
    """A_n(kappa) as an autograd node; `ratio` may be passed in when already computed."""

    @staticmethod
    def forward(ctx, kappa: torch.Tensor, ratio: torch.Tensor | None, n: Order) -> torch.Tensor:  # type: ignore[override]
        if ratio is None:
            _, ratio = _log_iv_and_ratio(_order(n), kappa)
        ctx.n = n
        ctx.save_for_backward(kappa, ratio)
        return ratio.to(kappa.dtype, copy=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        kappa, a = ctx.saved_tensors
        n = ctx.n
        nn_ = n.to(device=kappa.device, dtype=torch.float64) if isinstance(n, torch.Tensor) else float(n)
        k64 = kappa.to(torch.float64).clamp_min(_KAPPA_FLOOR)
        d = 1.0 - a * a - (nn_ - 1.0) * a / k64  # dA/dkappa
        return _sum_to(grad * d.to(grad.dtype), kappa.shape), None, None


class _LogNormalizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kappa: torch.Tensor, n: Order) -> torch.Tensor:  # type: ignore[override]
        v = _order(n)
        log_iv, ratio = _log_iv_and_ratio(v, kappa)
        k64 = kappa.to(torch.float64).clamp_min(_KAPPA_FLOOR)
        if isinstance(v, torch.Tensor):
            v = v.to(k64.device)
        out = v * torch.log(k64) - (v + 1.0) * math.log(2.0 * math.pi) - log_iv
        ctx.n = n
        ctx.save_for_backward(kappa, ratio)
        return out.to(kappa.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        kappa, ratio = ctx.saved_tensors
        a = _Ratio.apply(kappa, ratio, ctx.n)  # -A_n, differentiable once more (double backward)
        return _sum_to(-grad * a.to(grad.dtype), kappa.shape), None


def _prepare(kappa: torch.Tensor, n: Order, who: str) -> torch.Tensor:
    if not isinstance(kappa, torch.Tensor):
        kappa = torch.as_tensor(kappa, dtype=torch.float64)
    if not kappa.is_floating_point():
        kappa = kappa.to(torch.float64)
    _check_n(n)
    return kappa


def log_normalizer(kappa: torch.Tensor, n: Order) -> torch.Tensor:
    """log C_n(kappa), the log normaliser of the vMF density on S^{n-1} in R^n.

    kappa: concentration(s) > 0, any shape, float32/float64, any device (values below 1e-30 are
    clamped); n: int >= 2 or a tensor broadcastable with kappa. Returns the broadcast shape in kappa's
    dtype. Gradient: exactly -A_n(kappa) (a custom autograd Function; double backward supported).
    On a CUDA device the first call uploads a small constant table once; no call synchronises the host.
    """
    kappa = _prepare(kappa, n, "log_normalizer")
    return _LogNormalizer.apply(kappa, n)


def log_normalizer_at_zero(n: int) -> float:
    """lim_{kappa->0} log C_n(kappa) = log Gamma(n/2) - log 2 - (n/2) log pi (minus log |S^{n-1}|)."""
    _check_n(n)
    return math.lgamma(n / 2.0) - math.log(2.0) - (n / 2.0) * math.log(math.pi)


def mean_resultant_length(kappa: torch.Tensor, n: Order) -> torch.Tensor:
    """A_n(kappa) = I_{n/2}(kappa) / I_{n/2-1}(kappa) in (0, 1): the expected cosine E[mu . x] under vMF.

    Same shapes/dtypes/devices as `log_normalizer`; differentiable once (dA/dkappa = 1 - A^2 - (n-1) A/kappa).
    """
    kappa = _prepare(kappa, n, "mean_resultant_length")
    return _Ratio.apply(kappa, None, n)


def bessel_ratio(v: Order, x: torch.Tensor) -> torch.Tensor:
    """I_{v+1}(x) / I_v(x) for order v >= 0 (not differentiable); A_n(kappa) = bessel_ratio(n/2 - 1, kappa)."""
    x = torch.as_tensor(x)
    _, r = _log_iv_and_ratio(v, x)
    return r.to(x.dtype) if x.is_floating_point() else r
