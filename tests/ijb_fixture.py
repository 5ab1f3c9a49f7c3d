"""Builder of a tiny IJB-like set in the exact insightface meta-file format, with known answers.

Five templates of two subjects; every face image is a flat colour (inside the face region for the
loose crops, on a grey background), so with the embedding "mean RGB of the aligned crop" every
image feature, template feature and pair score is known by hand (see EXPECTED_* below).

Images (colour in [0, 1] = uint8 / 255, detector score):

    image   template media  colour           det   subject
    1.png   1        10     (1.0, 0,   0)    1.0   A
    2.png   1        10     (0.6, 0,   0)    1.0   A     -> media 10 mean (0.8, 0, 0)
    3.png   1        11     (0,   0.8, 0)    1.0   A
    4.png   2        20     (0.8, 0,   0)    1.0   A
    5.png   3        30     (0,   0,   0.8)  0.5   B
    6.png   3        31     (0,   0.4, 0)    1.0   B
    7.png   4        40     (0,   0.4, 0.4)  0.9   B
    8.png   5        10     (0,   0.8, 0)    1.0   A     (media id 10 reused by another template)

With flip-test the image feature is 2 * colour (a flat image is its own mirror). Default protocol
(norm weighting on, detector score on) -> template directions:
T1 = media means (1.6,0,0) + (0,1.6,0) -> (1,1,0)/sqrt2; T2 = (1,0,0); T3 = (0,0,0.8)+(0,0.8,0)
-> (0,1,1)/sqrt2; T4 = (0,1,1)/sqrt2; T5 = (0,1,0).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from lh2face.io import save_image

# The 112x112 ArcFace 5-point template (DESIGN.md section 5): left eye, right eye, nose, mouth corners.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

# name, template id, media id, colour uint8 RGB, detector score
IMAGES: List[Tuple[str, int, int, Tuple[int, int, int], float]] = [
    ("1.png", 1, 10, (255, 0, 0), 1.0),
    ("2.png", 1, 10, (153, 0, 0), 1.0),
    ("3.png", 1, 11, (0, 204, 0), 1.0),
    ("4.png", 2, 20, (204, 0, 0), 1.0),
    ("5.png", 3, 30, (0, 0, 204), 0.5),
    ("6.png", 3, 31, (0, 102, 0), 1.0),
    ("7.png", 4, 40, (0, 102, 102), 0.9),
    ("8.png", 5, 10, (0, 204, 0), 1.0),
]

# template pairs: t1, t2, label
PAIRS: List[Tuple[int, int, int]] = [
    (1, 2, 1),
    (3, 4, 1),
    (2, 5, 1),
    (1, 3, 0),
    (2, 3, 0),
    (1, 4, 0),
    (2, 4, 0),
]

R2 = 1.0 / math.sqrt(2.0)
#: pair scores under the default protocol (flip, norm weighting, detector score), in PAIRS order.
EXPECTED_SCORES = np.array([R2, 1.0, 0.0, 0.5, 0.0, 0.5, 0.0])
#: norm weighting off (each image feature normalised), detector score on: T3 = (0,1,0.5)/sqrt(1.25).
EXPECTED_SCORES_NO_NORM = np.array(
    [R2, 1.5 / math.sqrt(2.5), 0.0, 1.0 / math.sqrt(2.5), 0.0, 0.5, 0.0]
)
#: norm weighting on, detector score off: T3 = (0,0.8,1.6) -> (0,1,2)/sqrt5.
EXPECTED_SCORES_NO_DET = np.array([R2, 3.0 / math.sqrt(10.0), 0.0, 1.0 / math.sqrt(10.0), 0.0, 0.5, 0.0])
#: unit template features (default protocol), rows for template ids 1..5.
EXPECTED_TEMPLATE_FEATS = np.array(
    [[R2, R2, 0.0], [1.0, 0.0, 0.0], [0.0, R2, R2], [0.0, R2, R2], [0.0, 1.0, 0.0]]
)
#: ROC of EXPECTED_SCORES: genuine {0.707, 1, 0}, impostor {0.5, 0, 0.5, 0}.
EXPECTED_TAR = {0.25: 2.0 / 3.0, 0.5: 2.0 / 3.0, 1.0: 1.0}
EXPECTED_AUC = 0.75

# loose-crop geometry per image: (scale, x offset, y offset); the aligned crop covers
# [ox, ox + 112 s) x [oy, oy + 112 s) of the loose crop.
_GEOMETRY = [(1.0, 40, 30), (1.25, 25, 35), (1.0, 10, 50), (1.25, 45, 20)]
BACKGROUND = (128, 128, 128)


def colours_float() -> np.ndarray:
    """(8, 3) image colours in [0, 1], IMAGES order."""
    return np.array([c for _, _, _, c, _ in IMAGES], dtype=np.float64) / 255.0


def build_ijb_fixture(
    root: Path,
    target: str = "IJBB",
    mode: str = "loose",
    landmarks_file: bool = True,
    shuffle_landmark_rows: bool = True,
) -> Dict[str, object]:
    """Write the set under ``root``: meta/<t>_*.txt and loose_crop/<name>.

    mode: "loose" writes larger images with the face somewhere inside (landmarks place it),
    "aligned" writes 112x112 flat crops with the template as landmarks.
    shuffle_landmark_rows writes the 5-point file in reverse order (matching is by name).
    Returns paths and the image table.
    """
    root = Path(root)
    t = target.lower()
    meta = root / "meta"
    crops = root / "loose_crop"
    meta.mkdir(parents=True, exist_ok=True)
    crops.mkdir(parents=True, exist_ok=True)
    lm_lines = []
    for i, (name, tid, mid, colour, det) in enumerate(IMAGES):
        if mode == "aligned":
            img = np.empty((112, 112, 3), dtype=np.uint8)
            img[:] = colour
            lms = TEMPLATE_112
        elif mode == "loose":
            s, ox, oy = _GEOMETRY[i % len(_GEOMETRY)]
            side = int(math.ceil(112 * s))
            h, w = oy + side + 30, ox + side + 40
            img = np.empty((h, w, 3), dtype=np.uint8)
            img[:] = BACKGROUND
            m = 6  # margin so interpolation at the crop border only sees the face colour
            img[oy - m : oy + side + m, ox - m : ox + side + m] = colour
            lms = TEMPLATE_112 * s + np.array([ox, oy], dtype=np.float64)
        else:
            raise ValueError(f"mode must be 'loose' or 'aligned', got {mode!r}")
        save_image(crops / name, img)
        coords = " ".join(f"{v:.4f}" for v in lms.reshape(-1))
        lm_lines.append(f"{name} {coords} {det:.3f}")
    if shuffle_landmark_rows:
        lm_lines = lm_lines[::-1]
    (meta / f"{t}_face_tid_mid.txt").write_text(
        "".join(f"{name} {tid} {mid}\n" for name, tid, mid, _, _ in IMAGES)
    )
    (meta / f"{t}_template_pair_label.txt").write_text("".join(f"{a} {b} {lab}\n" for a, b, lab in PAIRS))
    if landmarks_file:
        (meta / f"{t}_name_5pts_score.txt").write_text("\n".join(lm_lines) + "\n")
    return {"root": root, "meta": meta, "images": crops, "target": target}
