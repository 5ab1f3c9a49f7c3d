"""Turn raw photos into an aligned ImageFolder with a landmark sidecar (what `lh2face align` runs).

`align_photos(photos, out_dir, ...)` detects faces and their 68 iBUG landmarks (recon.landmarks, or an
existing `lh2face landmarks` cache), takes the 5 alignment points, warps each face to the ArcFace template
scaled to `size` (recon.detect_align.detect_and_align: the same steps as `lh2face embed` on raw photos and
export / visualize on photos) and writes

  out_dir/<identity>/<stem>.png       one PNG crop per photo (faces="largest"), written atomically;
  out_dir/<identity>/<stem>_<k>.png   faces="all": face k of the photo (k = 0 the largest);
  out_dir/landmarks.npz               the sidecar (format: lh2face.landmark_sidecar), rewritten
                                      atomically with the union of old and new rows;
  out_dir/report.json                 counts and every photo that failed, with the reason.

Identity folders: for a folder given as input, a photo at FOLDER/<person>/<file> goes to
out_dir/<person>/; deeper paths are flattened into the file name (a/b/c.jpg -> a/b_c.png) because an
ImageFolder has one level of identity folders; photos directly inside FOLDER, and photos given as
files, take the name of the folder they sit in as identity.

Resumable: photos that already have a row in the sidecar are skipped; the sidecar is saved every
`save_every` photos and when the run stops (also on Ctrl-C), so a rerun continues where it ended.
Unreadable files, photos without a face, detector failures, photos missing from a given cache and
output name clashes are never fatal: they are listed in report.json with the reason.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from lh2face.io import PathLike, save_image, write_json_atomic
from lh2face.landmark_sidecar import LandmarkSidecar, SidecarRow, load_sidecar, sidecar_path

from .detect_align import FACE_CHOICES, LazyDetector, PhotoError, detect_and_align, read_photo
REPORT_NAME = "report.json"


@dataclass
class AlignSource:
    """One input photo: its path and the crop path (relative to out_dir, without the face suffix)."""

    path: Path
    rel: str  # "<identity>/<stem>" (posix), ".png" and any "_<k>" are added per face


@dataclass
class AlignReport:
    """Outcome of one align_photos call (also written as report.json).

    photos: inputs considered; done_before: skipped because the sidecar already had them; aligned:
    photos aligned now; crops: crops written now; failed: [{"path", "reason"}]; seconds: wall time."""

    photos: int = 0
    done_before: int = 0
    aligned: int = 0
    crops: int = 0
    failed: List[Dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    size: int = 112
    detector: str = "dlib"
    rows_total: int = 0

    def failure_counts(self) -> Dict[str, int]:
        """Failures by kind (the reason's text before the first ':')."""
        out: Dict[str, int] = {}
        for f in self.failed:
            kind = f["reason"].split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
        return out

    def as_dict(self) -> Dict[str, Any]:
        return {"photos": self.photos, "done_before": self.done_before, "aligned": self.aligned,
                "crops": self.crops, "failed_count": len(self.failed), "failure_counts": self.failure_counts(),
                "rows_total": self.rows_total, "size": self.size, "detector": self.detector,
                "seconds": round(self.seconds, 3), "failed": self.failed}

    def summary_line(self, out_dir: PathLike) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.failure_counts().items()))
        return (f"aligned {self.aligned} photo(s) into {self.crops} crop(s), {self.done_before} already done, "
                f"{len(self.failed)} failed{f' ({kinds})' if kinds else ''}; {self.rows_total} crops in "
                f"{out_dir} (see {Path(out_dir) / REPORT_NAME})")


# ------------------------------------------------------------------------------------------ inputs


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".") or "x"


def collect_sources(photos: Iterable[PathLike]) -> List[AlignSource]:
    """Expand files and folders into AlignSource entries with their identity-relative crop names.

    Raises FileNotFoundError naming an input that does not exist."""
    from .photos import list_images

    out: List[AlignSource] = []
    for p in photos:
        p = Path(p)
        if p.is_dir():
            for f in list_images([p]):
                parts = f.relative_to(p).parts
                if len(parts) == 1:
                    ident, rest = p.resolve().name, parts
                else:
                    ident, rest = parts[0], parts[1:]
                stem = "_".join(list(rest[:-1]) + [Path(rest[-1]).stem])
                out.append(AlignSource(f, f"{_safe(ident)}/{_safe(stem)}"))
        elif p.exists():
            out.append(AlignSource(p, f"{_safe(p.resolve().parent.name)}/{_safe(p.stem)}"))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def _key(path: PathLike) -> str:
    return str(Path(path).resolve())


class CacheDetector:
    """Faces from an `lh2face landmarks` cache instead of a detector: `faces(path)` -> list of Face (the
    cached largest face, or [] when the cache found none), or None when the photo is not in the cache."""

    def __init__(self, cache_path: PathLike) -> None:
        from .landmarks.cache import load_cache

        self.path = Path(cache_path)
        self.cache = load_cache(self.path)
        self.index = {_key(p): i for i, p in enumerate(self.cache.paths)}

    def paths(self) -> List[Path]:
        return [Path(str(p)) for p in self.cache.paths]

    def faces(self, path: PathLike) -> Optional[list]:
        from .landmarks.base import Face

        i = self.index.get(_key(path))
        if i is None:
            return None
        c = self.cache
        if not bool(c.ok[i]):
            return []
        return [Face(box=c.boxes[i], score=float(c.scores[i]), landmarks68=c.landmarks68[i],
                     landmarks5=c.landmarks5[i])]

    def detector_for(self, path: PathLike) -> Optional[Callable[[np.ndarray], list]]:
        """A detector (image -> the cached faces of `path`) for detect_and_align, or None when the photo
        is not in the cache."""
        found = self.faces(path)
        return None if found is None else (lambda _image: found)


# ------------------------------------------------------------------------------------------ main


def align_photos(
    photos: Sequence[PathLike],
    out_dir: PathLike,
    detector: Union[str, Callable] = "dlib",
    size: int = 112,
    faces: str = "largest",
    cache: Optional[PathLike] = None,
    detector_options: Optional[dict] = None,
    progress: bool = True,
    save_every: int = 50,
) -> AlignReport:
    """Align photos (files / folders) into out_dir (see the module docstring); returns the AlignReport.

    detector: a recon.landmarks name ("dlib", "face_alignment") or a callable image -> list[Face]; built
    only when some photo needs detecting. cache: an `lh2face landmarks` .npz used instead of detecting
    (photos may then be empty: the cache's own paths are aligned; faces="all" gives the one cached face).
    Raises ValueError for bad options or a sidecar of another crop size, FileNotFoundError for a missing
    input, recon.landmarks.DetectorUnavailable when the detector cannot run here.
    """
    from tqdm import tqdm

    if faces not in FACE_CHOICES:
        raise ValueError(f"faces must be one of {', '.join(FACE_CHOICES)}, got {faces!r}")
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"--size must be an int >= 16 pixels, got {size!r}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder; choose another --out")
    cached = CacheDetector(cache) if cache is not None else None
    if not photos and cached is None:
        raise ValueError("no photos given (and no --landmarks cache to take them from)")
    sources = collect_sources(photos if photos else cached.paths())
    det = LazyDetector(detector, detector_options)  # built when the first photo needs it
    name = f"cache:{Path(cache).name}" if cached is not None else det.name
    side_file = sidecar_path(out_dir)
    if side_file.exists():
        side = load_sidecar(side_file)
        if side.size != size:
            raise ValueError(f"{out_dir} holds {side.size} px crops ({side_file}); pass --size {side.size} to "
                             f"continue it, or choose another --out")
    else:
        side = LandmarkSidecar(size=size, detector=name)
    done = {_key(s) for s in side.sources()}
    owner = {row.file: _key(row.source) for row in side.rows.values()}
    report = AlignReport(photos=len(sources), size=size, detector=name)

    def fail(path: Path, reason: str) -> None:
        report.failed.append({"path": str(path), "reason": reason})

    def save() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        side.save(side_file)
        report.rows_total = len(side)
        report.seconds = time.perf_counter() - t0
        write_json_atomic(out_dir / REPORT_NAME, report.as_dict())

    seen: set = set()
    sources = [s for s in sources if not (_key(s.path) in seen or seen.add(_key(s.path)))]  # same file twice
    report.photos = len(sources)
    todo = [s for s in sources if _key(s.path) not in done]
    report.done_before = len(sources) - len(todo)
    bar = tqdm(todo, unit="photo", desc=f"align -> {out_dir}", disable=not progress, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    failed_run = False
    try:
        for n, src in enumerate(bar):
            if n and n % max(1, save_every) == 0:
                save()
            try:
                image = read_photo(src.path)
                found = det if cached is None else cached.detector_for(src.path)
                if found is None:
                    fail(src.path, f"not in the landmark cache: {cache}; rebuild it with `lh2face landmarks` "
                                   "or align without --landmarks")
                    continue
                chosen = detect_and_align(image, found, size=size, faces=faces).faces
            except PhotoError as exc:  # unreadable, no face, detector failed: listed, the batch goes on
                fail(src.path, str(exc))
                continue
            names = [f"{src.rel}.png"] if faces == "largest" else [f"{src.rel}_{k}.png" for k in range(len(chosen))]
            clash = [nm for nm in names if nm in owner and owner[nm] != _key(src.path)]
            if clash:
                fail(src.path, f"name clash: crop {clash[0]} already comes from {owner[clash[0]]}; rename one photo")
                continue
            for k, (nm, a) in enumerate(zip(names, chosen)):
                save_image(out_dir / nm, a.crop)
                side.add(SidecarRow(file=nm, landmarks68=a.landmarks68, landmarks5=a.landmarks5, matrix=a.matrix,
                                    score=float(a.face.score), source=_key(src.path), face_index=k))
                owner[nm] = _key(src.path)
                report.crops += 1
            report.aligned += 1
            bar.set_postfix(ok=report.aligned, failed=len(report.failed), refresh=False)
    except BaseException:
        failed_run = True
        raise
    finally:
        bar.close()
        if report.crops or report.failed or not failed_run:
            save()  # keeps the work done so far (Ctrl-C included); nothing is written for a run that did nothing
    return report


__all__ = ["AlignReport", "AlignSource", "CacheDetector", "FACE_CHOICES", "align_photos", "collect_sources"]
