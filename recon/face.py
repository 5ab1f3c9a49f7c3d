"""The one coefficients -> image path: shape, pose, albedo x SH shading, projection, render."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .camera import intrinsics, project
from .coeffs import CoeffLayout
from .geometry import model_to_camera_rotation
from .morphable import MorphableModel
from .render.base import full_precision_call
from .render.vertex import shaded_colours, vertex_normals


@dataclass
class FaceGeometry:
    """Per-vertex quantities that do not depend on pose or light, shared by several renders of one face.

    shape (B,V,3) model-space vertices (cm), normals (B,V,3) their unit model-space normals, albedo
    (B,V,3) in [0,1]. A rotation R maps the normals to R n (vertex normals commute with rotations).
    """

    shape: torch.Tensor
    normals: torch.Tensor
    albedo: torch.Tensor


def _impl(renderer: Any) -> str:
    """The renderer's kernel choice ('auto' | 'numba' | 'torch'), used for the vertex work too."""
    impl = getattr(renderer, "impl", "auto")
    return impl if impl in ("auto", "numba", "torch") else "auto"


def rotate(points: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """points (B,N,3), R (B,3,3) -> (B,N,3) = R p, computed as (R @ P^T)^T (a (3,3)x(3,N) product per item
    is several times faster than (N,3)x(3,3) on CPU, forward and backward; the result is a transposed view)."""
    return (R @ points.transpose(-1, -2)).transpose(-1, -2)


@full_precision_call
def fill_holes_fast(model: MorphableModel, verts: torch.Tensor, attributes: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """MorphableModel.fill_holes (same inputs, same outputs) with the opening centres gathered from the
    ~160 boundary vertices instead of a dense (H,V) einsum over every vertex (15x faster forward and
    backward on CPU at B=32). TODO(lead): move into MorphableModel.fill_holes and delete this."""
    model._check_verts(verts)
    cache = getattr(model, "_hole_sparse", None)
    if cache is None or cache[0].device != verts.device:
        h, v = model.hole_weights.nonzero(as_tuple=True)
        cache = (h, v, model.hole_weights[h, v])
        model._hole_sparse = cache
    h, v, w = cache
    n_holes = model.hole_weights.shape[0]
    centres = verts.new_zeros(verts.shape[0], n_holes, 3).index_add(1, h, verts[:, v] * w.to(verts)[:, None])
    out = torch.cat([verts, centres], 1)
    tris = torch.cat([model.triangles, model.fill_triangles], 0)
    if attributes is None:
        return out, tris, None
    if attributes.shape[-1] == 3:
        extra = model.hole_colours.to(attributes).expand(attributes.shape[0], -1, -1)
    else:
        extra = attributes.new_zeros(attributes.shape[0], n_holes, attributes.shape[-1])
    return out, tris, torch.cat([attributes, extra], 1)


def face_geometry(model: MorphableModel, ident: torch.Tensor, expr: torch.Tensor | None,
                  albedo_coeffs: torch.Tensor | None = None, albedo: torch.Tensor | None = None,
                  impl: str = "auto", neutral: torch.Tensor | None = None) -> FaceGeometry:
    """FaceGeometry of identity (B,n_id) and expression (B,n_expr) or None (neutral) coefficients, with
    the albedo from `albedo_coeffs` (B,n_albedo,3) or given directly as per-vertex `albedo` (B,V,3).
    neutral: model.shape(ident, None) when the caller already has it (then only the expression offset is
    added, the same sum in the same order as MorphableModel.shape)."""
    if neutral is None:
        shape = model.shape(ident, expr)
    elif expr is None or not model.n_expr:
        shape = neutral
    else:
        model._check(expr, model.n_expr, "expr")
        shape = neutral + torch.einsum("bk,kvc->bvc", expr.to(model.mean), model.expr_basis)
    alb = model.albedo(albedo_coeffs, batch=shape.shape[0]) if albedo is None else albedo
    return FaceGeometry(shape, vertex_normals(shape, model.triangles, impl), alb)


def face_colours(model: MorphableModel, albedo_coeffs: torch.Tensor | None, normals: torch.Tensor,
                 light: torch.Tensor, albedo: torch.Tensor | None = None, impl: str = "auto"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-vertex colour = albedo x SH shading, clamped to [0,1] -> (colour, albedo, shading), each (B,V,3).
    `albedo` (B,V,3), when given, is used instead of model.albedo(albedo_coeffs)."""
    alb = model.albedo(albedo_coeffs) if albedo is None else albedo
    colour, shade = shaded_colours(alb.expand_as(normals), normals, light, impl)
    return colour, alb, shade


@full_precision_call
def render_face(model: MorphableModel, renderer: Any, coeffs: torch.Tensor, image_size: int | tuple[int, int] = 112,
                K: torch.Tensor | None = None, layout: CoeffLayout | None = None,
                dynamic_contour: bool | str = False, fill_holes: bool = True,
                geometry: FaceGeometry | None = None) -> dict[str, torch.Tensor]:
    """Render faces from coefficient vectors.

    model: MorphableModel; renderer: recon.render renderer; coeffs (B,P) in `layout` (default
    CoeffLayout.from_model(model)); image_size int or (H,W); K (3,3)/(B,3,3) pixels (default
    recon.camera.intrinsics(image_size), the canonical crop's focal). dynamic_contour: False (fixed 3D jaw
    vertices), True (under yaw > 20 deg the far-side jaw points use the posterior contour variant) or
    "silhouette" (they are searched on the rendered outline; see MorphableModel.landmark_indices).
    fill_holes: close the eye and mouth openings with dark fans (MorphableModel.fill_holes) so the
    background never shows through. Runs in float32 whatever the autocast state (half-precision inputs
    are cast; recon.render.base.full_precision_call). geometry: the FaceGeometry of these coefficients' identity,
    expression and albedo when another render already computed it (renders of one face under several
    poses share it); by default computed here.

    Returns dict: image (B,3,H,W) in [0,1] (0 on background), mask (B,1,H,W), depth (B,1,H,W) camera z cm,
    landmarks2d (B,68,2) pixels (projected landmark vertices, visible or not), vertices_cam (B,V,3) cm,
    normals (B,V,3) camera space, colours (B,V,3), albedo (B,V,3), shading (B,V,3), geometry (FaceGeometry).
    """
    if dynamic_contour not in (False, True, "silhouette"):
        raise ValueError(f"dynamic_contour must be False, True or 'silhouette', got {dynamic_contour!r}")
    layout = layout or CoeffLayout.from_model(model)
    p = layout.split(coeffs)
    if K is None:
        K = intrinsics(image_size, dtype=coeffs.dtype, device=coeffs.device)
    impl = _impl(renderer)
    if geometry is None:
        geometry = face_geometry(model, p["id"], p["expr"], p["albedo"], impl=impl)
    R = model_to_camera_rotation(p["rotation"])
    vcam = rotate(geometry.shape, R) + p["translation"][:, None, :]
    normals = rotate(geometry.normals, R)
    colours, alb, shade = face_colours(model, None, normals, p["light"], albedo=geometry.albedo, impl=impl)
    if fill_holes:
        rv, rt, rc = fill_holes_fast(model, vcam, colours)
    else:
        rv, rt, rc = vcam, model.triangles, colours
    out = renderer(rv, rt, rc, image_size, K)
    yaw = p["rotation"][:, 1] if dynamic_contour else None
    lm2d = project(model.landmarks(vcam, yaw, silhouette=dynamic_contour == "silhouette"), K)
    return {"image": out.image, "mask": out.mask, "depth": out.depth, "landmarks2d": lm2d,
            "vertices_cam": vcam, "normals": normals, "colours": colours, "albedo": alb, "shading": shade,
            "geometry": geometry}
