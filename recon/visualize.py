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
    """Draw (N,2) pixel landmarks (DESIGN conventions: the centre of pixel (row i, col j) is (j+0.5, i+0.5))
    as dots: every pixel whose centre lies within `radius` of a point, and always the pixel containing it.

    image: float [0,1] (3,H,W) / (H,W,3) or uint8 (H,W,3). `scale` maps landmark pixels to this image
    (e.g. 2 for a 2x upscaled panel); `radius` is in pixels of this image. Returns uint8 (H,W,3); the
    input is not modified. Non-finite points are skipped.
    """
    arr = _as_hwc_uint8(image).copy()
    if landmarks is None:
        return arr
    pts = landmarks.detach().cpu().numpy() if torch.is_tensor(landmarks) else np.asarray(landmarks)
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2) * scale
    h, w = arr.shape[:2]
    r = float(radius)
    reach = int(np.ceil(r)) + 1
    col = np.asarray(colour, np.uint8)
    for x, y in pts:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        j0, i0 = int(np.floor(x)), int(np.floor(y))
        for i in range(i0 - reach, i0 + reach + 1):
            for j in range(j0 - reach, j0 + reach + 1):
                if 0 <= i < h and 0 <= j < w and (
                        (i, j) == (i0, j0) or (j + 0.5 - x) ** 2 + (i + 0.5 - y) ** 2 <= r * r):
                    arr[i, j] = col
    return arr


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


# --------------------------------------------------------------------------------------- pipeline


def _interp_image(image: object, size: int) -> torch.Tensor:
    """uint8 HWC / float CHW or HWC -> float (3,size,size) in [0,1] (bilinear resize when needed)."""
    if torch.is_tensor(image) and image.dim() == 3 and image.shape[0] == 3 and image.is_floating_point():
        t = image.float()
    else:
        arr = to_uint8(image) if not (isinstance(image, np.ndarray) and image.dtype == np.uint8) else image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        t = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float() / 255.0
    if t.shape[1:] != (size, size):
        t = torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)[0]
    return t.clamp(0.0, 1.0)


def display_normals(normals_cam: torch.Tensor) -> torch.Tensor:
    """Camera-space (OpenCV) normals (...,3) -> the usual normal-map view axes (x right, y up, z towards
    the viewer), so a surface facing the camera is (0,0,1) and shows blue."""
    return normals_cam * normals_cam.new_tensor([1.0, -1.0, -1.0])


def face_panels(model: object, renderer: object, coeffs: torch.Tensor, input_image: object = None,
                input_landmarks: object = None, input_size: int = 112, zoom: int = 2,
                captions: bool = True) -> list[np.ndarray]:
    """The five panels (render, overlay, canonical, depth, normals) of one face, uint8 (S,S,3) each with
    S = input_size * zoom. coeffs (P,) describe the face in an input_size crop with the canonical
    intrinsics (recon.camera.intrinsics); input_image is that crop (uint8 HWC or float CHW) or None
    (grey); input_landmarks (68,2) its own landmarks in crop pixels (drawn red), or None."""
    from .canonical import render_canonical
    from .face import render_face

    size = input_size * zoom
    c = torch.as_tensor(coeffs, dtype=torch.float32).reshape(1, -1)
    with torch.no_grad():
        out = render_face(model, renderer, c, size)
        normals = renderer(out["vertices_cam"], model.triangles, display_normals(out["normals"]), size,
                           _K(size)).image[0]
        canonical, depth = render_canonical(model, renderer, c, image_size=size)
    lm = out["landmarks2d"][0]  # pixels of the size x size render
    r = 0.8 * zoom
    render = draw_landmarks(out["image"][0].clamp(0, 1), lm, (0, 255, 0), radius=r)
    base = _interp_image(input_image, size) if input_image is not None else torch.full((3, size, size), 0.5)
    m = out["mask"][0]
    over = base * (1 - 0.55 * m) + out["image"][0].clamp(0, 1) * 0.55 * m
    over_u8 = draw_landmarks(over, lm, (0, 255, 0), radius=r)
    if input_landmarks is not None:
        over_u8 = draw_landmarks(over_u8, input_landmarks, (255, 40, 40), radius=0.6 * r, scale=zoom)
    panels = [render, over_u8, to_uint8(canonical[0]), colourise_depth(depth[0]), normals_to_rgb(normals, out["mask"][0])]
    if captions:
        panels = [label_panel(p, t) for p, t in zip(panels, PANELS)]
    return panels


def _K(size: int) -> torch.Tensor:
    from .camera import intrinsics

    return intrinsics(size)


def posed_coeffs(model: object, coeffs: torch.Tensor, yaw_deg: float, pitch_deg: float = 0.0,
                 roll_deg: float = 0.0, image_size: int = 112, keep_expression: bool = True,
                 light: Optional[torch.Tensor] = None, scale: float = 1.0) -> torch.Tensor:
    """A copy of coeffs (P,) turned to the given angles and re-centred as an aligned crop would place it
    (recon.synth.aligned_translation) at apparent size x `scale`, under `light` (default: the standard light)."""
    from .coeffs import CoeffLayout
    from .lighting import standard_light
    from .synth import aligned_translation

    layout = CoeffLayout.from_model(model)
    c = torch.as_tensor(coeffs, dtype=torch.float32).reshape(1, -1).clone()
    p = layout.split(c)
    if not keep_expression:
        p["expr"].zero_()
    angles = np.deg2rad([pitch_deg, yaw_deg, roll_deg])
    p["rotation"][0] = torch.from_numpy(angles).float()
    p["translation"][0] = torch.from_numpy(aligned_translation(model, p["id"][0], p["expr"][0], angles,
                                                               image_size, scale=scale)).float()
    p["light"][0] = (standard_light(1) if light is None else light.reshape(1, 27))[0]
    return c[0]


def _on_background(image: torch.Tensor, mask: torch.Tensor, grey: float = 0.15) -> np.ndarray:
    """A render (3,S,S) with its mask (1,S,S) on a grey background; the mesh's eye and mouth holes are
    painted dark (the face region has no eyeballs) -> uint8 (S,S,3)."""
    from scipy.ndimage import binary_fill_holes

    m = mask[0].numpy() > 0.5
    holes = torch.from_numpy(binary_fill_holes(m) & ~m)[None]
    img = image.clamp(0, 1) * mask + grey * (1 - mask)
    img = torch.where(holes, torch.tensor([0.10, 0.08, 0.07])[:, None, None], img)
    return to_uint8(img)


def turntable_frames(model: object, renderer: object, coeffs: torch.Tensor, n_frames: int = 24,
                     yaw_range: float = 60.0, size: int = 112, keep_expression: bool = True,
                     batch: int = 12, scale: float = 0.85) -> list[np.ndarray]:
    """Frames (uint8 (size,size,3)) of the face turning from yaw -yaw_range to +yaw_range and back,
    standard light, on a dark grey background."""
    from .face import render_face

    if n_frames < 2:
        raise ValueError(f"a turntable needs at least 2 frames, got {n_frames}")
    half = n_frames // 2
    yaws = list(np.linspace(-yaw_range, yaw_range, half + 1)) + list(np.linspace(yaw_range, -yaw_range, half + 1)[1:-1])
    cs = torch.stack([posed_coeffs(model, coeffs, float(y), image_size=size, keep_expression=keep_expression,
                                   scale=scale) for y in yaws])
    frames = []
    with torch.no_grad():
        for s in range(0, len(cs), batch):
            out = render_face(model, renderer, cs[s : s + batch], size)
            frames.extend(_on_background(im, m) for im, m in zip(out["image"], out["mask"]))
    return frames


def pose_figure(model: object, renderer: object, coeffs: torch.Tensor, yaws: Sequence[float] = (-45.0, 0.0, 40.0),
                pitches: Sequence[float] = (5.0, 0.0, -10.0), size: int = 224, captions: bool = True,
                scale: float = 0.85) -> np.ndarray:
    """One row: the face in len(yaws) poses (standard light, its expression), then its canonical render and
    canonical depth. uint8 (size, (len(yaws)+2)*size + gaps, 3)."""
    from .canonical import render_canonical
    from .face import render_face

    c = torch.as_tensor(coeffs, dtype=torch.float32).reshape(1, -1)
    cs = torch.stack([posed_coeffs(model, c[0], y, p, image_size=size, scale=scale) for y, p in zip(yaws, pitches)])
    with torch.no_grad():
        out = render_face(model, renderer, cs, size)
        canonical, depth = render_canonical(model, renderer, c, image_size=size)
    panels = [_on_background(im, m) for im, m in zip(out["image"], out["mask"])]
    names = [f"yaw {y:+.0f}" for y in yaws]
    panels += [to_uint8(canonical[0]), colourise_depth(depth[0])]
    names += ["canonical", "depth"]
    if captions:
        panels = [label_panel(p, t) for p, t in zip(panels, names)]
    return compose_grid([panels])


def visualize_faces(coeffs: torch.Tensor, out_dir: PathLike, names: Optional[Sequence[str]] = None,
                    inputs: Optional[Sequence[object]] = None, input_landmarks: Optional[Sequence[object]] = None,
                    zoom: int = 2, gif: bool = True, gif_frames: int = 24, gif_size: Optional[int] = None,
                    poses: bool = False,
                    overwrite: bool = False, model: object = None, renderer: object = None,
                    backend: str = "auto") -> dict[str, list[Path]]:
    """Write out_dir/grid.png (one row per face: render | overlay | canonical | depth | normals),
    out_dir/turntable_<name>.gif per face (gif=True) and out_dir/poses_<name>.png (poses=True).

    coeffs (N,P) in the 112 crop's frame; panels are 112*zoom px, GIF frames gif_size px (default 112*zoom); inputs: per face the input crop (or None); input_landmarks: per
    face (68,2) crop pixels (or None). Existing files are refused (FileExistsError) unless overwrite.
    Returns {"grid": [...], "gif": [...], "poses": [...]} paths.
    """
    from .morphable import MorphableModel
    from .render import build_renderer

    model = model if model is not None else MorphableModel()
    renderer = renderer if renderer is not None else build_renderer(backend)
    coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
    if coeffs.dim() == 1:
        coeffs = coeffs[None]
    n = coeffs.shape[0]
    if n == 0:
        raise ValueError("nothing to visualise: no coefficient vectors")
    from .export import unique_names

    names = unique_names(names if names is not None else [f"face_{i:03d}" for i in range(n)])
    out_dir = Path(out_dir)
    targets = {"grid": [out_dir / "grid.png"],
               "gif": [out_dir / f"turntable_{nm}.gif" for nm in names] if gif else [],
               "poses": [out_dir / f"poses_{nm}.png" for nm in names] if poses else []}
    clashes = [p for ps in targets.values() for p in ps if p.exists()]
    if clashes and not overwrite:
        raise FileExistsError(f"{len(clashes)} output file(s) exist (e.g. {clashes[0]}); pass --overwrite "
                              "to replace them or choose another --out")
    rows = []
    for i in range(n):
        rows.append(face_panels(model, renderer, coeffs[i], None if inputs is None else inputs[i],
                                None if input_landmarks is None else input_landmarks[i], zoom=zoom))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_image(targets["grid"][0], compose_grid(rows))
    for i, path in enumerate(targets["gif"]):
        save_gif(path, turntable_frames(model, renderer, coeffs[i], n_frames=gif_frames, size=gif_size or 112 * zoom))
    for i, path in enumerate(targets["poses"]):
        save_image(path, pose_figure(model, renderer, coeffs[i], size=112 * zoom))
    return targets
