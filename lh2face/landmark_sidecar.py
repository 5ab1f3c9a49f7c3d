"""The landmark sidecar of an aligned ImageFolder (written by `lh2face align`, read by training).

An aligned set is ``DIR/<identity>/<name>.png`` crops (ArcFace template scaled to ``size``) plus one
file ``DIR/landmarks.npz`` (numpy archive, written atomically; no pickles), N rows, one per crop:

  format () str           "lh2face-aligned-v1"
  size () int             side of the square crops in pixels
  files (N,) str          crop path relative to DIR, "/"-separated (e.g. "Hu_Jintao/Hu_Jintao_0001.png")
  landmarks68 (N,68,2) float32   the 68 iBUG points in crop pixels (DESIGN.md section 5 convention)
  landmarks5 (N,5,2) float32     the 5 alignment points in crop pixels
  matrix (N,2,3) float64  source photo pixels -> crop pixels (similarity, lh2face.align convention)
  score (N,) float32      detector score of the face (backend scale; NaN when it came from elsewhere)
  source (N,) str         the source photo's path
  face_index (N,) int     which detected face of the source (0 = the largest / most confident)
  detector () str         backend name ("dlib", "face_alignment", or "cache:<file>")

Both recon (the aligner) and recognition (the data set) import this module; it depends on numpy and
lh2face.io only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from lh2face.io import PathLike, write_bytes_atomic

SIDECAR_NAME = "landmarks.npz"
SIDECAR_FORMAT = "lh2face-aligned-v1"
ROW_KEYS = ("files", "landmarks68", "landmarks5", "matrix", "score", "source", "face_index")
ROW_SHAPES = {"landmarks68": (68, 2), "landmarks5": (5, 2), "matrix": (2, 3)}


class SidecarError(ValueError):
    """A sidecar file that is missing, unreadable or does not match its images; the message names the
    file (and the row) and what to do."""


@dataclass
class SidecarRow:
    """One aligned crop: `file` relative to the set's root; arrays in crop pixels (see module docstring)."""

    file: str
    landmarks68: np.ndarray
    landmarks5: np.ndarray
    matrix: np.ndarray
    score: float
    source: str
    face_index: int = 0


@dataclass
class LandmarkSidecar:
    """All rows of a sidecar, keyed by relative crop path (insertion order kept)."""

    size: int
    detector: str = "dlib"
    rows: Dict[str, SidecarRow] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: SidecarRow) -> None:
        """Insert or replace the row of `row.file`."""
        self.rows[row.file] = row

    def sources(self) -> set:
        """Source photo paths that have at least one row."""
        return {r.source for r in self.rows.values()}

    def save(self, path: PathLike) -> None:
        """Write the sidecar atomically (temp file, then rename)."""
        rows = list(self.rows.values())
        n = len(rows)
        arrays = {
            "format": np.array(SIDECAR_FORMAT),
            "size": np.array(int(self.size)),
            "detector": np.array(str(self.detector)),
            "files": np.array([r.file for r in rows], dtype=str).reshape(n),
            "landmarks68": np.array([r.landmarks68 for r in rows], np.float32).reshape(n, 68, 2),
            "landmarks5": np.array([r.landmarks5 for r in rows], np.float32).reshape(n, 5, 2),
            "matrix": np.array([r.matrix for r in rows], np.float64).reshape(n, 2, 3),
            "score": np.array([r.score for r in rows], np.float32).reshape(n),
            "source": np.array([r.source for r in rows], dtype=str).reshape(n),
            "face_index": np.array([r.face_index for r in rows], np.int64).reshape(n),
        }
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes_atomic(path, buf.getvalue())


def sidecar_path(root: PathLike) -> Path:
    """Where the sidecar of the aligned set at `root` lives."""
    return Path(root) / SIDECAR_NAME


def load_sidecar(path: PathLike) -> LandmarkSidecar:
    """Read and check a sidecar: every key present, every array with N rows of the right shape, finite
    landmarks, unique file names. Raises SidecarError naming the file and the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise SidecarError(f"{path}: no such landmark sidecar; create the aligned set with `lh2face align`")
    redo = f"rerun `lh2face align ... --out {path.parent}` to rewrite it"
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("size",) + ROW_KEYS if k not in z.files]
            if missing:
                raise SidecarError(f"{path}: not a landmark sidecar (missing {', '.join(missing)}); {redo}")
            data = {k: z[k] for k in ROW_KEYS}
            size = int(z["size"])
            detector = str(z["detector"]) if "detector" in z.files else "unknown"
    except SidecarError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise SidecarError(f"{path}: unreadable landmark sidecar ({exc}); {redo}") from exc
    files = data["files"]
    if files.ndim != 1:
        raise SidecarError(f"{path}: 'files' has shape {files.shape}, expected (N,); {redo}")
    n = len(files)
    for key in ROW_KEYS[1:]:
        want = (n,) + ROW_SHAPES.get(key, ())
        if data[key].shape != want:
            raise SidecarError(f"{path}: '{key}' has shape {data[key].shape}, expected {want} "
                               f"(one row per crop, {n} crops); {redo}")
    if size < 1:
        raise SidecarError(f"{path}: crop size {size} is not positive; {redo}")
    side = LandmarkSidecar(size=size, detector=detector)
    for i in range(n):
        name = str(files[i])
        for key in ("landmarks68", "landmarks5", "matrix"):
            if not np.isfinite(data[key][i]).all():
                raise SidecarError(f"{path}: row {i} ({name}): '{key}' has NaN or inf; {redo}")
        if name in side.rows:
            raise SidecarError(f"{path}: row {i}: file {name} appears twice; {redo}")
        side.add(SidecarRow(file=name, landmarks68=data["landmarks68"][i], landmarks5=data["landmarks5"][i],
                            matrix=data["matrix"][i], score=float(data["score"][i]), source=str(data["source"][i]),
                            face_index=int(data["face_index"][i])))
    return side


def landmarks_for_files(sidecar: LandmarkSidecar, root: PathLike, files: Sequence[PathLike],
                        sidecar_file: Optional[PathLike] = None) -> np.ndarray:
    """(M,68,2) float32 crop-pixel landmarks of `files` (paths under `root`), in that order.

    Raises SidecarError naming the sidecar and the first image that has no row."""
    root = Path(root)
    where = Path(sidecar_file) if sidecar_file is not None else sidecar_path(root)
    out: List[np.ndarray] = []
    for f in files:
        rel = Path(f).relative_to(root).as_posix()
        row = sidecar.rows.get(rel)
        if row is None:
            raise SidecarError(f"{where}: no row for image {rel} ({len(sidecar)} rows); rerun `lh2face align` "
                               f"into {root} or remove that image")
        out.append(np.asarray(row.landmarks68, np.float32))
    return np.stack(out).reshape(len(out), 68, 2) if out else np.zeros((0, 68, 2), np.float32)


__all__ = [
    "SIDECAR_NAME",
    "SIDECAR_FORMAT",
    "SidecarError",
    "SidecarRow",
    "LandmarkSidecar",
    "sidecar_path",
    "load_sidecar",
    "landmarks_for_files",
]
