"""The landmark detector interface: an image in, a list of `Face` out.

Coordinates follow DESIGN.md section 5: pixels, x right, y down, origin at the top-left corner of
the top-left pixel, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5).
Landmarks are the 68 iBUG points in iBUG order (0-16 jaw from the image-left side, 17-26 brows,
27-35 nose, 36-41 image-left eye, 42-47 image-right eye, 48-67 mouth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Protocol

import numpy as np

# iBUG 68 index groups
JAW = slice(0, 17)
LEFT_EYE = slice(36, 42)  # the eye on the image-left side (the subject's right eye)
RIGHT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_LEFT = 48
MOUTH_RIGHT = 54


def landmarks5_from_68(landmarks68: np.ndarray) -> np.ndarray:
    """68 iBUG points (68,2) -> the 5 alignment points (5,2) in ArcFace template order.

    Order: image-left eye centre, image-right eye centre, nose tip, image-left mouth corner,
    image-right mouth corner. Works on any leading batch shape (..., 68, 2).
    """
    lm = np.asarray(landmarks68, dtype=np.float32)
    if lm.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks68 must have shape (..., 68, 2), got {lm.shape}")
    return np.stack(
        [
            lm[..., LEFT_EYE, :].mean(axis=-2),
            lm[..., RIGHT_EYE, :].mean(axis=-2),
            lm[..., NOSE_TIP, :],
            lm[..., MOUTH_LEFT, :],
            lm[..., MOUTH_RIGHT, :],
        ],
        axis=-2,
    ).astype(np.float32)


def inter_ocular(landmarks68: np.ndarray) -> float:
    """Distance in pixels between the outer eye corners (points 36 and 45), the usual NME norm."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return float(np.linalg.norm(lm[36] - lm[45]))


@dataclass
class Face:
    """One detected face.

    box: (4,) float32 x0, y0, x1, y1 in pixels (corners, so x1 - x0 is the width);
    score: detector confidence (backend specific scale; larger is more confident);
    landmarks68: (68, 2) float32 iBUG points; landmarks5: (5, 2) float32 alignment points.
    """

    box: np.ndarray
    score: float
    landmarks68: np.ndarray
    landmarks5: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        self.landmarks68 = np.asarray(self.landmarks68, dtype=np.float32).reshape(68, 2)
        if self.landmarks5 is None:
            self.landmarks5 = landmarks5_from_68(self.landmarks68)
        self.landmarks5 = np.asarray(self.landmarks5, dtype=np.float32).reshape(5, 2)
        self.score = float(self.score)

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class Detector(Protocol):
    """Callable: image uint8 (H, W, 3) RGB (or (H, W) grey) -> list of Face, most confident first."""

    name: str

    def __call__(self, image: np.ndarray) -> List[Face]: ...


class DetectorUnavailable(RuntimeError):
    """A landmark backend cannot run here (package or weights missing); the message says what to do."""


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a detector input and return it as a C-contiguous uint8 (H, W, 3) RGB array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(
            f"detector input must be uint8 (H, W, 3) RGB as returned by lh2face.io.read_image, got {arr.dtype}"
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"detector input must be (H, W, 3) RGB, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])
