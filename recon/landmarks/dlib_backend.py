"""dlib backend: HOG frontal face detector + the 68-point shape predictor (works offline).

The model file comes from the `face-recognition-models` package, located with importlib so the
package itself (which needs pkg_resources) is never imported. dlib is imported lazily.
dlib reports integer pixel indices (pixel centres at integers); they are shifted by +0.5 to the
project convention, and dlib's inclusive rectangle [left, right] becomes the box [left, right + 1).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Optional

import numpy as np

from .base import DetectorUnavailable, Face, check_image

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def find_predictor_file(filename: str = PREDICTOR_FILE) -> Path:
    """Path of a model file shipped by face-recognition-models, without importing that package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            "the dlib landmark backend needs the 'face-recognition-models' package for its model file "
            f"{filename}; install it with `pip install face-recognition-models` (or `pip install -e .[landmarks]`)"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "models" / filename
        if path.is_file():
            return path
    raise DetectorUnavailable(
        f"{filename} not found in face_recognition_models ({list(spec.submodule_search_locations)}); "
        "reinstall it with `pip install --force-reinstall face-recognition-models`"
    )


def _import_dlib():
    try:
        import dlib  # noqa: PLC0415  (lazy: heavy native module)
    except ImportError as exc:
        raise DetectorUnavailable(
            "the dlib landmark backend needs dlib; install it with `pip install dlib-bin` "
            "(or `pip install -e .[landmarks]`)"
        ) from exc
    return dlib


class DlibDetector:
    """dlib HOG face detector + 68-point predictor.

    upsample: how many times dlib doubles the image before detecting (1 finds faces down to ~40 px);
    min_score: detections with a lower dlib `run` score are dropped; predictor_path: another
    68-point model file (default: the one from face-recognition-models).
    """

    name = "dlib"

    def __init__(self, upsample: int = 1, min_score: float = -0.5, predictor_path: Optional[str] = None) -> None:
        dlib = _import_dlib()
        if int(upsample) < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        path = Path(predictor_path) if predictor_path else find_predictor_file()
        if not path.is_file():
            raise DetectorUnavailable(f"{path}: no such dlib shape predictor file")
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(path))

    def __call__(self, image: np.ndarray) -> List[Face]:
        """image uint8 (H, W, 3) RGB -> faces sorted by score, landmarks in pixels (+0.5 convention)."""
        img = check_image(image)
        rects, scores, _ = self._detector.run(img, self.upsample, self.min_score)
        faces: List[Face] = []
        for rect, score in zip(rects, scores):
            shape = self._predictor(img, rect)
            pts = np.array([[shape.part(k).x, shape.part(k).y] for k in range(68)], dtype=np.float32) + 0.5
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float32)
            faces.append(Face(box=box, score=float(score), landmarks68=pts))
        faces.sort(key=lambda f: -f.score)
        return faces
