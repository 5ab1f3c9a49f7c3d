"""Renderer interface shared by every backend: inputs, conventions, output container.

Conventions (DESIGN.md section 5):

* ``vertices`` (B,V,3) are in camera space, centimetres, OpenCV axes: x right, y down, z forward
  (away from the camera). Only points with z > 0 are visible.
* ``K`` (3,3) or (B,3,3) pixel intrinsics. A camera point (x, y, z) lands on the continuous pixel
  coordinates ``u = fx x/z + s y/z + cx``, ``v = fy y/z + cy`` (``s`` = K[0,1], normally 0). The
  continuous frame has its origin at the top-left *corner* of the top-left pixel, so the centre of
  pixel (row i, col j) is (j + 0.5, i + 0.5); that centre is where coverage, depth and attributes are
  sampled.
* Outputs: ``image`` (B,C,H,W) perspective-correct barycentric interpolation of ``attributes``
  (0 on background), ``mask`` (B,1,H,W) coverage in [0,1], ``depth`` (B,1,H,W) camera z in cm of the
  nearest surface (0 on background).
* Winding (only used when back-face culling is on): a triangle (a, b, c) is *front facing* when it
  appears counter-clockwise in the image as displayed (u right, v down), i.e. its camera-space normal
  ``(b - a) x (c - a)`` points towards the camera. The ICT face model's triangles are front facing
  under this rule once the model is rotated 180 degrees about x and placed in front of the camera.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

ImageSize = Union[int, Sequence[int], Tuple[int, int]]


@dataclass
class RenderOutput:
    """What every renderer returns.

    image: (B,C,H,W) interpolated attributes, 0 on background.
    mask:  (B,1,H,W) coverage in [0,1] (hard 0/1, or soft at silhouettes with ``soft_edges``).
    depth: (B,1,H,W) camera z in cm of the visible surface, 0 on background.
    face:  (B,H,W) long, index of the visible triangle per pixel, -1 on background (no gradient).
    """

    image: Tensor
    mask: Tensor
    depth: Tensor
    face: Optional[Tensor] = None


class Renderer:
    """Base class: ``renderer(vertices, triangles, attributes, image_size, K) -> RenderOutput``."""

    name = "base"

    def __init__(
        self,
        soft_edges: Optional[float] = None,
        soft_radius: float = 4.0,
        cull_backfaces: bool = False,
        znear: float = 1e-3,
    ) -> None:
        """Options every backend shares: soft silhouette sigma (px) and rim radius (in sigmas), back-face
        culling, and the near plane (cm)."""
        if soft_edges is not None and not soft_edges > 0:
            raise ValueError(f"soft_edges must be None or a positive sigma in pixels, got {soft_edges}")
        self.soft_edges = None if soft_edges is None else float(soft_edges)
        self.soft_radius = float(soft_radius)
        self.cull_backfaces = bool(cull_backfaces)
        self.znear = float(znear)

    def __call__(
        self,
        vertices: Tensor,
        triangles: Tensor,
        attributes: Optional[Tensor],
        image_size: ImageSize,
        K: Tensor,
    ) -> RenderOutput:
        """Render in full precision whatever the autocast state: autocast is off inside, and half-precision
        inputs (float16 / bfloat16, as autocast produces upstream) are computed and returned in float32;
        float64 stays float64. Gradients flow back to the inputs in their own dtype."""
        with no_autocast(vertices.device):
            vertices, attributes, K = (full_precision(x) for x in (vertices, attributes, K))
            vertices, triangles, attributes, (h, w), K = check_inputs(
                vertices, triangles, attributes, image_size, K
            )
            return self.render(vertices, triangles, attributes, (h, w), K)

    def render(
        self,
        vertices: Tensor,
        triangles: Tensor,
        attributes: Tensor,
        image_size: Tuple[int, int],
        K: Tensor,
    ) -> RenderOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def soft_mask(self, screen: Tensor, triangles: Tensor, face: Tensor, impl: str = "auto") -> Tensor:
        """The soft coverage every backend uses with ``soft_edges``: (B,1,H,W), 1 on covered pixels
        (``face >= 0``), :func:`recon.render.interpolate.rim_profile` of the distance to the *nearest
        projected triangle* (within ``soft_radius * soft_edges`` px, whatever its depth) elsewhere.
        screen (B,V,3) from :func:`project_vertices` (differentiable), face (B,H,W) the hard face map."""
        from .interpolate import soft_silhouette
        from .rasterize import nearest_triangle

        radius = self.soft_radius * self.soft_edges
        near = nearest_triangle(screen, triangles, face, radius, self.cull_backfaces, self.znear, impl)
        return soft_silhouette(screen, triangles, face, near.to(screen.device), self.soft_edges, radius)


def full_precision(x: Optional[Tensor]) -> Optional[Tensor]:
    """A floating tensor below float32 (float16, bfloat16) -> float32; anything else unchanged."""
    if torch.is_tensor(x) and x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
        return x.float()
    return x


def no_autocast(device: torch.device):
    """Context with autocast disabled on `device`'s type (a no-op context where autocast does not exist)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def full_precision_call(fn):
    """Decorator: call fn with autocast off (on the device of its first tensor argument) and every
    half-precision tensor argument cast to float32 (see :func:`full_precision`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)), None)
        if first is None:
            return fn(*args, **kwargs)
        with no_autocast(first.device):
            args = tuple(full_precision(a) for a in args)
            kwargs = {k: full_precision(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapper


def parse_image_size(image_size: ImageSize) -> Tuple[int, int]:
    """int or (H, W) -> (H, W) positive ints."""
    if isinstance(image_size, int):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(s) for s in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {(h, w)}")
    return h, w


_CHECKED: list = []  # (weakref to a triangles tensor, its _version, V): validated recently


def _range_checked(triangles: Tensor, v: int) -> bool:
    """True when this very tensor object, unmodified, was validated against V (skips a device sync)."""
    return any(r() is triangles and ver == triangles._version and vv == v for r, ver, vv in _CHECKED)


def _remember_range(triangles: Tensor, v: int) -> None:
    _CHECKED.append((weakref.ref(triangles), triangles._version, v))
    del _CHECKED[:-8]


def check_inputs(
    vertices: Tensor,
    triangles: Tensor,
    attributes: Optional[Tensor],
    image_size: ImageSize,
    K: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tuple[int, int], Tensor]:
    """Validate shapes/dtypes; returns (vertices, triangles long, attributes, (H,W), K (B,3,3)).

    ``attributes`` may be None (a (B,V,0) tensor is substituted: mask and depth only).
    """
    if not torch.is_tensor(vertices) or vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be a (B,V,3) tensor, got {tuple(getattr(vertices, 'shape', ()))}")
    if not vertices.is_floating_point():
        raise TypeError(f"vertices must be floating point, got {vertices.dtype}")
    b, v, _ = vertices.shape
    if not torch.is_tensor(triangles) or triangles.dim() != 2 or triangles.shape[-1] != 3:
        raise ValueError(f"triangles must be a (F,3) tensor, got {tuple(getattr(triangles, 'shape', ()))}")
    if triangles.is_floating_point():
        raise TypeError("triangles must be an integer tensor (long)")
    given = triangles
    triangles = triangles.to(device=vertices.device, dtype=torch.long)
    if triangles.numel() and not _range_checked(given, v):
        lo, hi = torch.aminmax(triangles)
        if int(lo) < 0 or int(hi) >= v:
            raise ValueError(f"triangles index vertices outside [0, {v})")
        _remember_range(given, v)
    if attributes is None:
        attributes = vertices.new_zeros(b, v, 0)
    if not torch.is_tensor(attributes) or attributes.dim() != 3 or attributes.shape[:2] != (b, v):
        raise ValueError(
            f"attributes must be (B,V,C) = ({b},{v},C), got {tuple(getattr(attributes, 'shape', ()))}"
        )
    if attributes.device != vertices.device:
        raise ValueError(f"attributes on {attributes.device} but vertices on {vertices.device}")
    attributes = attributes.to(vertices.dtype)
    h, w = parse_image_size(image_size)
    if K is None:
        raise ValueError("K, the (3,3) or (B,3,3) pixel intrinsics, is required (see recon.camera)")
    K = torch.as_tensor(K, dtype=vertices.dtype, device=vertices.device)
    if K.shape == (3, 3):
        K = K.expand(b, 3, 3)
    elif K.dim() != 3 or K.shape[1:] != (3, 3) or K.shape[0] not in (1, b):
        raise ValueError(f"K must be (3,3) or (B,3,3) with B={b}, got {tuple(K.shape)}")
    else:
        K = K.expand(b, 3, 3)
    return vertices, triangles, attributes, (h, w), K


def project_vertices(vertices: Tensor, K: Tensor) -> Tensor:
    """Camera-space points (B,V,3) cm -> screen (B,V,3) = (u px, v px, z cm). Differentiable.

    u = (K00 x + K01 y) / z + K02, v = K11 y / z + K12 (continuous pixel frame, pixel centres at +0.5).
    """
    z = vertices[..., 2:3]
    xy = vertices[..., :2] / z
    K = K.to(vertices.dtype)
    u = xy[..., 0] * K[:, None, 0, 0] + xy[..., 1] * K[:, None, 0, 1] + K[:, None, 0, 2]
    v = xy[..., 1] * K[:, None, 1, 1] + K[:, None, 1, 2]
    return torch.stack([u, v, z[..., 0]], dim=-1)
