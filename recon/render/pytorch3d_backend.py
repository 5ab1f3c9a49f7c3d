"""PyTorch3D backend (name ``pytorch3d``): MeshRasterizer + interpolate_face_attributes.

Same inputs, outputs and conventions as the ``torch`` backend (see :mod:`recon.render.base`).
PyTorch3D's camera/NDC frame is +x left, +y up; ``pytorch3d.utils.cameras_from_opencv_projection``
converts our OpenCV intrinsics (identity rotation, zero translation: the vertices already are in
camera space). That conversion maps the principal point ``W/2, H/2`` to the NDC origin and
PyTorch3D samples pixel centres, so row i / column j of its output is our pixel centre
(j + 0.5, i + 0.5); ``tests/test_render_conventions.py`` checks this on every importable backend.

PyTorch3D has no PyPI wheel for Linux: install it with conda, ``conda env create -f environment.yml``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import RenderOutput, Renderer, project_vertices

_MISSING = (
    "the 'pytorch3d' renderer backend needs PyTorch3D, which is not importable here ({err}). "
    "PyTorch3D has no pip wheel for Linux; create the conda environment shipped with the project: "
    "`conda env create -f environment.yml` (see environment.yml), or use build_renderer('torch')."
)


def _import_pytorch3d():
    """Import the pieces of PyTorch3D this backend uses; ImportError naming environment.yml if absent."""
    try:
        from pytorch3d.ops import interpolate_face_attributes
        from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
        from pytorch3d.structures import Meshes
        from pytorch3d.utils import cameras_from_opencv_projection
    except Exception as err:  # ImportError, or a broken compiled extension
        raise ImportError(_MISSING.format(err=f"{type(err).__name__}: {err}")) from err
    return Meshes, MeshRasterizer, RasterizationSettings, interpolate_face_attributes, cameras_from_opencv_projection


def pytorch3d_available() -> bool:
    """True when PyTorch3D's renderer imports."""
    try:
        _import_pytorch3d()
    except ImportError:
        return False
    return True


class PyTorch3DRenderer(Renderer):
    """Renderer on top of PyTorch3D's MeshRasterizer.

    Options: ``soft_edges`` (None or sigma px: uncovered pixels within ``soft_radius * sigma`` px of
    the silhouette get :func:`recon.render.interpolate.rim_profile` of their distance to the nearest
    projected triangle, computed by :meth:`Renderer.soft_mask` from PyTorch3D's hard face map: the same
    definition and code as the torch backend; PyTorch3D's own blurred rasterisation is not used because
    it keeps the faces nearest in z, not nearest to the pixel), ``soft_radius`` (default 4),
    ``cull_backfaces`` (PyTorch3D's rule: faces counter-clockwise as seen from the camera are front
    faces, the same as ours), ``faces_per_pixel_soft`` (ignored, kept so that old configs still build),
    ``bin_size`` / ``max_faces_per_bin`` (PyTorch3D's coarse-to-fine settings; None = its heuristic).
    Renders in float32 under autocast (Renderer.__call__ turns autocast off and casts half inputs).
    """

    name = "pytorch3d"

    def __init__(
        self,
        soft_edges: Optional[float] = None,
        soft_radius: float = 4.0,
        cull_backfaces: bool = False,
        znear: float = 1e-3,
        faces_per_pixel_soft: int = 4,
        bin_size: Optional[int] = None,
        max_faces_per_bin: Optional[int] = None,
    ) -> None:
        self._p3d = _import_pytorch3d()
        super().__init__(soft_edges, soft_radius, cull_backfaces, znear)
        self.faces_per_pixel_soft = int(faces_per_pixel_soft)
        self.bin_size = bin_size
        self.max_faces_per_bin = max_faces_per_bin

    def _rasterize(self, meshes, cameras, hw: Tuple[int, int], blur_radius: float, k: int):
        _, MeshRasterizer, RasterizationSettings, _, _ = self._p3d
        settings = RasterizationSettings(
            image_size=hw,
            blur_radius=blur_radius,
            faces_per_pixel=k,
            bin_size=self.bin_size,
            max_faces_per_bin=self.max_faces_per_bin,
            perspective_correct=True,
            cull_backfaces=self.cull_backfaces,
        )
        return MeshRasterizer(cameras=cameras, raster_settings=settings)(meshes)

    def render(
        self,
        vertices: Tensor,
        triangles: Tensor,
        attributes: Tensor,
        image_size: Tuple[int, int],
        K: Tensor,
    ) -> RenderOutput:
        Meshes, _, _, interpolate_face_attributes, cameras_from_opencv_projection = self._p3d
        b, nv, _ = vertices.shape
        nf = triangles.shape[0]
        h, w = image_size
        dev = vertices.device
        dtype = vertices.dtype
        # PyTorch3D's kernels are float32
        verts = vertices.float()
        # drop triangles that reach behind znear (same rule as the torch backend): point them all
        # at vertex 0 of the triangle, a degenerate face PyTorch3D skips.
        faces = triangles.unsqueeze(0).expand(b, nf, 3)
        zc = verts[..., 2].gather(1, faces.reshape(b, -1)).view(b, nf, 3)
        bad = (zc <= self.znear).any(-1, keepdim=True)
        faces = torch.where(bad, faces[..., :1].expand(b, nf, 3), faces)
        meshes = Meshes(verts=verts, faces=faces)
        eye = torch.eye(3, device=dev).expand(b, 3, 3)
        cameras = cameras_from_opencv_projection(
            R=eye,
            tvec=torch.zeros(b, 3, device=dev),
            camera_matrix=K.float(),
            image_size=torch.tensor([[h, w]], device=dev, dtype=torch.float32).expand(b, 2),
        )
        frag = self._rasterize(meshes, cameras, (h, w), 0.0, 1)
        p2f = frag.pix_to_face  # (B,H,W,1), packed face index (mesh b's faces start at b*F)
        covered = p2f[..., 0] >= 0
        # per-face-corner attributes, packed: (B*F, 3, C+1), last channel = camera z
        vals = torch.cat([attributes.float(), verts[..., 2:3]], dim=-1)
        face_vals = vals.gather(1, faces.reshape(b, -1, 1).expand(-1, -1, vals.shape[-1]))
        face_vals = face_vals.view(b * nf, 3, vals.shape[-1])
        interp = interpolate_face_attributes(p2f, frag.bary_coords, face_vals)[..., 0, :]  # (B,H,W,C+1)
        interp = interp * covered[..., None].to(interp.dtype)
        image = interp[..., :-1].permute(0, 3, 1, 2).to(dtype)
        depth = interp[..., -1:].permute(0, 3, 1, 2).to(dtype)
        mask = covered.to(dtype).unsqueeze(1)
        face = torch.where(covered, p2f[..., 0] - torch.arange(b, device=dev).view(b, 1, 1) * nf, -torch.ones_like(p2f[..., 0]))
        if self.soft_edges is not None:
            # Not PyTorch3D's blurred rasterisation: with blur_radius > 0 it keeps, per pixel, the
            # faces_per_pixel faces nearest *in z* among those within the radius (rasterize_meshes'
            # top-K by z), so on a dense mesh the face nearest to the pixel is often not among them and
            # the rim would differ from the torch backend's. The rim is computed from this backend's own
            # hard face map by the shared definition (Renderer.soft_mask: nearest projected triangle).
            screen = project_vertices(vertices, K)
            mask = self.soft_mask(screen, triangles, face).to(dtype)
        return RenderOutput(image=image, mask=mask, depth=depth, face=face)
