"""Landmark cache files: detect once (`lh2face landmarks DIR --out cache.npz`), train / fit many times.

File format (numpy .npz, written atomically), N images:
  paths (N,) str        image paths as given on the command line (or absolute when found in folders)
  ok (N,) bool          a face was found and the image was readable
  reasons (N,) str      "" when ok, else why not ("no face found", the read error, ...)
  image_sizes (N,2) int H, W in pixels
  boxes (N,4) float32   x0, y0, x1, y1 of the largest face (NaN when not ok)
  scores (N,) float32   detector score (NaN when not ok)
  landmarks68 (N,68,2) float32, landmarks5 (N,5,2) float32: pixels, DESIGN.md convention (NaN when not ok)
  num_faces (N,) int    faces the detector returned
  detector () str       backend name
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

import numpy as np

from lh2face.io import ImageReadError, PathLike, read_image, write_bytes_atomic

from .base import Face

CACHE_KEYS = ("paths", "ok", "reasons", "image_sizes", "boxes", "scores", "landmarks68", "landmarks5", "num_faces")


def largest_face(faces: Sequence[Face]) -> Optional[Face]:
    """The face with the largest box area (ties: the first, i.e. the most confident), or None."""
    return max(faces, key=lambda f: f.area) if faces else None


@dataclass
class LandmarkCache:
    """In-memory form of a cache file (fields as in the module docstring)."""

    paths: np.ndarray
    ok: np.ndarray
    reasons: np.ndarray
    image_sizes: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    landmarks68: np.ndarray
    landmarks5: np.ndarray
    num_faces: np.ndarray
    detector: str = "dlib"
    seconds_per_image: float = float("nan")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def detection_rate(self) -> float:
        """Fraction of images with a face (unreadable files count as misses)."""
        return float(np.mean(self.ok)) if len(self) else 0.0

    def save(self, path: PathLike) -> None:
        """Write the cache atomically (numpy .npz)."""
        buf = io.BytesIO()
        np.savez(buf, detector=np.array(self.detector), seconds_per_image=np.array(self.seconds_per_image),
                 **{k: getattr(self, k) for k in CACHE_KEYS})
        write_bytes_atomic(path, buf.getvalue())


def load_cache(path: PathLike) -> LandmarkCache:
    """Read a cache written by `lh2face landmarks`; clear error when missing or not a cache file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such landmark cache; create it with `lh2face landmarks DIR --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in CACHE_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: not a landmark cache (missing {missing}); "
                                 f"recreate it with `lh2face landmarks DIR --out {path}`")
            data = {k: z[k] for k in CACHE_KEYS}
            detector = str(z["detector"]) if "detector" in z.files else "unknown"
            spi = float(z["seconds_per_image"]) if "seconds_per_image" in z.files else float("nan")
    except (OSError, EOFError, ValueError) as exc:
        if isinstance(exc, ValueError) and "not a landmark cache" in str(exc):
            raise
        raise ValueError(f"{path}: unreadable landmark cache ({exc}); recreate it with `lh2face landmarks`") from exc
    return LandmarkCache(detector=detector, seconds_per_image=spi, **data)


def build_cache(
    paths: Iterable[PathLike],
    detector: Callable[[np.ndarray], List[Face]],
    detector_name: str = "dlib",
    progress: Optional[Callable[[int, Path, str], None]] = None,
) -> LandmarkCache:
    """Detect the largest face in each image. Unreadable images and images without a face are kept
    as rows with ok=False and the reason; nothing raises for a bad file."""
    rows = []
    t0 = time.perf_counter()
    for k, p in enumerate(paths):
        p = Path(p)
        row = dict(path=str(p), ok=False, reason="", size=(0, 0), face=None, n=0)
        try:
            img = read_image(p)
            row["size"] = img.shape[:2]
            faces = detector(img)
            row["n"] = len(faces)
            row["face"] = largest_face(faces)
            row["ok"] = row["face"] is not None
            row["reason"] = "" if row["ok"] else "no face found"
        except ImageReadError as exc:
            row["reason"] = str(exc)
        except OSError as exc:  # permissions, a folder named like an image, ...
            row["reason"] = f"{p}: cannot read ({exc})"
        rows.append(row)
        if progress is not None:
            progress(k, p, row["reason"] or "ok")
    n = len(rows)
    nan = np.float32("nan")
    cache = LandmarkCache(
        paths=np.array([r["path"] for r in rows], dtype=str),
        ok=np.array([r["ok"] for r in rows], dtype=bool),
        reasons=np.array([r["reason"] for r in rows], dtype=str),
        image_sizes=np.array([r["size"] for r in rows], dtype=np.int64).reshape(n, 2),
        boxes=np.array([r["face"].box if r["face"] else np.full(4, nan) for r in rows], np.float32).reshape(n, 4),
        scores=np.array([r["face"].score if r["face"] else nan for r in rows], np.float32),
        landmarks68=np.array([r["face"].landmarks68 if r["face"] else np.full((68, 2), nan) for r in rows],
                             np.float32).reshape(n, 68, 2),
        landmarks5=np.array([r["face"].landmarks5 if r["face"] else np.full((5, 2), nan) for r in rows],
                            np.float32).reshape(n, 5, 2),
        num_faces=np.array([r["n"] for r in rows], dtype=np.int64),
        detector=detector_name,
        seconds_per_image=(time.perf_counter() - t0) / max(n, 1),
    )
    return cache
