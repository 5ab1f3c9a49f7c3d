"""Lambertian shading from 9 real spherical-harmonics lighting coefficients per colour channel.

The environment radiance is L_c(w) = sum_{l<=2,m} light[c, lm] Y_lm(w) for unit directions w in CAMERA
space (OpenCV: x right, y down, z forward; a surface facing the camera has normal (0,0,-1)). The
irradiance at normal n is E(n) = sum A_l L_lm Y_lm(n) with the clamped-cosine band factors
A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4 (Ramamoorthi & Hanrahan 2001, "An efficient representation for
irradiance environment maps"), and the shading (outgoing radiance of a white Lambertian surface) is
E(n) / pi. So a constant environment of radiance c (light[c,0] = c sqrt(4 pi)) shades every normal c.

Coefficient layout: light (B,27) = 3 channels x 9, channel-major: light[:, 9*c + k], k in the order
Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20 (3z^2-1), Y21 (xz), Y22 (x^2-y^2).
"""

from __future__ import annotations

import math

import torch

SH_C0 = 0.5 / math.sqrt(math.pi)            # 0.282095
SH_C1 = math.sqrt(3.0 / (4.0 * math.pi))    # 0.488603
SH_C2 = 0.5 * math.sqrt(15.0 / math.pi)     # 1.092548
SH_C20 = 0.25 * math.sqrt(5.0 / math.pi)    # 0.315392
SH_C22 = 0.25 * math.sqrt(15.0 / math.pi)   # 0.546274
BAND_FACTORS = (math.pi, 2.0 * math.pi / 3.0, math.pi / 4.0)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Real orthonormal SH basis up to band 2: unit vectors (...,3) -> (...,9)."""
    if normals.shape[-1] != 3:
        raise ValueError(f"normals must have last dimension 3, got {tuple(normals.shape)}")
    x, y, z = normals.unbind(-1)
    one = torch.ones_like(x)
    return torch.stack([
        SH_C0 * one,
        SH_C1 * y, SH_C1 * z, SH_C1 * x,
        SH_C2 * x * y, SH_C2 * y * z, SH_C20 * (3.0 * z * z - 1.0), SH_C2 * x * z, SH_C22 * (x * x - y * y),
    ], -1)


def _band_weights(t: torch.Tensor) -> torch.Tensor:
    a0, a1, a2 = (b / math.pi for b in BAND_FACTORS)
    return torch.tensor([a0, a1, a1, a1, a2, a2, a2, a2, a2], dtype=t.dtype, device=t.device)


def check_light(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """Check normals (B,V,3) and light (B or 1, 27) / (B or 1, 3, 9); return the light as (B or 1, 3, 9)."""
    if normals.dim() != 3 or normals.shape[-1] != 3:
        raise ValueError(f"normals must be (B,V,3), got {tuple(normals.shape)}")
    if light.dim() == 2 and light.shape[1] == 27:
        light = light.reshape(-1, 3, 9)
    if light.dim() != 3 or light.shape[1:] != (3, 9) or light.shape[0] not in (1, normals.shape[0]):
        raise ValueError(f"light must be (B,27) or (B,3,9) with B={normals.shape[0]}, got {tuple(light.shape)}")
    return light


def sh_shading(normals: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """normals (B,V,3) unit, camera space; light (B,27) or (B,3,9) -> shading (B,V,3) (not clamped)."""
    light = check_light(normals, light)
    basis = sh_basis(normals) * _band_weights(normals)  # (B,V,9)
    return torch.einsum("bvk,bck->bvc", basis, light.to(normals))


def constant_light(value: float | tuple[float, float, float] = 1.0, batch: int = 1,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch,27) coefficients of a constant environment: every normal is shaded `value` (per channel)."""
    v = torch.as_tensor(value, dtype=dtype).expand(3)
    light = torch.zeros(batch, 3, 9, dtype=dtype)
    light[:, :, 0] = v / SH_C0 / 1.0  # E = pi * L00 * Y00 -> shading = L00 * Y00
    return light.reshape(batch, 27)


def directional_light(direction: tuple[float, float, float] | torch.Tensor, intensity: float = 1.0,
                      ambient: float = 0.0, batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch,27) band-limited light: ambient plus a distant source seen in camera-space `direction`
    (unit vector from the surface TOWARDS the light; (0,0,-1) = from the camera). The source is the
    order-2 SH projection of a delta: L_lm = intensity * Y_lm(direction), so a normal facing it is shaded
    about intensity * (A_0 Y00^2 + A_1 sum Y1m^2 + A_2 sum Y2m^2) / pi + ambient."""
    d = torch.as_tensor(direction, dtype=dtype)
    d = d / d.norm()
    coeff = intensity * sh_basis(d)  # (9,)
    light = coeff.expand(batch, 3, 9).clone()
    light[:, :, 0] += ambient / SH_C0
    return light.reshape(batch, 27)


def standard_light(batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed light of the canonical renders: ambient 0.55 plus a frontal source slightly above the
    camera (direction (0, -0.3, -1) normalised, intensity 1.2): a surface facing the source is shaded
    0.96, one at 90 degrees about 0.6, so the shape reads in the render."""
    return directional_light((0.0, -0.3, -1.0), intensity=1.2, ambient=0.55, batch=batch, dtype=dtype)
