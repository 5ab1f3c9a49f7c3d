"""Face detection and 68 iBUG landmarks on real photos.

`build_detector(name="dlib"|"face_alignment", **options)` -> a callable image uint8 (H, W, 3) RGB
-> list[Face] (most confident first). Backends are imported lazily; building one that cannot run
here raises DetectorUnavailable with what to do.
"""

from __future__ import annotations

from typing import Any

from lh2face.registry import Registry

from .base import Detector, DetectorUnavailable, Face, check_image, inter_ocular, landmarks5_from_68

DETECTORS: Registry[Detector] = Registry("landmark detector")


@DETECTORS.register("dlib")
def _build_dlib(**options: Any) -> Detector:
    from .dlib_backend import DlibDetector

    return DlibDetector(**options)


@DETECTORS.register("face_alignment", "face-alignment", "fan")
def _build_face_alignment(**options: Any) -> Detector:
    from .face_alignment_backend import FaceAlignmentDetector

    return FaceAlignmentDetector(**options)


def build_detector(name: str = "dlib", **options: Any) -> Detector:
    """Build a landmark detector by name ("dlib" offline, or "face_alignment")."""
    return DETECTORS.build(name, **options)


__all__ = [
    "DETECTORS",
    "Detector",
    "DetectorUnavailable",
    "Face",
    "build_detector",
    "check_image",
    "inter_ocular",
    "landmarks5_from_68",
]
