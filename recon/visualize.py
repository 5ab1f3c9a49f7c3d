"""Pictures of reconstructions: a grid per face and a turntable GIF.

Grid row, one per face (each panel image_size x image_size, default 112 px, upscaled by `zoom`):
``render | overlay | canonical | depth | normals``

* render     the face rendered from its coefficients (pose, expression, light) on black, with the 68
             projected landmarks drawn;
* overlay    the render blended over the input image inside the face mask, with the landmarks (green) and,
             when the input has its own detected / ground-truth landmarks, those too (red);
* canonical  identity only, neutral expression, frontal, standard light (recon.canonical);
* depth      the canonical depth (normalised inside the mask) through a colour map, background black;
* normals    camera-space normals of the posed render mapped to RGB as (n + 1) / 2.

`turntable_frames` renders the neutral identity at yaw -60..60 degrees (and back) for a GIF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lh2face.io import PathLike, atomic_write, save_image, to_uint8

__all__ = [
    "PANELS",
    "draw_landmarks",
    "colourise_depth",
    "normals_to_rgb",
    "label_panel",
    "compose_grid",
    "save_gif",
]

PANELS = ("render", "overlay", "canonical", "depth", "normals")


def _as_hwc_uint8(image: object) -> np.ndarray:
    arr = to_uint8(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def draw_landmarks(image: object, landmarks: Optional[object], colour: tuple[int, int, int] = (0, 255, 0),
                   radius: float = 1.0, scale: float = 1.0) -> np.ndarray:
    """Draw (68,2) pixel landmarks (DESIGN conventions: pixel centres at +0.5) as dots on an image.

    image: float [0,1] (3,H,W) / (H,W,3) or uint8 (H,W,3). `scale` maps landmark pixels to this image
    (e.g. 4 for a 4x upscaled panel). Returns uint8 (H,W,3); the input is not modified.
    """
    from PIL import Image, ImageDraw

    arr = _as_hwc_uint8(image)
    if landmarks is None:
        return arr.copy()
    pts = landmarks.detach().cpu().numpy() if torch.is_tensor(landmarks) else np.asarray(landmarks)
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2) * scale
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    r = radius * max(1.0, scale / 2.0)
    for x, y in pts:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(colour))
    return np.asarray(im)


def colourise_depth(depth: object, mask: Optional[object] = None, cmap: str = "magma") -> np.ndarray:
    """Depth (H,W) or (1,H,W) in [0,1] (1 = nearest to the camera in recon.canonical's convention or not:
    the map is only for looking at) -> uint8 (H,W,3) colour map; pixels outside `mask` (or with depth 0
    when no mask is given) are black."""
    from matplotlib import colormaps

    d = depth.detach().cpu().numpy() if torch.is_tensor(depth) else np.asarray(depth)
    d = np.squeeze(d).astype(np.float64)
    if mask is None:
        m = d > 0
    else:
        m = np.squeeze(mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)) > 0.5
    rgb = colormaps[cmap](np.clip(d, 0.0, 1.0))[..., :3]
    rgb[~m] = 0.0
    return to_uint8(rgb)


def normals_to_rgb(normals: object, mask: Optional[object] = None) -> np.ndarray:
    """Normals (3,H,W) in [-1,1] -> uint8 (H,W,3) = (n+1)/2, black outside `mask` (1,H,W)."""
    n = normals.detach().cpu().numpy() if torch.is_tensor(normals) else np.asarray(normals)
    n = np.transpose(np.asarray(n, np.float64), (1, 2, 0))
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    rgb = np.where(norm > 1e-8, n / np.maximum(norm, 1e-8), 0.0) * 0.5 + 0.5
    if mask is not None:
        m = np.squeeze(mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask))
        rgb = rgb * m[..., None]
    return to_uint8(rgb)


def upscale(image: np.ndarray, zoom: int) -> np.ndarray:
    """Nearest-neighbour integer upscale of uint8 (H,W,C)."""
    if zoom == 1:
        return image
    return np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)


def label_panel(image: np.ndarray, text: str) -> np.ndarray:
    """Write a small white caption with a dark box at the top-left of a uint8 (H,W,3) panel."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(im)
    x0, y0, x1, y1 = draw.textbbox((2, 1), text)
    draw.rectangle([x0 - 2, y0 - 1, x1 + 2, y1 + 1], fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(im)


def compose_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2, background: int = 255) -> np.ndarray:
    """Tile uint8 (H,W,3) panels (all the same size) into one image, rows x columns, `gap` px apart."""
    if not rows or not rows[0]:
        raise ValueError("compose_grid needs at least one row with one panel")
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * h + (len(rows) - 1) * gap, ncol * w + (ncol - 1) * gap, 3), background, np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            if panel.shape[:2] != (h, w):
                raise ValueError(f"panel ({i},{j}) is {panel.shape[:2]}, expected {(h, w)}")
            out[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = panel[..., :3]
    return out


def save_gif(path: PathLike, frames: Sequence[np.ndarray], fps: float = 12.0) -> None:
    """Write uint8 (H,W,3) frames as a looping GIF with imageio, atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    with atomic_write(path, "wb") as fh:
        imageio.mimsave(fh, [np.ascontiguousarray(f) for f in frames], format="GIF",
                        duration=1.0 / fps, loop=0)
