"""Differentiable mesh renderer: one interface, two backends.

>>> renderer = build_renderer("auto")               # pytorch3d if importable, else "torch"
>>> out = renderer(vertices, triangles, colours, 112, K)
>>> out.image, out.mask, out.depth                  # (B,C,H,W), (B,1,H,W), (B,1,H,W)

Conventions: see :mod:`recon.render.base` (OpenCV camera space in cm, pixel centres at +0.5,
camera z depth, counter-clockwise-in-the-image front faces).

Backend "torch" (the project's own): rasterises the visible triangle id per pixel without gradient
(numba kernels on CPU, a vectorised torch rasteriser on other devices), then recomputes
perspective-correct barycentrics from the projected vertices in differentiable code, so
``image``/``depth`` have gradients w.r.t. vertices and attributes; ``soft_edges=sigma`` adds a
soft outer rim to ``mask`` (gradient at silhouettes). ``out.face`` (B,H,W) is the visible triangle
id, -1 on background; ``out.face >= 0`` is the hard coverage even when the mask is soft.

Precision: a render runs in full precision whatever the autocast state (autocast is off inside
``Renderer.__call__``; float16 / bfloat16 inputs are computed and returned in float32, float64 stays
float64), in every backend. ``soft_edges`` means the same in every backend: the rim value of an
uncovered pixel comes from its distance to the nearest projected triangle (``Renderer.soft_mask``).

Per-vertex work before rasterising (vertex normals, SH shading x albedo) has numba kernels too:
:mod:`recon.render.vertex` (``vertex_normals``, ``shaded_colours``), used by :mod:`recon.face`.

CPU performance: the numba kernels (compiled on first use, cached on disk) run on a thread pool of
``torch.get_num_threads()`` workers. On a machine shared by many processes, PyTorch's OpenMP
threads spin-wait and slow everything down (its own ops first); ``OMP_WAIT_POLICY=PASSIVE`` or
``torch.set_num_threads(1)`` avoids that. ``bench/bench_render.py`` measures each stage.
"""

from __future__ import annotations

from typing import Any

from lh2face.registry import Registry

from .base import RenderOutput, Renderer, check_inputs, parse_image_size, project_vertices

RENDERERS: Registry[Renderer] = Registry("renderer backend")


@RENDERERS.register("torch")
def _build_torch(**options: Any) -> Renderer:
    from .torch_backend import TorchRenderer

    return TorchRenderer(**options)


@RENDERERS.register("pytorch3d")
def _build_pytorch3d(**options: Any) -> Renderer:
    from .pytorch3d_backend import PyTorch3DRenderer

    return PyTorch3DRenderer(**options)


def pytorch3d_available() -> bool:
    """True when ``pytorch3d`` (with its compiled rasteriser) imports."""
    from .pytorch3d_backend import pytorch3d_available as _avail

    return _avail()


def available_backends() -> list:
    """Backend names that can be built in this environment."""
    return ["torch"] + (["pytorch3d"] if pytorch3d_available() else [])


def build_renderer(backend: str = "auto", **options: Any) -> Renderer:
    """Build a renderer. backend: 'auto' (pytorch3d when importable, else 'torch'), 'torch', 'pytorch3d'.

    Options shared by both backends: ``soft_edges`` (None or sigma in px), ``cull_backfaces`` (bool).
    The torch backend also takes ``soft_radius``, ``znear``, ``impl`` ('auto' | 'numba' | 'torch').
    """
    name = str(backend).lower()
    if name == "auto":
        name = "pytorch3d" if pytorch3d_available() else "torch"
        if name == "pytorch3d":
            options.pop("impl", None)  # the torch backend's kernel choice means nothing there
    return RENDERERS.build(name, **options)


__all__ = [
    "RENDERERS",
    "RenderOutput",
    "Renderer",
    "available_backends",
    "build_renderer",
    "check_inputs",
    "parse_image_size",
    "project_vertices",
    "pytorch3d_available",
]
