"""Raw photo -> aligned face crop(s) + landmarks: the one detection + alignment path.

`lh2face align` (recon.align_photos), `lh2face export / visualize` on photos (recon.photos) and
`lh2face embed` on raw photos (joint.embed) all call `detect_and_align`: detect faces and their 68 iBUG
landmarks (a recon.landmarks detector, or faces from a landmark cache), keep the largest face (or all,
largest first) and warp each to the ArcFace template scaled to `size` (lh2face.align.align_face).

Per-photo problems raise a `PhotoError` whose text is the reason the batch commands list:
"unreadable: ...", "no face found", "detector failed: <Type>: ...". A detector that cannot run here at
all (recon.landmarks.DetectorUnavailable) is not a per-photo problem and propagates as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lh2face.io import ImageReadError, PathLike, read_image

FACE_CHOICES = ("largest", "all")

DetectorFn = Callable[[np.ndarray], Sequence[Any]]


class PhotoError(ValueError):
    """A photo that cannot be used; str(exc) is the reason ("unreadable: ...", "no face found", ...)."""


class UnreadablePhoto(PhotoError):
    """The file cannot be read as an image."""


class NoFaceError(PhotoError):
    """The detector found no face in the photo."""

    def __init__(self, message: str = "no face found") -> None:
        super().__init__(message)


class DetectorFailed(PhotoError):
    """The detector raised on this photo (other photos may still work)."""


@dataclass
class AlignedFace:
    """One detected face brought to the template.

    face: recon.landmarks.Face in photo pixels; crop: uint8 (size,size,3); matrix: (2,3) float64 photo ->
    crop similarity; landmarks68: (68,2) float32 and landmarks5: (5,2) float32, in crop pixels."""

    face: Any
    crop: np.ndarray
    matrix: np.ndarray
    landmarks68: np.ndarray
    landmarks5: np.ndarray


@dataclass
class PhotoFaces:
    """detect_and_align's result: `faces` the aligned faces (largest first), `num_detected` all faces found."""

    faces: List[AlignedFace]
    num_detected: int


_BUILT: Dict[Tuple[str, Tuple[Tuple[str, Any], ...]], DetectorFn] = {}


class LazyDetector:
    """A detector given by name (recon.landmarks.build_detector, with `options`) or as a callable, built on
    the first `get()`; building may raise recon.landmarks.DetectorUnavailable.

    A detector built by name is kept for the process and reused by every later LazyDetector with the same
    name and options: loading dlib's 68-point model takes seconds, detecting a photo a tenth of that."""

    def __init__(self, spec: Union[str, DetectorFn], options: Optional[dict] = None) -> None:
        self.spec = spec
        self.options = dict(options or {})
        self._built: Optional[DetectorFn] = spec if callable(spec) else None

    @property
    def name(self) -> str:
        return self.spec if isinstance(self.spec, str) else str(getattr(self.spec, "name", "custom"))

    def get(self) -> DetectorFn:
        if self._built is None:
            from .landmarks import build_detector

            try:
                key: Optional[tuple] = (str(self.spec), tuple(sorted(self.options.items())))
                hash(key)
            except TypeError:  # unhashable options: build, do not keep
                key = None
            if key is not None and key in _BUILT:
                self._built = _BUILT[key]
            else:
                self._built = build_detector(str(self.spec), **self.options)
                if key is not None:
                    _BUILT[key] = self._built
        return self._built


def read_photo(path: PathLike) -> np.ndarray:
    """uint8 (H,W,3) RGB; raises UnreadablePhoto ("unreadable: ...") for a missing / corrupt / unreadable file."""
    try:
        return read_image(path)
    except ImageReadError as exc:
        raise UnreadablePhoto(f"unreadable: {exc}") from None
    except OSError as exc:  # permissions, a folder named like an image, ...
        raise UnreadablePhoto(f"unreadable: {path}: {exc}") from None


def choose_faces(faces: Sequence[Any], mode: str = "largest") -> List[Any]:
    """largest: [the face with the largest box] ([] when none); all: every face, largest first (ties keep
    the detector's order, i.e. the most confident first)."""
    if mode not in FACE_CHOICES:
        raise ValueError(f"faces must be one of {', '.join(FACE_CHOICES)}, got {mode!r}")
    picked = sorted(faces, key=lambda f: -f.area)  # stable
    return picked[:1] if mode == "largest" else picked


def align_detected(image: np.ndarray, face: Any, size: int) -> AlignedFace:
    """Warp one detected face (recon.landmarks.Face, photo pixels) of uint8 (H,W,3) `image` to the template
    scaled to `size`, its landmarks mapped into the crop."""
    from lh2face.align import align_face, transform_points

    crop, m = align_face(image, face.landmarks5, size=size, return_matrix=True)
    return AlignedFace(face=face, crop=crop, matrix=m,
                       landmarks68=transform_points(face.landmarks68, m).astype(np.float32),
                       landmarks5=transform_points(face.landmarks5, m).astype(np.float32))


def detect_and_align(image: np.ndarray, detector: Union[LazyDetector, DetectorFn], size: int = 112,
                     faces: str = "largest") -> PhotoFaces:
    """Detect the faces of uint8 (H,W,3) `image` and align the largest one (faces="largest") or every one
    (faces="all", largest first) to the ArcFace template scaled to `size` pixels.

    detector: a LazyDetector or a callable image -> list of recon.landmarks.Face. Raises NoFaceError when
    nothing is found, DetectorFailed when the detector raises on this image; DetectorUnavailable (and
    errors building a LazyDetector) propagate."""
    from .landmarks.base import DetectorUnavailable

    fn = detector.get() if isinstance(detector, LazyDetector) else detector
    try:
        found = list(fn(image))
    except DetectorUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad photo must not stop the batch
        raise DetectorFailed(f"detector failed: {type(exc).__name__}: {exc}") from exc
    chosen = choose_faces(found, faces)
    if not chosen:
        raise NoFaceError()
    return PhotoFaces([align_detected(image, f, size) for f in chosen], len(found))


__all__ = ["AlignedFace", "DetectorFailed", "FACE_CHOICES", "LazyDetector", "NoFaceError", "PhotoError",
           "PhotoFaces", "UnreadablePhoto", "align_detected", "choose_faces", "detect_and_align", "read_photo"]
