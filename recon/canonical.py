"""Canonical face and depth renders: identity kept, expression zero, frontal pose, standard light.

Every face is drawn by the same fixed camera (recon.camera.canonical_camera) into the aligned
112x112 crop, so the mean face's eyes, nose tip and mouth corners sit on the ArcFace template.
Depth convention: NEAR = 1. Inside the mask, depth = (z_far - z) / (z_far - z_near) with z_near /
z_far the smallest / largest camera z of this face's visible pixels (so the nose tip is ~1 and the
farthest visible face border 0); multiplied by the (possibly soft) coverage mask, so background is 0.
The eye and mouth openings are closed with dark fans (MorphableModel.fill_holes) so the depth has no holes.
Both outputs are differentiable w.r.t. the identity and albedo coefficients.
"""

from __future__ import annotations

from typing import Any

import torch

from .camera import canonical_camera
from .coeffs import CoeffLayout
from .face import FaceGeometry, _impl, face_colours, face_geometry, fill_holes_fast
from .lighting import standard_light
from .morphable import MorphableModel
from .render.base import full_precision_call


def normalise_depth(depth: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """depth (B,1,H,W) camera z (0 = no surface), mask (B,1,H,W) coverage -> (B,1,H,W) per-face [0,1],
    near = 1, far = 0, multiplied by the coverage; 0 where no surface was hit (background, soft rims)."""
    if depth.shape != mask.shape or depth.dim() != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth and mask must both be (B,1,H,W), got {tuple(depth.shape)} and {tuple(mask.shape)}")
    hit = depth > 0
    inside = hit & (mask > 0.5)
    big = torch.finfo(depth.dtype).max
    flat, fin = depth.flatten(1), inside.flatten(1)
    z_near = torch.where(fin, flat, torch.full_like(flat, big)).amin(1)
    z_far = torch.where(fin, flat, torch.full_like(flat, -big)).amax(1)
    empty = ~fin.any(1)
    z_near = torch.where(empty, torch.zeros_like(z_near), z_near)
    z_far = torch.where(empty, torch.ones_like(z_far), z_far)
    span = (z_far - z_near).clamp_min(eps)[:, None, None, None]
    d = ((z_far[:, None, None, None] - depth) / span).clamp(0.0, 1.0)
    return torch.where(hit, d, torch.zeros_like(d)) * mask


@full_precision_call
def render_canonical(model: MorphableModel, renderer: Any, coeffs_or_id: torch.Tensor,
                     albedo: torch.Tensor | None = None, image_size: int = 112,
                     layout: CoeffLayout | None = None, geometry: FaceGeometry | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical renders of the faces' identities.

    coeffs_or_id: full coefficient vectors (B,P) (when albedo is None; every slice but id and albedo
    is ignored) or identity coefficients (B,n_id); albedo: (B,n_albedo,3) or (B,3*n_albedo) or None.
    geometry: the neutral-expression FaceGeometry of these identities and albedos when the caller has
    it (recon.face.face_geometry(model, id, None, albedo)); computed here by default.
    One rasterisation gives both outputs (the colour and the camera z are interpolated together). Runs in
    float32 whatever the autocast state (half-precision inputs are cast to float32).
    Returns canonical (B,3,S,S) in [0,1] (0 on background) and depth (B,1,S,S) in [0,1] (near = 1,
    0 on background), S = image_size (112 by default: the aligned crop).
    """
    if albedo is None:
        layout = layout or CoeffLayout.from_model(model)
        p = layout.split(coeffs_or_id)
        ident, alb = p["id"], p["albedo"]
    else:
        ident, alb = coeffs_or_id, albedo
        if ident.dim() != 2 or ident.shape[1] != model.n_id:
            raise ValueError(f"identity coefficients must be (B,{model.n_id}) when albedo is given, got "
                             f"{tuple(ident.shape)}; pass full coefficient vectors with albedo=None instead")
    cam = canonical_camera(image_size, dtype=model.mean.dtype, device=model.mean.device)
    impl = _impl(renderer)
    if geometry is None:
        geometry = face_geometry(model, ident, None, alb, impl=impl)
    if torch.equal(cam.R, torch.diag(torch.diagonal(cam.R))):  # the canonical camera: a diagonal flip
        flip = torch.diagonal(cam.R)
        vcam, normals = geometry.shape * flip + cam.t, geometry.normals * flip
    else:
        vcam, normals = geometry.shape @ cam.R.T + cam.t, geometry.normals @ cam.R.T
    light = standard_light(ident.shape[0], dtype=vcam.dtype).to(vcam.device)
    colours, _, _ = face_colours(model, None, normals, light, albedo=geometry.albedo, impl=impl)
    out = renderer(*fill_holes_fast(model, vcam, colours), image_size, cam.K)
    return out.image.clamp(0.0, 1.0), normalise_depth(out.depth, out.mask)
