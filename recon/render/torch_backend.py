"""The project's own differentiable rasteriser (backend name ``torch``).

Pipeline: project (torch, differentiable) -> rasterise nearest triangle id per pixel centre
(numba on CPU, vectorised torch elsewhere; no gradient) -> recompute perspective-correct
barycentrics, depth and attributes from the projected vertices (differentiable) -> optional soft
silhouette (``soft_edges`` = sigma in pixels).
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .base import RenderOutput, Renderer
from .interpolate import interpolate
from .rasterize import rasterize, resolve_impl
from .vertex import project


class TorchRenderer(Renderer):
    """Differentiable triangle renderer.

    Options:
        soft_edges: None (hard 0/1 mask, no silhouette gradient) or sigma in pixels: uncovered pixels
            within ``soft_radius * sigma`` px of the silhouette (distance d) get a mask value from
            :func:`recon.render.interpolate.rim_profile`: ``2 sigmoid(-d/sigma)`` shifted and scaled
            to run continuously from 1 at the silhouette to 0 at the rim's outer edge.
            ``image`` and ``depth`` stay hard (0 on background).
        soft_radius: the rim width in units of sigma (default 4).
        cull_backfaces: drop triangles that appear clockwise in the image (default False).
        znear: triangles with a vertex at z <= znear (cm) are dropped (no clipping).
        impl: 'auto' (numba on CPU if importable, torch otherwise), 'numba' or 'torch'.
    """

    name = "torch"

    def __init__(
        self,
        soft_edges: Optional[float] = None,
        soft_radius: float = 4.0,
        cull_backfaces: bool = False,
        znear: float = 1e-3,
        impl: str = "auto",
    ) -> None:
        if impl not in ("auto", "numba", "torch"):
            raise ValueError(f"impl must be 'auto', 'numba' or 'torch', got {impl!r}")
        super().__init__(soft_edges, soft_radius, cull_backfaces, znear)
        self.impl = impl

    def render(
        self,
        vertices: Tensor,
        triangles: Tensor,
        attributes: Tensor,
        image_size: Tuple[int, int],
        K: Tensor,
    ) -> RenderOutput:
        impl = resolve_impl(self.impl, vertices.device)
        screen = project(vertices, K, impl)  # (B,V,3) differentiable; = project_vertices
        face, _ = rasterize(screen, triangles, image_size, self.cull_backfaces, self.znear, impl)
        face = face.to(vertices.device)
        image, depth = interpolate(screen, attributes, triangles, face, impl)
        if self.soft_edges is None:
            mask = (face >= 0).to(vertices.dtype).unsqueeze(1)
        else:
            mask = self.soft_mask(screen, triangles, face, impl)
        return RenderOutput(image=image, mask=mask, depth=depth, face=face)

    def __repr__(self) -> str:
        return (
            f"TorchRenderer(soft_edges={self.soft_edges}, cull_backfaces={self.cull_backfaces}, "
            f"znear={self.znear}, impl={self.impl!r})"
        )
