"""Embeddings of face photos with a trained model (what `lh2face embed` runs).

Each photo is read, brought to an aligned crop, resized to the run's input size S exactly as training
data is (PIL bilinear, antialiased) and embedded with ``model.embed`` in batches; a 7-channel model
computes the canonical face and depth with its own regressor inside ``embed``. With flip-test the
embedding is e(x) + e(mirror(x)) (recognition.eval.features convention). Results: unit-norm embeddings
(N,d) float32, the norms |e| (N,) before normalisation (the quality signal), and the paths, in input
order; photos that cannot be used (unreadable, no face, detector error) are listed with the reason
and never stop the batch.

Aligned or raw: ``aligned=True`` takes every image as an aligned crop; ``False`` sends every image
through detection + 5-point alignment to the 112x112 ArcFace template (recon.detect_align.detect_and_align,
the same code as `lh2face align` and the photo paths of export / visualize); ``None`` (auto)
takes square images of side 112 or S as aligned crops and everything else as raw photos.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lh2face.io import PathLike

log = logging.getLogger("lh2face.embed")

ALIGNED_SIZE = 112  # side of the ArcFace-template crop


class NoUsablePhotos(ValueError):
    """Not one of the given photos could be embedded (or none were given); `failed`: [(path, reason)]."""

    def __init__(self, message: str, failed: Sequence[Tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.failed = list(failed)


@dataclass
class EmbedResult:
    """Embeddings of the usable photos, in input order, and the photos that failed.

    paths: N files embedded; embeddings: (N,d) float32 unit rows; norms: (N,) float32 |e| before
    normalisation; failed: [(path, reason)]; flip: whether flip-test was used.
    """

    paths: List[str]
    embeddings: np.ndarray
    norms: np.ndarray
    failed: List[Tuple[str, str]] = field(default_factory=list)
    flip: bool = False


def is_aligned_crop(image: np.ndarray, image_size: int) -> bool:
    """Auto mode's rule: a square image of side 112 (ArcFace crop) or of the model's input size."""
    h, w = image.shape[:2]
    return h == w and h in (ALIGNED_SIZE, int(image_size))


class PhotoLoader:
    """path -> float (3,S,S) in [0,1]; raises ValueError (with the reason) for an unusable photo.

    aligned: True / False / None (auto, see module doc); detector: a recon.landmarks name or a callable,
    built on the first raw photo (building it may raise recon.landmarks.DetectorUnavailable).
    """

    def __init__(self, image_size: int, aligned: Optional[bool] = None,
                 detector: Union[str, Callable[[np.ndarray], Sequence[Any]]] = "dlib") -> None:
        from recon.detect_align import LazyDetector

        self.image_size = int(image_size)
        self.aligned = aligned
        self.detector = LazyDetector(detector)

    def __call__(self, path: PathLike) -> torch.Tensor:
        from recognition.data.transforms import resize_uint8, to_tensor
        from recon.detect_align import detect_and_align, read_photo

        image = read_photo(path)  # UnreadablePhoto is a ValueError
        aligned = self.aligned if self.aligned is not None else is_aligned_crop(image, self.image_size)
        if not aligned:  # NoFaceError / DetectorFailed are ValueErrors; DetectorUnavailable stops the run
            image = detect_and_align(image, self.detector, size=ALIGNED_SIZE).faces[0].crop
        return to_tensor(resize_uint8(image, self.image_size))


def embed_photos(model: Any, paths: Iterable[PathLike], image_size: int, aligned: Optional[bool] = None,
                 flip: bool = False, batch_size: int = 64, device: Any = "cpu",
                 detector: Union[str, Callable[[np.ndarray], Sequence[Any]]] = "dlib",
                 progress: bool = True) -> EmbedResult:
    """Embed photos with `model` (joint.JointModel from joint.runs.load_run, or anything with
    ``embed(images (B,3,S,S) [0,1]) -> (B,d)``). Unusable photos go to ``failed`` with the reason (and
    a debug line in the log); raises NoUsablePhotos when no photo could be embedded."""
    from recognition.eval.features import extract_embeddings

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    files = [str(p) for p in paths]
    if not files:
        raise NoUsablePhotos("no photos given (empty list or folders without images)")
    loader = PhotoLoader(image_size, aligned=aligned, detector=detector)
    kept: List[str] = []
    failed: List[Tuple[str, str]] = []
    chunks: List[np.ndarray] = []
    pending: List[torch.Tensor] = []

    def flush() -> None:
        if pending:
            batch = torch.stack(pending)
            chunks.append(extract_embeddings(model.embed, batch, batch_size=len(pending), flip=flip,
                                             device=device, progress=False))
            pending.clear()

    from tqdm import tqdm

    with tqdm(total=len(files), desc="embed", unit="img", disable=not progress) as bar:
        for path in files:
            try:
                pending.append(loader(path))
                kept.append(path)
            except ValueError as exc:  # recon.detect_align.PhotoError (unreadable, no face, ...) is one
                failed.append((path, str(exc)))
                log.debug("skipping %s: %s", path, exc)
            if len(pending) >= batch_size:
                flush()
            bar.update(1)
        flush()
    if not kept:
        first = f" (first: {failed[0][0]}: {failed[0][1]})" if failed else ""
        raise NoUsablePhotos(f"none of the {len(files)} photos could be embedded{first}", failed)
    raw = np.concatenate(chunks, 0).astype(np.float32, copy=False)
    norms = np.linalg.norm(raw.astype(np.float64), axis=1).astype(np.float32)
    emb = (raw / np.maximum(norms, 1e-12)[:, None]).astype(np.float32)
    return EmbedResult(kept, emb, norms, failed, bool(flip))


def output_paths(out: PathLike, fmt: str) -> List[Path]:
    """Files `save_embeddings` writes: npz -> [out]; npy -> [stem.npy, stem.txt, stem.norms.npy,
    stem.failed.txt] where stem is `out` without a .npy / .npz suffix."""
    out = Path(out)
    if fmt == "npz":
        return [out]
    if fmt != "npy":
        raise ValueError(f"unknown format '{fmt}'; use npz or npy")
    stem = out.with_suffix("") if out.suffix.lower() in (".npy", ".npz") else out
    return [stem.with_name(stem.name + s) for s in (".npy", ".txt", ".norms.npy", ".failed.txt")]


def save_embeddings(result: EmbedResult, out: PathLike, fmt: str = "npz", source: str = "") -> List[Path]:
    """Write `result` atomically; returns the files written (see output_paths).

    npz keys: embeddings (N,d) float32 unit rows, norms (N,), paths (N,) str, failed (M,) str,
    failed_reasons (M,) str, flip () bool, model () str. npy: embeddings in .npy, one path a line in
    .txt, norms in .norms.npy, "path<TAB>reason" lines in .failed.txt.
    """
    from lh2face.io import atomic_write, write_text_atomic

    files = output_paths(out, fmt)
    failed_paths = np.array([p for p, _ in result.failed], dtype=np.str_)
    reasons = np.array([r for _, r in result.failed], dtype=np.str_)
    for p in result.paths + [p for p, _ in result.failed]:
        if "\n" in p:
            raise ValueError(f"path {p!r} contains a newline; it cannot be listed one per line")
    if fmt == "npz":
        with atomic_write(files[0]) as fh:
            np.savez(fh, embeddings=result.embeddings, norms=result.norms,
                     paths=np.array(result.paths, dtype=np.str_), failed=failed_paths, failed_reasons=reasons,
                     flip=np.array(result.flip), model=np.array(source, dtype=np.str_))
        return files
    emb_path, txt_path, norms_path, failed_path = files
    write_text_atomic(txt_path, "".join(p + "\n" for p in result.paths))
    with atomic_write(norms_path) as fh:
        np.save(fh, result.norms)
    write_text_atomic(failed_path, "".join(f"{p}\t{r.replace(chr(10), ' ')}\n" for p, r in result.failed))
    with atomic_write(emb_path) as fh:
        np.save(fh, result.embeddings)
    return files
