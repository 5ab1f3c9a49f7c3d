"""Reconstruction from real photographs: detect, align, fit, measure.

`reconstruct_photos(paths, detector="dlib", ...)` yields one `PhotoResult` per image file (folders are
expanded). For each image: read it, detect faces and 68 landmarks, keep the largest face, align it to
the ArcFace template (a square crop of `image_size` pixels, the template scaled with it; these steps
are recon.detect_align.detect_and_align, shared with `lh2face align` and `lh2face embed`), fit the
morphable model to the crop (recon.fitting.fit_image) and measure the landmark NME (normalised by the
inter-ocular distance) of the model before and after fitting. A file that cannot be read, an image
with no face, or a failing fit gives ok=False with the reason; the batch always goes on.

With `regressor` (e.g. a trained run's coefficient regressor, `lh2face export --model RUN`) the crop
goes through it once instead of being fitted, and `refine_steps` > 0 runs that many fitting steps
(the photometric stage of recon.fitting.fit_image, which also keeps the landmark term) from there.

Coefficients describe the face in the aligned crop seen by the canonical-intrinsics camera
(recon.camera.intrinsics); they are the same whatever `image_size` (the focal scales with the crop).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import numpy as np

from lh2face.io import PathLike

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def list_images(paths: Union[PathLike, Iterable[PathLike]], recursive: bool = True,
                missing: str = "raise") -> List[Path]:
    """Files and folders -> image files. Folders are searched (recursively, sorted) for image
    suffixes; files given explicitly are kept whatever their suffix (a bad one is reported later).
    missing="raise": FileNotFoundError naming a path that does not exist; "keep": keep it in the list
    (reconstruct_photos then reports it as not readable)."""
    if missing not in ("raise", "keep"):
        raise ValueError(f"missing must be 'raise' or 'keep', got {missing!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            out.extend(sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists() or missing == "keep":
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


@dataclass
class PhotoResult:
    """One photo's outcome.

    path: the file; ok: detected and (when fitting) fitted; reason: why not ("" when ok);
    image: uint8 (H,W,3) the photo as read (None if unreadable); face: recon.landmarks.Face, the
    largest face, in photo pixels; num_faces: faces detected; aligned: uint8 (S,S,3) crop aligned to
    the ArcFace template scaled to S = image_size; matrix: (2,3) photo -> crop similarity;
    landmarks: (68,2) the detected landmarks mapped into the crop (pixels); coeffs: (P,) float32
    fitted coefficients (CoeffLayout order) or None; fit_landmarks: (68,2) the fitted model's
    landmarks in the crop; fit_history: per-step loss dicts; nme: {"before", "after"} landmark NME of
    the model (mean face at the solved pose / fitted) against the detected landmarks;
    seconds: {"detect" (detection + alignment), "regress", "fit"} wall time.
    """

    path: Path
    ok: bool
    reason: str = ""
    image: Optional[np.ndarray] = None
    face: Any = None
    num_faces: int = 0
    aligned: Optional[np.ndarray] = None
    matrix: Optional[np.ndarray] = None
    landmarks: Optional[np.ndarray] = None
    coeffs: Optional[np.ndarray] = None
    fit_landmarks: Optional[np.ndarray] = None
    fit_history: List[Dict[str, Any]] = field(default_factory=list)
    nme: Dict[str, float] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


def reconstruct_photos(
    paths: Union[PathLike, Iterable[PathLike]],
    detector: Union[str, Callable] = "dlib",
    fit_steps: Optional[int] = None,
    image_size: int = 112,
    model: Any = None,
    renderer: Any = None,
    detector_options: Optional[dict] = None,
    fit_config: Any = None,
    regressor: Optional[Callable[[Any], Any]] = None,
    refine_steps: int = 0,
    **fit_options: Any,
) -> Iterator[PhotoResult]:
    """Detect, align and fit every photo; yields PhotoResult in file order.

    paths: image files and/or folders (searched recursively); detector: a name for
    recon.landmarks.build_detector ("dlib", "face_alignment") or a detector callable;
    fit_steps: Adam steps of each fitting stage after the rigid one (shape, photometric; default
    FitConfig's), 0 = detect and align only (coeffs None, ok True); image_size: side of the aligned
    crop the model is fitted to (112-224); model / renderer: reused across photos (built once when
    None); fit_config / fit_options: recon.fitting.FitConfig and its field overrides.
    regressor: a callable float images (B,3,S,S) in [0,1] -> coefficients (B,P) (it resizes to its own
    input size itself); replaces fitting from scratch (fit_steps is then not allowed); refine_steps: N
    photometric fitting steps starting from the regressor's coefficients (0 = none).
    Building the detector may raise recon.landmarks.DetectorUnavailable (nothing would work);
    per-image problems never raise.
    """
    from .detect_align import LazyDetector

    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    files = list_images(paths, missing="keep")
    if regressor is not None and fit_steps is not None:
        raise ValueError("fit_steps is for fitting from scratch; with a regressor use refine_steps")
    if int(refine_steps) < 0 or (refine_steps and regressor is None):
        raise ValueError(f"refine_steps must be >= 0 and needs a regressor, got {refine_steps!r}")
    det = LazyDetector(detector, detector_options).get()  # up front: without a detector nothing would work
    do_fit = regressor is None and (fit_steps is None or int(fit_steps) > 0)
    config = None
    if regressor is not None and refine_steps:
        fit_options = {"steps_pose": 0, "steps_shape": 0, **fit_options, "steps_photo": int(refine_steps)}
    if do_fit or (regressor is not None and refine_steps):
        model, renderer, config = _fit_setup(model, renderer, fit_config, fit_steps, fit_options)
    elif fit_options:
        raise TypeError(f"fit options {sorted(fit_options)} given with fit_steps=0 (no fitting)")
    for path in files:
        yield _reconstruct_one(Path(path), det, image_size, regressor, bool(refine_steps), do_fit, model,
                               renderer, config)


def _fit_setup(model: Any, renderer: Any, fit_config: Any, fit_steps: Optional[int], fit_options: dict):
    """(model, renderer, FitConfig) for fitting: the given model / renderer or new ones, fit_config with
    fit_options on top, fit_steps as the shape and photometric stage steps unless given there."""
    from .fitting import FitConfig
    from .morphable import MorphableModel
    from .render import build_renderer

    model = model if model is not None else MorphableModel()
    renderer = renderer if renderer is not None else build_renderer("auto")
    overrides = dict(fit_options)
    if fit_steps is not None:
        overrides.setdefault("steps_shape", int(fit_steps))
        overrides.setdefault("steps_photo", int(fit_steps))
    return model, renderer, FitConfig(**{**(vars(fit_config) if fit_config is not None else {}), **overrides})


def _reconstruct_one(path: Path, det: Any, image_size: int, regressor: Optional[Callable[[Any], Any]],
                     refine: bool, do_fit: bool, model: Any, renderer: Any, config: Any) -> PhotoResult:
    """Read, detect + align, then regress and/or fit one photo; problems end up in `reason` (ok False)."""
    from .detect_align import DetectorFailed, NoFaceError, PhotoError, detect_and_align, read_photo

    res = PhotoResult(path=path, ok=False)
    try:
        res.image = read_photo(path)
    except PhotoError as exc:
        res.reason = str(exc)
        return res
    t0 = time.perf_counter()
    try:
        found = detect_and_align(res.image, det, size=image_size)
    except DetectorFailed as exc:
        res.reason = str(exc)
        return res
    except NoFaceError as exc:
        found, res.reason = None, str(exc)
    res.seconds["detect"] = time.perf_counter() - t0  # detection + alignment
    if found is None:
        return res
    res.num_faces = found.num_detected
    best = found.faces[0]
    res.face, res.aligned, res.matrix, res.landmarks = best.face, best.crop, best.matrix, best.landmarks68
    init = None
    if regressor is not None:
        t0 = time.perf_counter()
        try:
            init = regress_crop(regressor, res.aligned)
        except Exception as exc:  # noqa: BLE001
            res.reason = f"regressor failed: {type(exc).__name__}: {exc}"
            return res
        res.seconds["regress"] = time.perf_counter() - t0
        if not refine:
            res.coeffs = init[0].numpy().astype(np.float32)
            res.ok = True
            return res
    elif not do_fit:
        res.ok = True
        return res
    return _fit_one(res, init, model, renderer, config)


def _fit_one(res: PhotoResult, init: Any, model: Any, renderer: Any, config: Any) -> PhotoResult:
    """Fit the aligned crop of `res` (from `init` coefficients when given) and fill in its fit fields."""
    from .fitting import fit_image

    t0 = time.perf_counter()
    try:
        fit = fit_image(res.aligned, res.landmarks, model=model, renderer=renderer, config=config, init=init)
    except Exception as exc:  # noqa: BLE001
        res.reason = f"fit failed: {type(exc).__name__}: {exc}"
        res.seconds["fit"] = time.perf_counter() - t0
        return res
    res.seconds["fit"] = time.perf_counter() - t0
    res.coeffs = fit.coeffs[0].numpy().astype(np.float32)
    res.fit_landmarks = fit.landmarks2d[0].numpy().astype(np.float32)
    res.fit_history = fit.history
    res.nme = {"before": float(fit.nme_before[0]), "after": float(fit.nme_after[0])}
    res.ok = True
    return res


def regress_crop(regressor: Callable[[Any], Any], crop: np.ndarray) -> Any:
    """One forward pass: uint8 crop (S,S,3) -> coefficients (1,P) float32 tensor on the CPU, no gradients."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div_(255.0)[None]
    with torch.no_grad():
        out = regressor(x)
    out = torch.as_tensor(out).detach().float().cpu()
    if out.dim() != 2 or out.shape[0] != 1 or not torch.isfinite(out).all():
        raise ValueError(f"the regressor must return finite (1,P) coefficients, got shape {tuple(out.shape)}")
    return out


def new_photo_report() -> Dict[str, Any]:
    """The report export / visualize write for photos: processed [{path, ...}], skipped [{path, reason}],
    seconds {detect, regress, fit: totals over the photos}."""
    return {"processed": [], "skipped": [], "seconds": {}}


def record_result(report: Dict[str, Any], res: Any) -> str:
    """Add one PhotoResult to `report` (new_photo_report): its seconds are summed into report["seconds"];
    an unusable result (not ok, or ok without coefficients) goes to report["skipped"] and its reason is
    returned; "" for a usable one (the caller lists it in "processed" once its output exists)."""
    for k, v in (getattr(res, "seconds", None) or {}).items():
        report["seconds"][k] = report["seconds"].get(k, 0.0) + float(v)
    reason = str(res.reason) if not res.ok else ("no coefficients (fitting was off)" if res.coeffs is None else "")
    if reason:
        report["skipped"].append({"path": str(res.path), "reason": reason})
    return reason


def summarize(results: Iterable[PhotoResult]) -> Dict[str, Any]:
    """Counts, detection rate, mean NME before/after and mean seconds per image over results."""
    results = list(results)
    ok = [r for r in results if r.ok]
    readable = [r for r in results if r.image is not None]
    with_face = [r for r in readable if r.face is not None]

    def mean(xs: List[float]) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    return {
        "images": len(results),
        "readable": len(readable),
        "with_face": len(with_face),
        "ok": len(ok),
        "detection_rate": len(with_face) / len(readable) if readable else float("nan"),
        "nme_before": mean([r.nme["before"] for r in ok if r.nme]),
        "nme_after": mean([r.nme["after"] for r in ok if r.nme]),
        "seconds_detect": mean([r.seconds["detect"] for r in results if "detect" in r.seconds]),
        "seconds_fit": mean([r.seconds["fit"] for r in results if "fit" in r.seconds]),
        "failures": [(str(r.path), r.reason) for r in results if not r.ok],
    }
