"""recognition.vmf against mpmath (arbitrary precision), closed forms, and finite differences."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from recognition.vmf import (
    bessel_ratio,
    log_bessel_iv,
    log_normalizer,
    log_normalizer_at_zero,
    mean_resultant_length,
)

NS = [3, 4, 5, 9, 16, 17, 33, 64, 100, 101, 128, 255, 256, 257, 512, 777, 1000, 1024]
KAPPAS = [1e-3, 3e-3, 0.02, 0.1, 0.5, 1.0, 2.5, 7.0, 12.0, 30.0, 64.0, 100.0, 200.0, 450.0, 1000.0, 3000.0, 1e4]


def _mp_log_c_exact(kappa, n: int):
    v = mpmath.mpf(n) / 2 - 1
    k = mpmath.mpf(kappa)
    return v * mpmath.log(k) - (v + 1) * mpmath.log(2 * mpmath.pi) - mpmath.log(mpmath.besseli(v, k))


def _mp_log_c(kappa: float, n: int) -> float:
    with mpmath.workdps(40):
        return float(_mp_log_c_exact(kappa, n))


def _mp_ratio(kappa: float, n: int) -> float:
    with mpmath.workdps(40):
        v = mpmath.mpf(n) / 2 - 1
        k = mpmath.mpf(kappa)
        return float(mpmath.besseli(v + 1, k) / mpmath.besseli(v, k))


@pytest.mark.parametrize("n", NS)
def test_log_normalizer_and_ratio_match_mpmath_float64(n: int) -> None:
    k = torch.tensor(KAPPAS, dtype=torch.float64)
    got_c = log_normalizer(k, n).numpy()
    got_a = mean_resultant_length(k, n).numpy()
    ref_c = np.array([_mp_log_c(x, n) for x in KAPPAS])
    ref_a = np.array([_mp_ratio(x, n) for x in KAPPAS])
    # log C_n crosses zero for some (n, kappa): relative error is taken against max(|ref|, 1).
    rel_c = np.abs(got_c - ref_c) / np.maximum(np.abs(ref_c), 1.0)
    rel_a = np.abs(got_a - ref_a) / ref_a
    assert rel_c.max() <= 1e-6, (n, rel_c.max())
    assert rel_a.max() <= 1e-6, (n, rel_a.max())
    # in practice the implementation is far better than the requirement
    assert rel_c.max() <= 1e-11 and rel_a.max() <= 1e-10


def test_design_reference_values() -> None:
    cases = [(256, 1.0, 344.33), (256, 64.0, 336.56), (256, 200.0, 280.40), (512, 16.0, 867.72), (512, 100.0, 858.38)]
    for dtype in (torch.float32, torch.float64):
        for n, kappa, ref in cases:
            got = float(log_normalizer(torch.tensor(kappa, dtype=dtype), n))
            assert abs(got - ref) < 0.006, (n, kappa, got, ref)


def test_closed_form_n3() -> None:
    # On S^2: C_3(k) = k / (4 pi sinh k); A_3(k) = coth k - 1/k.
    k = torch.tensor([0.05, 0.7, 3.0, 20.0, 300.0], dtype=torch.float64)
    log_sinh = k + torch.log1p(-torch.exp(-2 * k)) - math.log(2.0)
    ref_c = torch.log(k) - math.log(4 * math.pi) - log_sinh
    ref_a = 1.0 / torch.tanh(k) - 1.0 / k
    torch.testing.assert_close(log_normalizer(k, 3), ref_c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean_resultant_length(k, 3), ref_a, rtol=1e-10, atol=0)


def test_log_bessel_iv_matches_torch_i0_i1() -> None:
    x = torch.tensor([1e-3, 0.3, 2.0, 15.0, 80.0, 600.0], dtype=torch.float64)
    torch.testing.assert_close(log_bessel_iv(0, x), torch.log(torch.special.i0e(x)) + x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_bessel_iv(1, x), torch.log(torch.special.i1e(x)) + x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bessel_ratio(0, x), torch.special.i1e(x) / torch.special.i0e(x), rtol=1e-11, atol=0)


def test_limit_at_zero_is_minus_log_sphere_area() -> None:
    for n in (3, 8, 256, 1024):
        got = float(log_normalizer(torch.tensor(1e-9, dtype=torch.float64), n))
        assert abs(got - log_normalizer_at_zero(n)) < 1e-6
    # |S^2| = 4 pi
    assert abs(log_normalizer_at_zero(3) + math.log(4 * math.pi)) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_over_the_whole_range(dtype: torch.dtype) -> None:
    k = torch.logspace(-3, 4, 300, dtype=dtype)
    for n in (3, 4, 7, 64, 255, 256, 600, 1024):
        c = log_normalizer(k, n)
        a = mean_resultant_length(k, n)
        assert c.dtype == dtype and a.dtype == dtype
        assert torch.isfinite(c).all() and torch.isfinite(a).all()
        assert (a > 0).all() and (a < 1).all()
        # A_n increases with kappa; log C_n decreases (its derivative is -A_n < 0)
        assert (a[1:] >= a[:-1]).all()
        assert (c[1:] <= c[:-1] + 1e-5 * c.abs().max()).all()


def test_float32_agrees_with_float64() -> None:
    k = torch.logspace(-3, 4, 50, dtype=torch.float64)
    for n in (3, 256, 1024):
        c64, c32 = log_normalizer(k, n), log_normalizer(k.float(), n)
        torch.testing.assert_close(c32.double(), c64, rtol=2e-7, atol=2e-6)


def test_gradient_is_minus_mean_resultant_length_and_matches_finite_differences() -> None:
    k = torch.tensor([0.01, 0.4, 3.0, 40.0, 300.0, 5000.0], dtype=torch.float64, requires_grad=True)
    for n in (3, 20, 256, 1024):
        (g,) = torch.autograd.grad(log_normalizer(k, n).sum(), k)
        torch.testing.assert_close(g, -mean_resultant_length(k.detach(), n), rtol=0, atol=0)
        # central differences of the independently computed mpmath value
        for i, kv in enumerate(k.detach().tolist()):
            with mpmath.workdps(40):  # central difference in 40 digits, step 1e-6 relative
                h = mpmath.mpf(kv) * mpmath.mpf("1e-6")
                fd = float((_mp_log_c_exact(kv + h, n) - _mp_log_c_exact(kv - h, n)) / (2 * h))
            assert abs(float(g[i]) - fd) <= 1e-8 * abs(fd), (n, kv, float(g[i]), fd)
        assert torch.autograd.gradcheck(lambda x: log_normalizer(x, n), (k,))
        assert torch.autograd.gradgradcheck(lambda x: log_normalizer(x, n), (k,))
        assert torch.autograd.gradcheck(lambda x: mean_resultant_length(x, n), (k,))


def test_broadcasting_and_tensor_n() -> None:
    k = torch.tensor([[0.5, 10.0, 900.0]], dtype=torch.float64)  # (1, 3)
    n = torch.tensor([[3], [256], [1024]])  # (3, 1)
    out = log_normalizer(k, n)
    assert out.shape == (3, 3)
    for row, nv in enumerate((3, 256, 1024)):
        torch.testing.assert_close(out[row], log_normalizer(k[0], nv), rtol=1e-12, atol=1e-10)
    a = mean_resultant_length(k, n)
    torch.testing.assert_close(a[1], mean_resultant_length(k[0], 256), rtol=1e-12, atol=0)
    # gradient reduces back to kappa's shape under broadcasting
    kk = k.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(log_normalizer(kk, n).sum(), kk)
    assert g.shape == kk.shape
    torch.testing.assert_close(g, -mean_resultant_length(k, n).sum(0, keepdim=True), rtol=1e-12, atol=0)


def test_bad_dimension_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="n must be >= 2"):
        log_normalizer(torch.tensor([1.0]), 1)
    with pytest.raises(TypeError, match="dimension n"):
        log_normalizer(torch.tensor([1.0]), "256")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    k = torch.logspace(-3, 4, 100, dtype=torch.float32)
    for n in (3, 256, 1024):
        torch.testing.assert_close(log_normalizer(k.cuda(), n).cpu(), log_normalizer(k, n), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(mean_resultant_length(k.cuda(), n).cpu(), mean_resultant_length(k, n))
    kk = k.cuda().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        out = log_normalizer(kk, 256) + mean_resultant_length(kk, 512)
        (g,) = torch.autograd.grad(out.sum(), kk)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(g).all()


def test_log_bessel_iv_gradient_and_kappa_zero() -> None:
    x = torch.tensor([0.02, 1.5, 30.0, 700.0], dtype=torch.float64, requires_grad=True)
    for v in (0.5, 7.0, 127.0):
        assert torch.autograd.gradcheck(lambda t: log_bessel_iv(v, t), (x,))
    xd = x.detach()  # I_{1/2}(x) = sqrt(2 / (pi x)) sinh(x)
    ref = 0.5 * torch.log(2 / (math.pi * xd)) + xd + torch.log1p(-torch.exp(-2 * xd)) - math.log(2.0)
    torch.testing.assert_close(log_bessel_iv(0.5, xd), ref, rtol=1e-12, atol=1e-12)
    # kappa = 0 exactly: the limit value, finite gradient -A_n(0) = 0
    k0 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    out = log_normalizer(k0, 256)
    (g,) = torch.autograd.grad(out.sum(), k0)
    torch.testing.assert_close(out.detach(), torch.full((3,), log_normalizer_at_zero(256), dtype=torch.float64))
    assert torch.isfinite(g).all() and g.abs().max() < 1e-20
