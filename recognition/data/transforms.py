"""Image helpers for the datasets: decode to RGB uint8, resize, to float tensor, flip, and a collate that
drops unreadable samples."""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lh2face.io import ImageReadError, decode_image

logger = logging.getLogger("recognition.data")

ON_ERROR_CHOICES = ("raise", "skip")


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


def _pnm_maxval(data: bytes) -> Optional[float]:
    """maxval field of a binary/ASCII PGM/PPM header (magic, width, height, maxval; '#' comments)."""
    tokens: List[bytes] = []
    for line in data[:512].split(b"\n"):
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 4:
            break
    try:
        return float(int(tokens[3])) if tokens and tokens[0] in (b"P2", b"P5", b"P3", b"P6") else None
    except (IndexError, ValueError):
        return None


def _rescale_high_bit_depth(data: bytes) -> Optional[np.ndarray]:
    """16-bit / 32-bit / float greyscale images (e.g. 16-bit PGM): scale to uint8 RGB; None if not such."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
                return None
            im.load()
            arr = np.asarray(im, dtype=np.float64)
            maxval = _pnm_maxval(data) if im.format == "PPM" else None
            if maxval is None:
                maxval = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
    except Exception:  # noqa: BLE001 - anything unreadable is left to decode_image's error path
        return None
    grey = np.clip(np.rint(arr / maxval * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, 3) RGB. Grey, palette, alpha, CMYK and 16-bit grey become RGB.

    Raises ImageReadError naming `name` for empty, truncated or non-image data.
    """
    from PIL import Image

    try:
        hi = _rescale_high_bit_depth(data) if data else None
        if hi is not None:
            return hi
        img = decode_image(data, name=name, mode="RGB")
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{name}: image too large ({exc}); check the file") from exc
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ImageReadError(f"{name}: decoded to shape {img.shape}, expected (H, W, 3)")
    return img


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 array (H,W), (H,W,1), (H,W,3) or (H,W,4) -> (H,W,3): grey repeated, alpha dropped."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image, got dtype {img.dtype}; convert with lh2face.io.to_uint8")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def resize_uint8(image: np.ndarray, size: Union[int, Tuple[int, int]]) -> np.ndarray:
    """Resize uint8 (H, W, 3) to size (int: square, or (height, width)) with PIL bilinear (antialiased).

    A no-op when the size already matches. Aspect ratio is not preserved (face crops are near-square).
    """
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if image.shape[0] == h and image.shape[1] == w:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def load_sample(data: bytes, name: str, image_size: Optional[int]) -> torch.Tensor:
    """Encoded bytes -> float (3, S, S) in [0, 1] (resized when image_size is given)."""
    img = decode_rgb(data, name)
    if image_size is not None:
        img = resize_uint8(img, image_size)
    return to_tensor(img)


class RandomHorizontalFlip:
    """Mirror a (C, H, W) tensor left-right with probability p (torch RNG; DataLoader seeds workers)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.p > 0 and torch.rand(()) < self.p:
            return image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


Transform = Callable[[torch.Tensor], torch.Tensor]


class CollatedBatch(tuple):
    """A collated batch (a tuple, e.g. (images, labels)) with `.skipped`: samples dropped as unreadable."""

    skipped: int

    def __new__(cls, items: Sequence[Any], skipped: int = 0) -> "CollatedBatch":
        obj = super().__new__(cls, items)
        obj.skipped = int(skipped)
        return obj

    def __reduce__(self):  # keep .skipped across DataLoader worker queues
        return (CollatedBatch, (tuple(self), self.skipped))


def collate_skip_none(batch: List[Any]) -> Any:
    """default_collate over the samples that are not None, counting the dropped ones.

    Returns a CollatedBatch (a tuple, so `images, labels = batch` works) with `.skipped`; for dict samples
    a dict with an extra int entry "skipped". When every sample is None, returns None and logs a warning:
    the training loop should skip that step. Use with DataLoader(collate_fn=collate_skip_none).
    Note: pin_memory=True rebuilds tuples and drops `.skipped`; count len(labels) against the batch size there.
    """
    from torch.utils.data import default_collate

    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if skipped:
        logger.debug("collate_skip_none: dropped %d unreadable sample(s) of %d", skipped, len(batch))
    if not kept:
        logger.warning("collate_skip_none: all %d samples of a batch were unreadable; batch dropped", len(batch))
        return None
    out = default_collate(kept)
    if isinstance(out, dict):
        out["skipped"] = skipped
        return out
    if isinstance(out, (tuple, list)):
        return CollatedBatch(out, skipped)
    return out
