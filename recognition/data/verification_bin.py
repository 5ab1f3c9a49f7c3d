"""insightface verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) read with a restricted unpickler.

A .bin is a pickle of (bins, issame_list): `bins` holds 2N encoded images (JPEG bytes; sometimes numpy
uint8 arrays of those bytes), pair k being images 2k and 2k+1; `issame_list` holds N booleans. The
files were written by Python 2, so they are read with encoding='bytes'.

Unpickling can run arbitrary code, so only what such a file needs is allowed: the pickle opcodes for
bytes, lists, tuples, bools and ints, plus the few numpy globals that rebuild arrays and scalars of
non-object dtypes (and `_codecs.encode`, which protocol-2 pickles use to spell bytes). Anything else,
e.g. `os.system` or `builtins.eval`, raises UnsafePickleError before it can be called; the loaded
structure is then checked to contain only those types.
"""

from __future__ import annotations

import codecs
import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lh2face.io import atomic_write

from .transforms import decode_rgb, resize_uint8

PathLike = Union[str, os.PathLike]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something outside the allowed set (possible malicious file)."""


def _safe_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError("verification .bin: object arrays are not allowed")
    return dt


def _safe_codecs_encode(obj: Any, encoding: str = "latin1", *rest: Any) -> bytes:
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or rest:
        raise UnsafePickleError("verification .bin: _codecs.encode is only allowed as (str, 'latin1')")
    return codecs.encode(obj, "latin1")


def _numpy_attr(modules: Sequence[str], name: str) -> Optional[Callable[..., Any]]:
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    return None


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")


def _allowed_globals() -> Dict[Tuple[str, str], Callable[..., Any]]:
    allowed: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _safe_codecs_encode,
    }
    recon = _numpy_attr(_MULTIARRAY, "_reconstruct")
    scalar = _numpy_attr(_MULTIARRAY, "scalar")
    frombuf = _numpy_attr(_NUMERIC, "_frombuffer")
    for mod in _MULTIARRAY:
        if recon is not None:
            allowed[(mod, "_reconstruct")] = recon
        if scalar is not None:
            allowed[(mod, "scalar")] = scalar
    for mod in _NUMERIC:
        if frombuf is not None:
            allowed[(mod, "_frombuffer")] = frombuf
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals listed in _allowed_globals()."""

    def find_class(self, module: str, name: str) -> Any:
        fn = _allowed_globals().get((module, name))
        if fn is None:
            raise UnsafePickleError(
                f"refusing to load '{module}.{name}': a verification .bin may only contain bytes, lists, "
                "tuples, bools, ints and numpy arrays (the file may be malicious or not a .bin)"
            )
        return fn


def _check_plain(obj: Any, where: str, depth: int = 0) -> None:
    if depth > 4:
        raise UnsafePickleError(f"{where}: nested too deeply for a verification .bin")
    if isinstance(obj, (bytes, bool, int, np.bool_, np.integer)):
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(f"{where}: object array")
        return
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _check_plain(item, f"{where}[{i}]", depth + 1)
        return
    raise UnsafePickleError(f"{where}: unexpected {type(obj).__name__} in a verification .bin")


def restricted_loads(data: bytes) -> Any:
    """pickle.loads with the restricted unpickler (encoding='bytes', as for Python 2 pickles)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


class VerificationSet(NamedTuple):
    """images: uint8 tensor (2N, 3, S, S) (or the 2N encoded byte strings when decode=False);
    issame: bool array (N,); pair k is images (2k, 2k+1)."""

    images: Union[torch.Tensor, List[bytes]]
    issame: np.ndarray


def load_verification_bin(path: PathLike, image_size: Optional[int] = 112, decode: bool = True) -> VerificationSet:
    """Read an insightface verification .bin safely.

    Args:
        path: the .bin file.
        image_size: decoded images are resized to S x S if needed (None keeps them; then all must match).
        decode: False returns the raw encoded bytes instead of decoding (fast, low memory).
    Returns:
        VerificationSet(images uint8 (2N, 3, S, S) in 0..255, issame bool (N,)). Unpack as
        `images, issame = load_verification_bin(path)`; divide images by 255 for the [0, 1] convention.
    Raises:
        FileNotFoundError; UnsafePickleError for disallowed content; ValueError for a malformed set;
        lh2face.io.ImageReadError naming the image index for an undecodable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set '{path}' does not exist")
    try:
        obj = restricted_loads(path.read_bytes())
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated / not a pickle
        raise ValueError(f"{path}: not a readable verification .bin ({type(exc).__name__}: {exc})") from exc
    _check_plain(obj, str(path))
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pickled (bins, issame_list) pair")
    bins, issame = obj
    issame_arr = np.asarray([bool(v) for v in issame], dtype=bool)
    if len(bins) != 2 * len(issame_arr):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame_arr)} pairs; expected exactly 2 per pair")
    raw = [b if isinstance(b, bytes) else np.asarray(b, dtype=np.uint8).tobytes() for b in bins]
    if not decode:
        return VerificationSet(raw, issame_arr)
    decoded: List[np.ndarray] = []
    for i, data in enumerate(raw):
        img = decode_rgb(data, f"{path.name}[image {i}]")
        if image_size is not None:
            img = resize_uint8(img, image_size)
        elif decoded and img.shape != decoded[0].shape:
            raise ValueError(f"{path}: image {i} has shape {img.shape}, image 0 {decoded[0].shape}; pass image_size")
        decoded.append(img)
    if decoded:
        images = torch.from_numpy(np.stack(decoded).transpose(0, 3, 1, 2).copy())
    else:
        s = image_size or 112
        images = torch.zeros((0, 3, s, s), dtype=torch.uint8)
    return VerificationSet(images, issame_arr)


def write_verification_bin(path: PathLike, bins: Sequence[bytes], issame: Sequence[bool], protocol: int = 2) -> None:
    """Write (bins, issame_list) in the insightface layout (atomically); bins are encoded images."""
    bins = [bytes(b) for b in bins]
    flags = [bool(v) for v in issame]
    if len(bins) != 2 * len(flags):
        raise ValueError(f"write_verification_bin: {len(bins)} images for {len(flags)} pairs; need 2 per pair")
    with atomic_write(path, "wb") as fh:
        pickle.dump((bins, flags), fh, protocol=protocol)
