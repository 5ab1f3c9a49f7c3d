"""File I/O shared by every package: atomic writes, images, JSON and checkpoints.

Nothing here leaves a half-written file behind: data goes to a temporary file in the destination
folder, is flushed and fsynced, then renamed over the target (atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """An image file is missing, empty, truncated or not an image."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or fails its checksum."""


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success rename it onto `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Write `obj` as strict JSON: NaN and +-inf become null (JSON has no literal for them); numpy
    scalars / arrays, torch tensors and paths are converted."""
    text = json.dumps(_finite(obj), indent=indent, sort_keys=False, default=_json_default, allow_nan=False)
    write_text_atomic(path, text + "\n")


def _finite(o: Any) -> Any:
    """`o` with every non-finite float (also inside dicts / lists / tuples) replaced by None."""
    if isinstance(o, float):
        return o if np.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return _finite(float(o))
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, Path):
        return str(o)
    try:  # torch tensors without importing torch at module import
        return _finite(o.tolist())
    except AttributeError:
        raise TypeError(f"cannot serialise {type(o).__name__} to JSON") from None


# ----------------------------------------------------------------------------------------------- images


def decode_image(data: bytes, name: str = "<bytes>", mode: str = "RGB") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, PGM, ...) to uint8 (H, W, 3) for RGB or (H, W) for 'L'.

    Grey images are expanded to RGB when mode='RGB'; alpha is dropped. Raises ImageReadError naming
    `name` when the bytes are empty or not a decodable image.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes); remove it or replace it with a valid image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = im.convert(mode)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{name}: not a readable image ({exc}); check or remove the file") from exc


def read_image(path: PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) (mode 'RGB') or (H, W) (mode 'L')."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    return decode_image(path.read_bytes(), name=str(path), mode=mode)


def to_uint8(image: Any) -> np.ndarray:
    """Float image in [0, 1] as (C,H,W) tensor/array or (H,W,C) array -> uint8 (H, W, C) / (H, W)."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def save_image(path: PathLike, image: Any) -> None:
    """Save an image atomically; format from the suffix. Accepts uint8 (H,W[,C]) or float [0,1] (C,H,W)/(H,W,C).

    A uint16 (H, W) array is written as a 16-bit greyscale PNG.
    """
    from PIL import Image

    path = Path(path)
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise ValueError(f"16-bit images must be (H, W), got {arr.shape}")
        im = Image.fromarray(arr.astype(np.uint16))
    else:
        im = Image.fromarray(to_uint8(arr))
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".pgm": "PPM"}.get(
        path.suffix.lower()
    )
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix; use .png or .jpg")
    im.save(buf, format=fmt)
    write_bytes_atomic(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ checkpoints

_CKPT_MAGIC = b"LH2FACE-CKPT-1\n"


def save_checkpoint(path: PathLike, state: Any) -> None:
    """torch.save `state` atomically, followed by a SHA-256 trailer so truncation is detected on load."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).digest()
    write_bytes_atomic(path, _CKPT_MAGIC + payload + digest)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint written by save_checkpoint; raises CheckpointError if missing or corrupt."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    data = path.read_bytes()
    if not data.startswith(_CKPT_MAGIC) or len(data) < len(_CKPT_MAGIC) + 32:
        raise CheckpointError(f"{path}: not an lh2face checkpoint or truncated")
    payload, digest = data[len(_CKPT_MAGIC) : -32], data[-32:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt checkpoint)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
