"""Synthetic face-recognition data with ground truth, rendered from the bundled 3DMM.

`SyntheticFaces(num_identities, images_per_identity, seed=0, identity_offset=0, image_size=112)` is a
torch Dataset. Every identity draws its shape coefficients ~ N(0, I) on the leading identity modes, its
albedo coefficients and a skin tone from a generator seeded by (seed, identity); every image draws a
sparse expression in [0, 1], a pose (yaw +-60 deg, pitch +-25, roll +-15), spherical-harmonics light, a
background (smooth noise, gradients, random shapes or crops of user images), scale / shift jitter, blur
and sensor noise from a generator seeded by (seed, identity, image-within-identity). Items are therefore
the same whatever the worker, order or batch they are produced in, and a split by `identity_offset`
(e.g. training identities 0..N-1, verification identities N..) never shares an identity.

Faces are rendered with the canonical 112x112 aligned-crop camera (`recon.camera.canonical_camera`), so a
frontal, unjittered face lands on the ArcFace alignment template.

`cache_to_folder(dataset, out_dir)` writes the data set as an ImageFolder (one PNG per image in a folder
per label) plus `annotations.npz` (paths, labels, identities, coefficients, landmarks) and `meta.json`;
it is resumable (finished PNGs are skipped), atomic per file, and shows a tqdm bar.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lh2face.io import PathLike, read_image, save_image, write_json_atomic, atomic_write

__all__ = ["SynthOptions", "SyntheticFaces", "cache_to_folder", "identity_coefficients", "aligned_translation",
           "SKIN_TONES"]

# Linear-ish RGB skin reflectances from light to dark (rough values after published skin-colour
# measurements, chosen by eye); each identity picks one and jitters it.
SKIN_TONES = np.array(
    [
        [0.86, 0.69, 0.58],
        [0.80, 0.62, 0.50],
        [0.74, 0.55, 0.43],
        [0.66, 0.47, 0.35],
        [0.56, 0.38, 0.27],
        [0.45, 0.30, 0.21],
        [0.34, 0.22, 0.15],
    ],
    dtype=np.float64,
)

_STREAM_IDENTITY = 1
_STREAM_IMAGE = 2
_STREAM_BACKGROUND = 3


@dataclass(frozen=True)
class SynthOptions:
    """Sampling ranges of SyntheticFaces (angles in degrees, jitters as fractions of the crop)."""

    id_modes: int = 60  # identity coefficients ~ N(0, id_std^2) on this many leading modes, 0 after
    id_std: float = 1.0
    albedo_std: float = 0.8  # std of the smooth albedo-basis weights (brightness part, same in R, G, B)
    albedo_chroma: float = 0.25  # std of their per-channel (colour) part
    skin_jitter: float = 0.06  # multiplicative jitter of the picked skin tone
    expr_prob: float = 0.12  # each blendshape is active with this probability ...
    neutral_prob: float = 0.2  # ... unless the image is neutral (all zero) with this probability
    expr_max: float = 1.0
    yaw: float = 60.0
    pitch: float = 25.0
    roll: float = 15.0
    shift: float = 0.05  # image-plane shift, fraction of the crop size
    scale: float = 0.10  # relative scale jitter (+-)
    light_ambient: tuple[float, float] = (0.65, 1.05)  # SH band-0 intensity range (relative to standard)
    light_directional: float = 0.45  # strength of the band-1 (directional) part, relative to band 0
    light_band2: float = 0.04
    light_tint: float = 0.05
    blur_prob: float = 0.5
    blur_sigma: float = 1.2  # max Gaussian sigma in pixels at 112 px
    noise_sigma: float = 0.03  # max sensor-noise std (in [0,1] units)
    backgrounds: tuple[str, ...] = ("noise", "gradient", "shapes", "image")


def _rng(*keys: int) -> np.random.Generator:
    """An independent numpy generator for a tuple of non-negative integer keys."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in keys])))


# --------------------------------------------------------------------------------- image processing


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of float (h0, w0, C) to (h, w, C) with torch (align_corners=False)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).numpy()


def _background(rng: np.random.Generator, h: int, w: int, kinds: Sequence[str],
                images: Sequence[PathLike]) -> np.ndarray:
    """A random background, float32 (h, w, 3) in [0, 1]."""
    kinds = [k for k in kinds if k != "image" or len(images) > 0]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "noise":
        cells = int(rng.integers(2, 24))
        base = rng.uniform(0.0, 1.0, size=(cells, cells, 3)) * rng.uniform(0.3, 1.0)
        base = base + rng.uniform(0.0, 0.6, size=(1, 1, 3))
        img = _resize(base, h, w) + rng.normal(0.0, rng.uniform(0.0, 0.08), size=(h, w, 1))
    elif kind == "gradient":
        c0, c1 = rng.uniform(0.0, 1.0, size=(2, 3))
        theta = rng.uniform(0.0, 2.0 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        u = (xs / w - 0.5) * math.cos(theta) + (ys / h - 0.5) * math.sin(theta) + 0.5
        u = np.clip(u, 0.0, 1.0)[..., None]
        img = c0 * (1.0 - u) + c1 * u
    elif kind == "shapes":
        img = np.ones((h, w, 3)) * rng.uniform(0.0, 1.0, size=3)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        for _ in range(int(rng.integers(3, 12))):
            cx, cy = rng.uniform(-0.2, 1.2, size=2) * (w, h)
            rx, ry = rng.uniform(0.05, 0.5, size=2) * (w, h)
            colour = rng.uniform(0.0, 1.0, size=3)
            if rng.random() < 0.5:
                inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
            else:
                inside = (np.abs(xs - cx) <= rx) & (np.abs(ys - cy) <= ry)
            img[inside] = colour
    elif kind == "image":
        path = images[int(rng.integers(len(images)))]
        src = read_image(path).astype(np.float32) / 255.0
        sh, sw = src.shape[:2]
        side = max(8, int(min(sh, sw) * rng.uniform(0.3, 1.0)))
        y0 = int(rng.integers(0, sh - side + 1))
        x0 = int(rng.integers(0, sw - side + 1))
        img = _resize(src[y0 : y0 + side, x0 : x0 + side], h, w)
        if rng.random() < 0.5:
            img = img[:, ::-1]
    else:
        raise ValueError(f"unknown background kind {kind!r}; use noise, gradient, shapes or image")
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _fill_holes(face: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The face-region mesh has no eyeballs or mouth interior: paint its enclosed holes (eyes, an open
    mouth) a dark colour so the background does not show through. face (3,H,W), mask (1,H,W)."""
    from scipy.ndimage import binary_fill_holes

    m = mask[0].numpy() > 0.5
    holes = binary_fill_holes(m) & ~m
    if not holes.any():
        return face, mask
    colour = torch.from_numpy(rng.uniform(0.08, 0.25) * np.array([1.0, 0.85, 0.8], np.float32))
    h = torch.from_numpy(holes)
    face = torch.where(h[None], colour[:, None, None].to(face), face)
    mask = torch.where(h[None], torch.ones_like(mask), mask)
    return face, mask


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflect padding; sigma in pixels (<0.3: unchanged)."""
    if sigma < 0.3:
        return img
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    t = torch.nn.functional.pad(img[None], (radius, radius, radius, radius), mode="reflect")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return t[0]


# ----------------------------------------------------------------------------------- coefficients


def _skin_tone_coefficients(model: Any, tone: np.ndarray) -> np.ndarray:
    """Albedo mode-0 (constant) weights per channel that move the base albedo's mean to `tone` (3,)."""
    basis0 = model.albedo_basis[0].double().cpu().numpy()  # (V,) constant mode, already x its std
    base_mean = model.base_albedo.double().mean(0).cpu().numpy()  # (3,)
    b0 = float(basis0.mean())
    if abs(b0) < 1e-12 or float(basis0.std()) > 1e-3 * abs(b0):
        return np.zeros(3)  # no constant mode: leave the tone to the base albedo
    return (tone - base_mean) / b0


def identity_coefficients(model: Any, seed: int, identity: int, options: SynthOptions = SynthOptions()
                          ) -> dict[str, np.ndarray]:
    """Per-identity draws, a function of (seed, identity) only.

    Returns id (n_id,) ~ N(0, id_std^2) on the leading `id_modes` modes (zeros after) and albedo
    (n_albedo, 3): a skin tone from SKIN_TONES (jittered) on the constant mode plus, on the smooth modes,
    a brightness variation ~ N(0, albedo_std^2) shared by the channels (scaled by the tone) and a small
    colour variation ~ N(0, albedo_chroma^2) per channel (skin varies mostly in brightness, not in hue).
    weights on the smooth modes.
    """
    if identity < 0:
        raise ValueError(f"identity must be >= 0, got {identity}")
    rng = _rng(seed, _STREAM_IDENTITY, identity)
    ident = np.zeros(model.n_id)
    k = min(options.id_modes, model.n_id)
    ident[:k] = rng.normal(0.0, options.id_std, size=k)
    albedo = np.zeros((model.n_albedo, 3))
    tone = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))] * rng.uniform(1 - options.skin_jitter,
                                                                          1 + options.skin_jitter, size=3)
    if model.n_albedo > 0:
        k = model.n_albedo - 1
        shade = rng.normal(0.0, options.albedo_std, size=(k, 1)) * (tone / tone.mean())[None]
        albedo[1:] = shade + rng.normal(0.0, options.albedo_chroma, size=(k, 3))
        albedo[0] = _skin_tone_coefficients(model, tone)
    return {"id": ident, "albedo": albedo}


def aligned_translation(model: Any, ident: torch.Tensor, expr: Optional[torch.Tensor], angles: Any,
                        image_size: int = 112, scale: float = 1.0, shift: Any = (0.0, 0.0)) -> np.ndarray:
    """Translation (3,) cm placing a posed face as a 5-point alignment would.

    The centroid of the face's five alignment points (eye centres, nose tip, mouth corners) projects
    onto the ArcFace template's centroid (+ `shift` pixels) of an image_size crop with the canonical
    intrinsics, at the canonical distance divided by `scale` (apparent size x scale). ident (n_id,),
    expr (n_expr,) or None, angles (3,) radians (pitch, yaw, roll).
    """
    from .camera import canonical_camera, template
    from .geometry import model_to_camera_rotation

    cam = canonical_camera(image_size, dtype=torch.float64)
    with torch.no_grad():
        verts = model.shape(ident.reshape(1, -1).float(), None if expr is None else expr.reshape(1, -1).float())
        pts = model.alignment_points(verts)[0].double()  # (5,3) model space
        R = model_to_camera_rotation(torch.as_tensor(np.asarray(angles), dtype=torch.float64).reshape(1, 3))[0]
        c = (pts @ R.T).mean(0).numpy()  # centroid in camera axes, before translation
        c0 = (pts @ cam.R.T).mean(0).numpy()
    depth = (c0[2] + float(cam.t[2])) / scale  # camera z of the centroid
    K = cam.K.numpy()
    target = template(image_size).mean(0) + np.asarray(shift, np.float64)
    x = (target[0] - K[0, 2]) / K[0, 0] * depth
    y = (target[1] - K[1, 2]) / K[1, 1] * depth
    return np.array([x - c[0], y - c[1], depth - c[2]])


def _sample_light(rng: np.random.Generator, o: SynthOptions) -> np.ndarray:
    """Random SH light (27,) channel-major (recon.lighting layout): tinted ambient + a directional source
    from the camera's hemisphere + a little band-2 variation."""
    from .lighting import SH_C0, sh_basis

    ambient = rng.uniform(*o.light_ambient)
    tint = 1.0 + rng.normal(0.0, o.light_tint, size=3)
    d = rng.normal(size=3)
    d[2] = -abs(d[2]) - 0.4  # from the camera's side (camera looks along +z)
    d /= np.linalg.norm(d)
    strength = rng.uniform(0.0, o.light_directional) * ambient / 0.75
    y = sh_basis(torch.from_numpy(d)).numpy()  # (9,)
    light = np.zeros((3, 9))
    light[:] = strength * y
    light[:, 0] += ambient / SH_C0
    light = light * tint[:, None]
    light[:, 4:] += rng.normal(0.0, o.light_band2, size=(1, 5)) * ambient / SH_C0
    return light.reshape(27)


def _sample_expression(rng: np.random.Generator, n_expr: int, o: SynthOptions) -> np.ndarray:
    """Sparse ARKit activations in [0, expr_max]; all zero with probability neutral_prob."""
    expr = np.zeros(n_expr)
    if n_expr == 0 or rng.random() < o.neutral_prob:
        return expr
    active = rng.random(n_expr) < o.expr_prob
    expr[active] = rng.uniform(0.0, o.expr_max, size=int(active.sum()))
    return expr


# ---------------------------------------------------------------------------------------- dataset


class _Resources:
    """Per-process model, renderer and layout (built lazily; never pickled to workers)."""

    def __init__(self, image_size: int, backend: str, n_albedo: Optional[int]):
        from .camera import canonical_camera
        from .coeffs import CoeffLayout
        from .morphable import MorphableModel

        self.model = MorphableModel() if n_albedo is None else MorphableModel(n_albedo=n_albedo)
        self.model.eval()
        self.layout = CoeffLayout.from_model(self.model)
        self.backend = backend
        self._renderer: Any = None
        self.camera = canonical_camera(image_size)
        self.pid = os.getpid()

    @property
    def renderer(self) -> Any:
        if self._renderer is None:
            from .render import build_renderer

            self._renderer = build_renderer(self.backend)
        return self._renderer


class SyntheticFaces(torch.utils.data.Dataset):
    """Rendered faces of `num_identities` synthetic identities, `images_per_identity` images each.

    Index i -> label i // images_per_identity (0..num_identities-1), identity = identity_offset + label
    (the global identity that seeds the shape / albedo draws), image k = i % images_per_identity.
    Item: dict(image (3,S,S) float32 [0,1], label int, identity int, coeffs (P,) float32 ground truth in
    recon.coeffs.CoeffLayout order, landmarks (68,2) float32 pixels of the rendered face, mask (1,S,S)
    coverage of the face). Deterministic from (seed, identity, k).

    background_images: optional image files whose random crops serve as backgrounds (kind 'image').
    backend: renderer backend name for recon.render.build_renderer.
    dynamic_contour: jaw landmarks 0-16 follow the silhouette under yaw, as 2D detectors annotate them
    (MorphableModel.landmark_indices); False gives the fixed 3D jaw vertices.
    batched_fetch: a DataLoader batch is rendered in one renderer call (see __getitems__).
    The returned mask is the face's coverage with its eye / mouth openings filled (they are painted dark).
    """

    def __init__(self, num_identities: int, images_per_identity: int, seed: int = 0, identity_offset: int = 0,
                 image_size: int = 112, options: Optional[SynthOptions] = None,
                 background_images: Optional[Sequence[PathLike]] = None, backend: str = "auto",
                 n_albedo: Optional[int] = None, dynamic_contour: bool = True, batched_fetch: bool = False):
        for name, val, lo in (("num_identities", num_identities, 1), ("images_per_identity", images_per_identity, 1),
                              ("identity_offset", identity_offset, 0), ("image_size", image_size, 8),
                              ("seed", seed, 0)):
            if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {val!r}")
        self.num_identities = int(num_identities)
        self.images_per_identity = int(images_per_identity)
        self.seed = int(seed)
        self.identity_offset = int(identity_offset)
        self.image_size = int(image_size)
        self.options = options or SynthOptions()
        self.background_images = [Path(p) for p in (background_images or [])]
        unknown = [k for k in self.options.backgrounds if k not in ("noise", "gradient", "shapes", "image")]
        if unknown or not self.options.backgrounds:
            raise ValueError(f"unknown background kind(s) {unknown or '(none given)'}; use noise, gradient, shapes "
                             "or image")
        if not [k for k in self.options.backgrounds if k != "image" or self.background_images]:
            raise ValueError("backgrounds=('image',) needs background_images (files whose crops fill the background)")
        self.backend = backend
        self.n_albedo = n_albedo
        self.dynamic_contour = bool(dynamic_contour)
        self.batched_fetch = bool(batched_fetch)
        self._res: Optional[_Resources] = None

    # pickling for DataLoader workers: drop the model / renderer, rebuilt lazily in the worker
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_res"] = None
        return state

    @property
    def resources(self) -> _Resources:
        if self._res is None or self._res.pid != os.getpid():
            self._res = _Resources(self.image_size, self.backend, self.n_albedo)
        return self._res

    @property
    def num_classes(self) -> int:
        return self.num_identities

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def locate(self, index: int) -> tuple[int, int, int]:
        """index -> (label, identity, image k within the identity)."""
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic images")
        label, k = divmod(index, self.images_per_identity)
        return label, self.identity_offset + label, k

    def config(self) -> dict:
        """Everything that determines the items (saved with cached copies to detect mismatches)."""
        return {"num_identities": self.num_identities, "images_per_identity": self.images_per_identity,
                "seed": self.seed, "identity_offset": self.identity_offset, "image_size": self.image_size,
                "dynamic_contour": self.dynamic_contour,
                "options": asdict(self.options), "background_images": [str(p) for p in self.background_images]}

    # ---------------------------------------------------------------------------------- sampling
    def identity_coeffs(self, identity: int) -> dict[str, np.ndarray]:
        """The per-identity draws (id (n_id,), albedo (n_albedo,3)) of a global identity."""
        return identity_coefficients(self.resources.model, self.seed, identity, self.options)

    def sample_coeffs(self, index: int) -> torch.Tensor:
        """Ground-truth coefficient vector (P,) float32 of item `index` (no rendering)."""
        res = self.resources
        model, o = res.model, self.options
        _, identity, k = self.locate(index)
        ident = self.identity_coeffs(identity)
        rng = _rng(self.seed, _STREAM_IMAGE, identity, k)
        expr = _sample_expression(rng, model.n_expr, o)
        angles = np.deg2rad([rng.uniform(-o.pitch, o.pitch), rng.uniform(-o.yaw, o.yaw),
                             rng.uniform(-o.roll, o.roll)])
        t = self._aligned_translation(ident["id"], expr, angles,
                                      scale=1.0 + rng.uniform(-o.scale, o.scale),
                                      shift=rng.uniform(-o.shift, o.shift, size=2) * self.image_size)
        light = _sample_light(rng, o)
        parts = {
            "id": ident["id"], "expr": expr, "albedo": ident["albedo"].reshape(-1),
            "rotation": angles, "translation": t, "light": light,
        }
        return self._join(parts)

    def _aligned_translation(self, ident: np.ndarray, expr: np.ndarray, angles: np.ndarray, scale: float,
                             shift: np.ndarray) -> np.ndarray:
        res = self.resources
        return aligned_translation(res.model, torch.from_numpy(ident).float(), torch.from_numpy(expr).float(),
                                   angles, self.image_size, scale=scale, shift=shift)

    def _join(self, parts: dict[str, np.ndarray]) -> torch.Tensor:
        t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None] for k, v in parts.items()}
        return self.resources.layout.join(t)[0]

    # --------------------------------------------------------------------------------- rendering
    def render_batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Render several items in one renderer call -> batched dict (image (B,3,S,S), label (B,), ...)."""
        from .face import render_face

        res = self.resources
        idx = [int(i) for i in indices]
        coeffs = torch.stack([self.sample_coeffs(i) for i in idx])
        with torch.no_grad():
            out = render_face(res.model, res.renderer, coeffs, self.image_size, K=res.camera.K,
                              layout=res.layout, dynamic_contour=self.dynamic_contour)
        images, masks = [], []
        s = self.image_size
        for b, i in enumerate(idx):
            _, identity, k = self.locate(i)
            rng = _rng(self.seed, _STREAM_BACKGROUND, identity, k)
            bg = torch.from_numpy(_background(rng, s, s, self.options.backgrounds, self.background_images))
            bg = bg.permute(2, 0, 1)
            face = out["image"][b].clamp(0.0, 1.0)
            m = out["mask"][b].clamp(0.0, 1.0)
            face, m = _fill_holes(face, m, rng)
            img = face * m + bg * (1.0 - m)
            if rng.random() < self.options.blur_prob:
                img = _gaussian_blur(img, rng.uniform(0.3, self.options.blur_sigma) * s / 112.0)
            sigma = rng.uniform(0.0, self.options.noise_sigma)
            img = img + torch.from_numpy(rng.normal(0.0, sigma, size=img.shape).astype(np.float32))
            images.append(img.clamp(0.0, 1.0))
            masks.append(m)
        labels = [self.locate(i)[0] for i in idx]
        idents = [self.locate(i)[1] for i in idx]
        return {
            "image": torch.stack(images).float(),
            "label": torch.tensor(labels, dtype=torch.long),
            "identity": torch.tensor(idents, dtype=torch.long),
            "coeffs": coeffs.float(),
            "landmarks": out["landmarks2d"].float(),
            "mask": torch.stack(masks).float(),
        }

    @staticmethod
    def _unbatch(batch: dict[str, Any], b: int) -> dict[str, Any]:
        return {
            "image": batch["image"][b],
            "label": int(batch["label"][b]),
            "identity": int(batch["identity"][b]),
            "coeffs": batch["coeffs"][b],
            "landmarks": batch["landmarks"][b],
            "mask": batch["mask"][b],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._unbatch(self.render_batch([index]), 0)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """What a DataLoader fetches per batch. With `batched_fetch` the whole batch is rendered in one
        renderer call (about 1.6x faster on CPU; pixels then agree with single items to float rounding,
        < 1e-5); without it, item by item (bit-identical to dataset[i])."""
        if not self.batched_fetch:
            return [self[i] for i in indices]
        batch = self.render_batch(indices)
        return [self._unbatch(batch, b) for b in range(len(indices))]


# ------------------------------------------------------------------------------------------- cache

CACHE_FORMAT = "lh2face-synth-imagefolder-v1"


class _Chunks(torch.utils.data.Dataset):
    """Chunks of dataset indices rendered together (one renderer call per chunk, per worker)."""

    def __init__(self, dataset: SyntheticFaces, chunks: list[tuple[int, list[int]]]):
        self.dataset, self.chunks = dataset, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[int, list[int], dict[str, Any]]:
        cid, idx = self.chunks[i]
        return cid, idx, self.dataset.render_batch(idx)


def cache_relpath(dataset: SyntheticFaces, index: int) -> str:
    """Relative PNG path of item `index` inside a cache folder: id<identity:06d>/<k:04d>.png."""
    _, identity, k = dataset.locate(index)
    return f"id{identity:06d}/{k:04d}.png"


def cache_to_folder(dataset: SyntheticFaces, out_dir: PathLike, chunk_size: int = 16, num_workers: int = 0,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Render `dataset` into an ImageFolder at out_dir (resumable; atomic per file).

    Layout: out_dir/id<identity>/<k>.png (class folders sort in label order), out_dir/meta.json (format,
    dataset config), out_dir/annotations.npz (path (N,) str relative, label (N,), identity (N,),
    coeffs (N,P) float32, landmarks (N,68,2) float32 pixels), and out_dir/.parts/ (per-chunk annotations
    that make resuming possible). Items are rendered in chunks of `chunk_size`; a chunk whose annotation
    part exists (and whose PNGs exist) is skipped, so an interrupted run continues where it stopped.
    A folder holding a different data set (or anything else) is refused unless overwrite=True, which
    re-renders every image (an earlier cache's class folders and annotations are removed first; other
    files are left alone). Returns out_dir.
    """
    from tqdm import tqdm

    if not isinstance(dataset, SyntheticFaces):
        raise TypeError(f"cache_to_folder needs a SyntheticFaces dataset, got {type(dataset).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = Path(out_dir)
    meta_path = out / "meta.json"
    meta = {"format": CACHE_FORMAT, "num_images": len(dataset), "chunk_size": int(chunk_size),
            "config": dataset.config()}
    fresh = overwrite
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        if meta_path.is_file():
            old = _read_json(meta_path)
            same = old.get("format") == CACHE_FORMAT and old.get("config") == json_roundtrip(meta["config"])
            if not same and not overwrite:
                raise FileExistsError(f"{out} holds a different synthetic data set (meta.json differs); "
                                      "pass overwrite=True (--overwrite) to re-render it or choose another folder")
            if same:
                meta["chunk_size"] = int(old.get("chunk_size", chunk_size))  # keep chunk ids stable
        elif any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} is not empty and is not a synthetic-face cache; "
                                  "pass overwrite=True (--overwrite) or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    parts_dir = out / ".parts"
    if fresh and meta_path.is_file():
        # replacing an earlier cache: drop its images and annotations so no stale class folder survives
        import re
        import shutil

        for p in out.iterdir():
            if p.is_dir() and (re.fullmatch(r"id\d{6,}", p.name) or p.name == ".parts"):
                shutil.rmtree(p)
        (out / "annotations.npz").unlink(missing_ok=True)
    write_json_atomic(meta_path, meta)
    cs = meta["chunk_size"]
    n = len(dataset)
    todo: list[tuple[int, list[int]]] = []
    for cid, start in enumerate(range(0, n, cs)):
        idx = list(range(start, min(n, start + cs)))
        done = (parts_dir / f"chunk_{cid:06d}.npz").is_file() and all(
            (out / cache_relpath(dataset, i)).is_file() for i in idx)
        if fresh or not done:
            todo.append((cid, idx))
    bar = tqdm(total=n, initial=n - sum(len(i) for _, i in todo), unit="img", desc=f"synth -> {out}",
               disable=not progress, dynamic_ncols=True)
    # spawn, not fork: the renderer's numba (OpenMP) threads make fork() after a render unsafe
    loader = torch.utils.data.DataLoader(_Chunks(dataset, todo), batch_size=None, shuffle=False,
                                         num_workers=num_workers,
                                         multiprocessing_context="spawn" if num_workers > 0 else None)
    for cid, idx, batch in loader:
        for b, i in enumerate(idx):
            save_image(out / cache_relpath(dataset, i), batch["image"][b])
        part = {"index": np.asarray(idx, np.int64), "coeffs": batch["coeffs"].numpy().astype(np.float32),
                "landmarks": batch["landmarks"].numpy().astype(np.float32)}
        _save_npz_atomic(parts_dir / f"chunk_{cid:06d}.npz", part)
        bar.update(len(idx))
    bar.close()
    _merge_annotations(dataset, out, cs)
    return out


def json_roundtrip(obj: Any) -> Any:
    """obj as it reads back from JSON (tuples -> lists), for comparing with a saved meta.json."""
    import json

    return json.loads(json.dumps(obj))


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FileExistsError(f"{path}: unreadable meta.json ({exc}); remove the folder or pass --overwrite") from exc


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def _merge_annotations(dataset: SyntheticFaces, out: Path, chunk_size: int) -> None:
    n = len(dataset)
    coeffs: Optional[np.ndarray] = None
    landmarks = np.zeros((n, 68, 2), np.float32)
    for cid, start in enumerate(range(0, n, chunk_size)):
        with np.load(out / ".parts" / f"chunk_{cid:06d}.npz") as z:
            idx = z["index"]
            if coeffs is None:
                coeffs = np.zeros((n, z["coeffs"].shape[1]), np.float32)
            coeffs[idx] = z["coeffs"]
            landmarks[idx] = z["landmarks"]
    loc = [dataset.locate(i) for i in range(n)]
    _save_npz_atomic(out / "annotations.npz", {
        "path": np.asarray([cache_relpath(dataset, i) for i in range(n)]),
        "label": np.asarray([l for l, _, _ in loc], np.int64),
        "identity": np.asarray([d for _, d, _ in loc], np.int64),
        "coeffs": coeffs if coeffs is not None else np.zeros((0, 0), np.float32),
        "landmarks": landmarks,
    })
