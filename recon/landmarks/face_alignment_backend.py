"""face_alignment backend (Bulat & Tzimiropoulos' FAN, package `face-alignment`).

It is optional: the package is not a dependency, and it downloads its weights (a face detector
and the 2D-FAN landmark network) into torch hub's checkpoint folder on first use. Offline, or
without the package, construction raises DetectorUnavailable with the way out: pre-seed the
weights or use the dlib backend. Its landmarks are numpy pixel indices (pixel centres at integers);
they are shifted by `pixel_offset` (+0.5) to the project convention.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, List, Optional, Sequence

import numpy as np

from .base import DetectorUnavailable, Face, check_image


def torch_hub_checkpoints() -> str:
    """The folder where face_alignment caches its downloaded weights (torch hub `checkpoints/`)."""
    try:
        import torch.hub

        return os.path.join(torch.hub.get_dir(), "checkpoints")
    except Exception:  # pragma: no cover - torch always present in this project
        home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
        return os.path.join(home, "hub", "checkpoints")


def _offline_message(reason: str) -> str:
    return (
        f"face_alignment backend unavailable: {reason}. It downloads its weights (the face detector, "
        "e.g. s3fd-*.pth, and the landmark network 2DFAN4*.zip) on first use. Either run it once on a "
        "machine with internet access and copy those files into "
        f"{torch_hub_checkpoints()} (torch hub's checkpoint cache; set TORCH_HOME to move it), "
        "or use the offline backend: `--detector dlib` (build_detector('dlib'))."
    )


def _landmarks_type_2d(fa_module: Any) -> Any:
    """LandmarksType for 2D points across face_alignment versions (TWO_D in >= 1.4, _2D before)."""
    lt = getattr(fa_module, "LandmarksType", None)
    if lt is None:
        raise DetectorUnavailable(_offline_message("the installed face_alignment has no LandmarksType"))
    for attr in ("TWO_D", "_2D"):
        if hasattr(lt, attr):
            return getattr(lt, attr)
    raise DetectorUnavailable(_offline_message("the installed face_alignment has no 2D landmarks type"))


class FaceAlignmentDetector:
    """Wraps `face_alignment.FaceAlignment(LandmarksType 2D, device, flip_input, face_detector)`.

    device: torch device string ("cpu", "cuda"); face_detector: its detector name ("sfd",
    "blazeface", "dlib"); flip_input: test-time flip averaging; pixel_offset: added to its points.
    """

    name = "face_alignment"

    def __init__(
        self,
        device: str = "cpu",
        face_detector: str = "sfd",
        flip_input: bool = False,
        pixel_offset: float = 0.5,
        module: Optional[Any] = None,
    ) -> None:
        if module is None:
            try:
                module = importlib.import_module("face_alignment")
            except ImportError as exc:
                raise DetectorUnavailable(
                    _offline_message("the package `face-alignment` is not installed "
                                     "(pip install face-alignment)")
                ) from exc
        self.pixel_offset = float(pixel_offset)
        try:
            self._fa = module.FaceAlignment(
                _landmarks_type_2d(module), device=device, flip_input=bool(flip_input), face_detector=face_detector
            )
        except DetectorUnavailable:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            # urllib.error.URLError is an OSError; a truncated download raises RuntimeError / BadZipFile
            raise DetectorUnavailable(_offline_message(f"could not load its weights ({type(exc).__name__}: {exc})")) from exc

    def __call__(self, image: np.ndarray) -> List[Face]:
        """image uint8 (H, W, 3) RGB -> faces sorted by detector score."""
        img = check_image(image)
        out = self._fa.get_landmarks_from_image(img, return_bboxes=True)
        if isinstance(out, tuple):
            landmarks, boxes = out[0], out[-1]
        else:  # very old versions: landmarks only
            landmarks, boxes = out, None
        if landmarks is None:
            return []
        faces: List[Face] = []
        for k, lm in enumerate(landmarks):
            pts = np.asarray(lm, dtype=np.float32)[:, :2] + self.pixel_offset
            if boxes is not None and k < len(boxes):
                b = np.asarray(boxes[k], dtype=np.float32).reshape(-1)
                box, score = b[:4], float(b[4]) if b.size > 4 else 1.0
            else:
                box, score = _box_from_points(pts), 1.0
            faces.append(Face(box=box, score=score, landmarks68=pts))
        faces.sort(key=lambda f: -f.score)
        return faces


def _box_from_points(pts: Sequence[Sequence[float]]) -> np.ndarray:
    p = np.asarray(pts, dtype=np.float32)
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()], dtype=np.float32)
