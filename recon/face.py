"""The one coefficients -> image path: shape, pose, albedo x SH shading, projection, render."""

from __future__ import annotations

from typing import Any

import torch

from .camera import intrinsics, project
from .coeffs import CoeffLayout
from .geometry import model_to_camera
from .lighting import sh_shading
from .morphable import MorphableModel


def face_colours(model: MorphableModel, albedo_coeffs: torch.Tensor, normals: torch.Tensor,
                 light: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-vertex colour = albedo x SH shading, clamped to [0,1] -> (colour, albedo, shading), each (B,V,3)."""
    alb = model.albedo(albedo_coeffs)
    shade = sh_shading(normals, light)
    return (alb * shade).clamp(0.0, 1.0), alb, shade


def render_face(model: MorphableModel, renderer: Any, coeffs: torch.Tensor, image_size: int | tuple[int, int] = 112,
                K: torch.Tensor | None = None, layout: CoeffLayout | None = None,
                dynamic_contour: bool | str = False, fill_holes: bool = True) -> dict[str, torch.Tensor]:
    """Render faces from coefficient vectors.

    model: MorphableModel; renderer: recon.render renderer; coeffs (B,P) in `layout` (default
    CoeffLayout.from_model(model)); image_size int or (H,W); K (3,3)/(B,3,3) pixels (default
    recon.camera.intrinsics(image_size), the canonical crop's focal). dynamic_contour: False (fixed 3D jaw
    vertices), True (under yaw > 20 deg the far-side jaw points use the posterior contour variant) or
    "silhouette" (they are searched on the rendered outline; see MorphableModel.landmark_indices).
    fill_holes: close the eye and mouth openings with dark fans (MorphableModel.fill_holes) so the
    background never shows through.

    Returns dict: image (B,3,H,W) in [0,1] (0 on background), mask (B,1,H,W), depth (B,1,H,W) camera z cm,
    landmarks2d (B,68,2) pixels (projected landmark vertices, visible or not), vertices_cam (B,V,3) cm,
    normals (B,V,3) camera space, colours (B,V,3), albedo (B,V,3), shading (B,V,3).
    """
    if dynamic_contour not in (False, True, "silhouette"):
        raise ValueError(f"dynamic_contour must be False, True or 'silhouette', got {dynamic_contour!r}")
    layout = layout or CoeffLayout.from_model(model)
    p = layout.split(coeffs)
    if K is None:
        K = intrinsics(image_size, dtype=coeffs.dtype, device=coeffs.device)
    verts = model.shape(p["id"], p["expr"])
    vcam = model_to_camera(verts, p["rotation"], p["translation"])
    normals = model.vertex_normals(vcam)
    colours, alb, shade = face_colours(model, p["albedo"], normals, p["light"])
    if fill_holes:
        rv, rt, rc = model.fill_holes(vcam, colours)
    else:
        rv, rt, rc = vcam, model.triangles, colours
    out = renderer(rv, rt, rc, image_size, K)
    yaw = p["rotation"][:, 1] if dynamic_contour else None
    lm2d = project(model.landmarks(vcam, yaw, silhouette=dynamic_contour == "silhouette"), K)
    return {"image": out.image, "mask": out.mask, "depth": out.depth, "landmarks2d": lm2d,
            "vertices_cam": vcam, "normals": normals, "colours": colours, "albedo": alb, "shading": shade}
