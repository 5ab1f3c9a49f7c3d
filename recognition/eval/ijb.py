"""IJB-B / IJB-C 1:1 template verification from the standard (insightface-style) meta files.

Layout under ``root`` (``<t>`` is the target in lower case, ``ijbb`` or ``ijbc``)::

    meta/<t>_face_tid_mid.txt         image_name template_id media_id        (one line per face)
    meta/<t>_template_pair_label.txt  template_id_1 template_id_2 label    (label 1 = same subject)
    meta/<t>_name_5pts_score.txt      image_name x1 y1 x2 y2 ... x5 y5 detector_score
    loose_crop/<image_name>           face images (loose crops, aligned here with the 5 points,
                                      or already aligned size x size crops)

Pipeline (the protocol of insightface's ``recognition/arcface_torch/eval_ijbc.py``, re-implemented):
1. per image: flip-test embedding e(x) + e(mirror(x)) (kept un-normalised so its norm is a
   quality weight; with ``use_norm_weighting=False`` each feature is L2-normalised first),
   optionally multiplied by the detector score;
2. per template: features of the same media (video / photo) are averaged, then the media means are
   summed; the template feature is L2-normalised;
3. per template pair: cosine similarity; ROC, TAR at FAR 1e-6 ... 1e-1 (table) and an ROC plot.

The stages are pure functions (:func:`load_meta`, :func:`image_features`, :func:`template_features`,
:func:`pair_scores`, :func:`evaluate_template_scores`) so they can be tested and reused;
:func:`evaluate_ijb` runs them all.

Landmarks from the 5-point file are passed unchanged to ``lh2face.align.align_face``, i.e. they
are taken to be in the same pixel convention as the ArcFace template (as insightface does).
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lh2face.io import atomic_write, read_image, write_json_atomic, write_text_atomic

from .features import extract_embeddings, l2_normalize
from .metrics import DEFAULT_FARS, auc, format_far, roc_curve, tar_at_far_details, tar_table_markdown

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
AlignFn = Callable[..., np.ndarray]  # (image uint8 HWC, landmarks5 (5,2), size=int) -> uint8 crop


class IJBFormatError(ValueError):
    """An IJB meta file is missing or malformed."""


# ------------------------------------------------------------------------------------------- meta


def target_prefix(target: str) -> str:
    """'IJBB' / 'IJB-B' / 'ijbb' -> 'ijbb' (the file-name prefix of the meta files)."""
    t = str(target).strip().lower().replace("-", "").replace("_", "")
    if not t or not t.isalnum():
        raise ValueError(f"invalid IJB target {target!r}; use IJBB or IJBC")
    return t


def meta_paths(root: PathLike, target: str) -> Dict[str, Path]:
    """Expected meta file paths: keys 'face_tid_mid', 'template_pair_label', 'name_5pts_score'."""
    meta = Path(root) / "meta"
    t = target_prefix(target)
    return {
        "face_tid_mid": meta / f"{t}_face_tid_mid.txt",
        "template_pair_label": meta / f"{t}_template_pair_label.txt",
        "name_5pts_score": meta / f"{t}_name_5pts_score.txt",
    }


def _require(path: Path, what: str) -> None:
    if path.is_file():
        return
    meta = path.parent
    found = sorted(p.name for p in meta.glob("*_face_tid_mid.txt")) if meta.is_dir() else []
    hint = (
        f" Found in {meta}: {', '.join(found)} (pass the matching target)."
        if found
        else f" {meta} {'has no *_face_tid_mid.txt' if meta.is_dir() else 'does not exist'};"
        " --root must be the IJB folder that contains meta/ and loose_crop/."
    )
    raise IJBFormatError(f"missing IJB {what} file: expected {path}.{hint}")


def _lines(path: Path) -> List[Tuple[int, List[str]]]:
    out = []
    with open(path, "r", encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            parts = line.split()
            if parts:
                out.append((i, parts))
    if not out:
        raise IJBFormatError(f"{path}: file is empty")
    return out


def read_template_media(path: PathLike) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Read ``*_face_tid_mid.txt``: -> (image names [N], template ids (N,) int64, media ids (N,) int64)."""
    path = Path(path)
    _require(path, "template/media list (*_face_tid_mid.txt)")
    names: List[str] = []
    tids: List[int] = []
    mids: List[int] = []
    for lineno, parts in _lines(path):
        if len(parts) < 3:
            raise IJBFormatError(f"{path}:{lineno}: expected 'image_name template_id media_id', got {' '.join(parts)!r}")
        try:
            tids.append(int(parts[1]))
            mids.append(int(parts[2]))
        except ValueError:
            raise IJBFormatError(f"{path}:{lineno}: template and media ids must be integers, got {parts[1:3]}") from None
        names.append(parts[0])
    return names, np.asarray(tids, dtype=np.int64), np.asarray(mids, dtype=np.int64)


def read_template_pairs(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``*_template_pair_label.txt``: -> (pairs (P, 2) int64 template ids, labels (P,) int64 0/1).

    Parsed in one vectorised pass (IJB-C has 15.7 M pairs); on a malformed file the first bad
    line is reported.
    """
    path = Path(path)
    _require(path, "template pair list (*_template_pair_label.txt)")
    text = path.read_text(encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # whitespace-separated integers; numpy warns or raises on a token it cannot parse
            flat = np.fromstring(text, dtype=np.int64, sep=" ")
        except ValueError:
            flat, caught = np.zeros(0, dtype=np.int64), [True]
    stripped = text.strip()
    n_lines = stripped.count("\n") + 1 if stripped else 0
    if caught or flat.size == 0 or flat.size != 3 * n_lines:
        _check_pair_lines(path, text)  # raises on the first bad line; passes if only blank lines differ
        if caught or flat.size % 3 or flat.size == 0:
            raise IJBFormatError(f"{path}: could not parse the template pairs")
    arr = flat.reshape(-1, 3)
    labels = arr[:, 2]
    if not np.all((labels == 0) | (labels == 1)):
        bad = int(np.nonzero((labels != 0) & (labels != 1))[0][0])
        raise IJBFormatError(f"{path}: label of pair {bad + 1} is {labels[bad]}, expected 0 or 1")
    return arr[:, :2].copy(), labels.copy()


def _check_pair_lines(path: Path, text: str) -> None:
    seen = False
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        seen = True
        if len(parts) != 3:
            raise IJBFormatError(f"{path}:{lineno}: expected 'template_id_1 template_id_2 label', got {line.strip()!r}")
        try:
            [int(p) for p in parts]
        except ValueError:
            raise IJBFormatError(f"{path}:{lineno}: expected three integers, got {line.strip()!r}") from None
    if not seen:
        raise IJBFormatError(f"{path}: no template pairs found (empty file)")


def read_landmarks(path: PathLike) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Read ``*_name_5pts_score.txt``: -> (names [N], landmarks (N, 5, 2) float32 pixels x,y, scores (N,) float32)."""
    path = Path(path)
    _require(path, "landmark list (*_name_5pts_score.txt)")
    names: List[str] = []
    lms: List[List[float]] = []
    scores: List[float] = []
    for lineno, parts in _lines(path):
        if len(parts) != 12:
            raise IJBFormatError(
                f"{path}:{lineno}: expected 'image_name x1 y1 ... x5 y5 score' (12 fields), got {len(parts)}"
            )
        try:
            vals = [float(p) for p in parts[1:]]
        except ValueError:
            raise IJBFormatError(f"{path}:{lineno}: landmark coordinates and score must be numbers") from None
        names.append(parts[0])
        lms.append(vals[:10])
        scores.append(vals[10])
    return names, np.asarray(lms, dtype=np.float32).reshape(-1, 5, 2), np.asarray(scores, dtype=np.float32)


@dataclass
class IJBMeta:
    """Everything the protocol needs from the meta files, in face_tid_mid order.

    names [N]; templates, medias (N,) int64; landmarks (N, 5, 2) float32 or None; det_scores (N,)
    float32 or None; pairs (P, 2) int64 template ids; labels (P,) int64.
    """

    target: str
    names: List[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: Optional[np.ndarray]
    det_scores: Optional[np.ndarray]
    pairs: np.ndarray
    labels: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.names)


def load_meta(root: PathLike, target: str, require_landmarks: bool = True) -> IJBMeta:
    """Read and cross-check the three meta files of ``target`` under ``root/meta``.

    The landmark file is matched to face_tid_mid by image name (row order when the names agree row
    by row, else by name lookup). With ``require_landmarks=False`` a missing landmark file is
    allowed (already aligned images; no detector scores then).
    """
    paths = meta_paths(root, target)
    names, templates, medias = read_template_media(paths["face_tid_mid"])
    pairs, labels = read_template_pairs(paths["template_pair_label"])
    landmarks = det = None
    if paths["name_5pts_score"].is_file() or require_landmarks:
        lnames, lms, scores = read_landmarks(paths["name_5pts_score"])
        if lnames == names:
            landmarks, det = lms, scores
        else:
            index = {n: i for i, n in enumerate(lnames)}
            if len(index) != len(lnames) or len(set(names)) != len(names):
                raise IJBFormatError(
                    f"{paths['name_5pts_score']} and {paths['face_tid_mid']} list images in different orders "
                    "and names repeat, so they cannot be matched; use files from the same release"
                )
            missing = [n for n in names if n not in index]
            if missing:
                raise IJBFormatError(
                    f"{len(missing)} image(s) of {paths['face_tid_mid']} have no landmarks in "
                    f"{paths['name_5pts_score']}, e.g. {missing[:3]}"
                )
            rows = np.asarray([index[n] for n in names], dtype=np.int64)
            landmarks, det = lms[rows], scores[rows]
    known = np.unique(templates)
    used = np.unique(pairs)
    absent = np.setdiff1d(used, known)
    if absent.size:
        raise IJBFormatError(
            f"{paths['template_pair_label']} uses {absent.size} template id(s) that {paths['face_tid_mid']} "
            f"does not list, e.g. {absent[:5].tolist()}"
        )
    return IJBMeta(target_prefix(target), names, templates, medias, landmarks, det, pairs, labels)


# ------------------------------------------------------------------------------------------ images


class IJBFaces(torch.utils.data.Dataset):
    """The IJB face images as aligned float tensors (3, size, size) in [0, 1].

    ``aligned``: "auto" uses an image as-is when it is already size x size and aligns it with its
    5 landmarks otherwise; True requires aligned images; False always aligns.
    ``align_fn(image uint8 HWC, landmarks (5,2), size=size) -> uint8 (size,size,3)``; default
    ``lh2face.align.align_face``.
    """

    def __init__(
        self,
        image_dir: PathLike,
        names: Sequence[str],
        landmarks: Optional[np.ndarray] = None,
        aligned: Union[str, bool] = "auto",
        size: int = 112,
        align_fn: Optional[AlignFn] = None,
    ) -> None:
        if aligned not in ("auto", True, False):
            raise ValueError(f"aligned must be 'auto', True or False, got {aligned!r}")
        if aligned is False and landmarks is None:
            raise ValueError("aligned=False needs the 5-point landmarks (*_name_5pts_score.txt)")
        if landmarks is not None and len(landmarks) != len(names):
            raise ValueError(f"{len(names)} images but {len(landmarks)} landmark sets")
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise IJBFormatError(f"image folder {self.image_dir} does not exist (expected <root>/loose_crop)")
        self.names = list(names)
        self.landmarks = landmarks
        self.aligned = aligned
        self.size = int(size)
        self.align_fn = align_fn

    def __len__(self) -> int:
        return len(self.names)

    def load_uint8(self, i: int) -> np.ndarray:
        """Aligned face i as uint8 (size, size, 3)."""
        path = self.image_dir / self.names[i]
        img = read_image(path)
        is_crop = img.shape[0] == self.size and img.shape[1] == self.size
        if self.aligned is True or (self.aligned == "auto" and is_crop):
            if not is_crop:
                raise ValueError(
                    f"{path}: image is {img.shape[1]}x{img.shape[0]}, not an aligned {self.size}x{self.size} crop; "
                    "use aligned='auto' or False to align it with its landmarks"
                )
            return img
        if self.landmarks is None:
            raise ValueError(f"{path}: not {self.size}x{self.size} and no landmarks to align it (need *_name_5pts_score.txt)")
        align = self.align_fn
        if align is None:
            from lh2face.align import align_face as align
        return np.asarray(align(img, np.asarray(self.landmarks[i], dtype=np.float32), size=self.size), dtype=np.uint8)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.load_uint8(i)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


# ---------------------------------------------------------------------------------------- features


def image_features(
    feats: np.ndarray,
    det_scores: Optional[np.ndarray] = None,
    use_norm_weighting: bool = True,
    use_detector_score: bool = True,
) -> np.ndarray:
    """Per-image features ready for pooling, (N, d) -> (N, d) (float32 stays float32: IJB-C is 469k x d).

    ``use_norm_weighting``: keep the raw (flip-summed) feature, so its norm weights it in the media /
    template sums; False L2-normalises each row first. ``use_detector_score``: multiply row i by
    ``det_scores[i]`` (ignored when ``det_scores`` is None).
    """
    f = np.asarray(feats)
    if f.dtype not in (np.float32, np.float64):
        f = f.astype(np.float64)
    if f.ndim != 2:
        raise ValueError(f"image features must be (N, d), got {f.shape}")
    if not use_norm_weighting:
        f = l2_normalize(f)
    if use_detector_score and det_scores is not None:
        s = np.asarray(det_scores, dtype=np.float64).reshape(-1)
        if s.shape[0] != f.shape[0]:
            raise ValueError(f"{f.shape[0]} features but {s.shape[0]} detector scores")
        f = f * s.astype(f.dtype)[:, None]
    return f


def template_features(
    img_feats: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    normalize: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Pool image features into template features.

    Within a template, images of the same media id are averaged; the template feature is the sum
    of its media means, then (``normalize``) L2-normalised. Media ids are grouped per template.

    Args: img_feats (N, d); templates, medias (N,) ints.
    Returns: (template_ids (T,) int64 ascending, feats (T, d) in the dtype of img_feats (float32/64)).
    """
    f = np.asarray(img_feats)
    if f.dtype not in (np.float32, np.float64):
        f = f.astype(np.float64)
    t = np.asarray(templates).astype(np.int64).reshape(-1)
    m = np.asarray(medias).astype(np.int64).reshape(-1)
    if f.ndim != 2 or f.shape[0] != t.shape[0] or t.shape != m.shape:
        raise ValueError(f"img_feats (N,d), templates (N,), medias (N,) disagree: {f.shape}, {t.shape}, {m.shape}")
    if f.shape[0] == 0:
        raise ValueError("no image features to pool")
    tids, t_idx = np.unique(t, return_inverse=True)
    _, m_idx = np.unique(m, return_inverse=True)
    n_media_ids = int(m_idx.max()) + 1
    key = t_idx.astype(np.int64) * n_media_ids + m_idx  # one key per (template, media)
    media_keys, media_of_image, counts = np.unique(key, return_inverse=True, return_counts=True)
    media_of_image = media_of_image.reshape(-1)
    # sums by index_add (far faster than np.add.reduceat along rows); accumulates in f's dtype
    ft = torch.from_numpy(np.ascontiguousarray(f))
    media_sums = torch.zeros((media_keys.size, f.shape[1]), dtype=ft.dtype).index_add_(
        0, torch.from_numpy(media_of_image.astype(np.int64)), ft
    )
    media_means = media_sums / torch.from_numpy(counts).to(ft.dtype)[:, None]
    media_template = torch.from_numpy((media_keys // n_media_ids).astype(np.int64))
    feats = (
        torch.zeros((tids.size, f.shape[1]), dtype=ft.dtype).index_add_(0, media_template, media_means).numpy()
    )
    if normalize:
        feats = l2_normalize(feats)
    return tids, feats


def pair_scores(
    template_feats: np.ndarray,
    template_ids: np.ndarray,
    pairs: np.ndarray,
    chunk: Optional[int] = None,
) -> np.ndarray:
    """Cosine similarity of template pairs.

    Args: template_feats (T, d); template_ids (T,) the id of each row; pairs (P, 2) template ids;
    chunk: pairs per block (memory bound), default ~64 MB of gathered features.
    Returns (P,) float64. A template with a zero feature (e.g. all detector scores 0) scores 0.
    """
    feats = l2_normalize(np.asarray(template_feats, dtype=np.float64))
    ids = np.asarray(template_ids).astype(np.int64).reshape(-1)
    p = np.asarray(pairs).astype(np.int64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pairs must be (P, 2) template ids, got {p.shape}")
    if ids.shape[0] != feats.shape[0]:
        raise ValueError(f"{feats.shape[0]} template features but {ids.shape[0]} template ids")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.searchsorted(sorted_ids, p)
    pos_c = np.minimum(pos, sorted_ids.size - 1)
    found = sorted_ids[pos_c] == p
    if not np.all(found):
        missing = np.unique(p[~found])
        raise ValueError(f"{missing.size} template id(s) in pairs have no features, e.g. {missing[:5].tolist()}")
    rows = order[pos_c]
    # group pairs by their first template: one gather + matrix-vector product per group
    # (about 4x faster than gathering both sides pair by pair)
    out = np.empty(p.shape[0], dtype=np.float64)
    by_first = np.argsort(rows[:, 0], kind="stable")
    first = rows[by_first, 0]
    second = rows[by_first, 1]
    bounds = np.r_[0, np.nonzero(np.diff(first))[0] + 1, first.size]
    if chunk is None:  # bound the gathered block to ~64 MB whatever d is
        chunk = max(1024, (1 << 23) // max(1, feats.shape[1]))
    for g in range(bounds.size - 1):
        anchor = feats[first[bounds[g]]]
        for s in range(int(bounds[g]), int(bounds[g + 1]), chunk):
            e = min(s + chunk, int(bounds[g + 1]))
            out[by_first[s:e]] = feats[second[s:e]] @ anchor
    return out


def evaluate_template_scores(
    scores: np.ndarray,
    labels: np.ndarray,
    fars: Iterable[float] = DEFAULT_FARS,
    name: str = "model",
) -> Dict[str, Any]:
    """ROC, AUC, TAR@FAR (values and details) and a one-row markdown table from pair scores."""
    fars = tuple(float(f) for f in fars)
    roc = roc_curve(scores, labels)
    details = tar_at_far_details(scores, labels, fars, roc=roc)
    fpr, tpr, thr = roc
    return {
        "tar_at_far": {f: d["tar"] for f, d in details.items()},
        "tar_at_far_details": details,
        "auc": auc(fpr, tpr),
        "fpr": fpr,
        "tpr": tpr,
        "roc_thresholds": thr,
        "table": tar_table_markdown({name: details}, fars),
        "n_pairs": int(np.asarray(labels).size),
        "n_genuine": int(np.sum(labels)),
        "n_impostor": int(np.asarray(labels).size - np.sum(labels)),
    }


def evaluate_features(
    meta: IJBMeta,
    raw_feats: np.ndarray,
    use_norm_weighting: bool = True,
    use_detector_score: bool = True,
    fars: Iterable[float] = DEFAULT_FARS,
    name: str = "model",
) -> Dict[str, Any]:
    """Stages 1b-3 from raw (flip-summed) image features (N, d) in meta order: weighting, pooling,
    pair scores, metrics. Returns the dict of :func:`evaluate_template_scores` plus ``scores``,
    ``labels``, ``template_ids``, ``template_feats`` and ``used_detector_score``."""
    raw = np.asarray(raw_feats)
    if raw.ndim != 2 or raw.shape[0] != meta.n_images:
        raise ValueError(f"expected ({meta.n_images}, d) image features in face_tid_mid order, got {raw.shape}")
    used_det = bool(use_detector_score and meta.det_scores is not None)
    if use_detector_score and meta.det_scores is None:
        log.warning("no detector scores (no *_name_5pts_score.txt); evaluating without detector-score weighting")
    feats = image_features(raw, meta.det_scores, use_norm_weighting, used_det)
    tids, tfeats = template_features(feats, meta.templates, meta.medias)
    scores = pair_scores(tfeats, tids, meta.pairs)
    out = evaluate_template_scores(scores, meta.labels, fars, name=name)
    out.update(scores=scores, labels=meta.labels, template_ids=tids, template_feats=tfeats, used_detector_score=used_det)
    return out


# ------------------------------------------------------------------------------------------- driver


def evaluate_ijb(
    root: PathLike,
    target: str,
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 128,
    use_flip_test: bool = True,
    use_norm_weighting: bool = True,
    use_detector_score: bool = True,
    out_dir: Optional[PathLike] = None,
    name: str = "model",
    image_dir: Optional[PathLike] = None,
    aligned: Union[str, bool] = "auto",
    device: Union[str, torch.device] = "cpu",
    num_workers: int = 0,
    fars: Iterable[float] = DEFAULT_FARS,
    progress: bool = True,
    align_fn: Optional[AlignFn] = None,
    save_features: bool = False,
) -> Dict[str, Any]:
    """IJB-B/C 1:1 verification of ``embed_fn`` end to end.

    Args:
        root: IJB folder holding ``meta/`` and ``loose_crop/``; target: 'IJBB' or 'IJBC'.
        embed_fn: (B, 3, 112, 112) float [0, 1] on ``device`` -> (B, d).
        use_flip_test / use_norm_weighting / use_detector_score: the protocol switches (defaults
            as insightface's evaluation: all on).
        out_dir: when given, writes ``<t>_tar_at_far.md``, ``<t>_roc.png``, ``<t>_result.json``,
            ``<t>_scores.npz`` (scores, labels) and with ``save_features`` ``<t>_img_feats.npy``.
        image_dir: default ``root/loose_crop``; aligned: see :class:`IJBFaces`.
    Returns a plain dict: target, name, settings, n_images, n_templates, n_pairs, n_genuine,
    n_impostor, tar_at_far {far: TAR or NaN}, tar_at_far_details, auc, table (markdown), fpr, tpr,
    scores, labels (numpy), seconds per stage, files (paths written).
    """
    t0 = time.perf_counter()
    meta = load_meta(root, target, require_landmarks=aligned is not True)
    image_dir = Path(image_dir) if image_dir is not None else Path(root) / "loose_crop"
    faces = IJBFaces(image_dir, meta.names, meta.landmarks, aligned=aligned, align_fn=align_fn)
    t1 = time.perf_counter()
    source: Any = faces
    if num_workers > 0:
        source = torch.utils.data.DataLoader(faces, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    raw = extract_embeddings(
        embed_fn, source, batch_size=batch_size, flip=use_flip_test, device=device, progress=progress,
        desc=f"{meta.target} faces",
    )
    t2 = time.perf_counter()
    res = evaluate_features(meta, raw, use_norm_weighting, use_detector_score, fars, name=name)
    t3 = time.perf_counter()
    result: Dict[str, Any] = {
        "target": meta.target.upper(),
        "name": name,
        "settings": {
            "use_flip_test": bool(use_flip_test),
            "use_norm_weighting": bool(use_norm_weighting),
            "use_detector_score": res.pop("used_detector_score"),
            "aligned": aligned,
        },
        "n_images": meta.n_images,
        "n_templates": int(res["template_ids"].size),
        **res,
        "seconds": {"meta": t1 - t0, "features": t2 - t1, "scores": t3 - t2},
        "files": {},
    }
    if out_dir is not None:
        result["files"] = write_outputs(out_dir, result, raw if save_features else None)
    return result


def write_outputs(out_dir: PathLike, result: Dict[str, Any], img_feats: Optional[np.ndarray] = None) -> Dict[str, str]:
    """Write table (.md), ROC (.png), summary (.json) and scores (.npz) of an :func:`evaluate_ijb` result."""
    from .plots import plot_roc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = target_prefix(result["target"])
    files = {
        "table": out / f"{t}_tar_at_far.md",
        "roc": out / f"{t}_roc.png",
        "json": out / f"{t}_result.json",
        "scores": out / f"{t}_scores.npz",
    }
    s = result["settings"]
    header = (
        f"# {result['target']} 1:1 verification: {result['name']}\n\n"
        f"{result['n_images']} images, {result['n_templates']} templates, {result['n_pairs']} pairs "
        f"({result['n_genuine']} genuine, {result['n_impostor']} impostor); flip-test {s['use_flip_test']}, "
        f"norm weighting {s['use_norm_weighting']}, detector score {s['use_detector_score']}; "
        f"AUC {result['auc']:.6f}. TAR in %.\n\n"
    )
    write_text_atomic(files["table"], header + result["table"])
    plot_roc(files["roc"], {result["name"]: (result["fpr"], result["tpr"])}, title=f"{result['target']} 1:1 ROC")
    buf = io.BytesIO()
    np.savez(buf, scores=result["scores"], labels=result["labels"])
    with atomic_write(files["scores"], "wb") as fh:
        fh.write(buf.getvalue())
    if img_feats is not None:
        files["img_feats"] = out / f"{t}_img_feats.npy"
        buf = io.BytesIO()
        np.save(buf, np.asarray(img_feats, dtype=np.float32))
        with atomic_write(files["img_feats"], "wb") as fh:
            fh.write(buf.getvalue())
    summary = {
        k: result[k]
        for k in ("target", "name", "settings", "n_images", "n_templates", "n_pairs", "n_genuine", "n_impostor", "auc", "seconds")
    }
    summary["tar_at_far"] = {format_far(f): (None if v != v else v) for f, v in result["tar_at_far"].items()}
    summary["tar_at_far_details"] = {
        format_far(f): {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}
        for f, d in result["tar_at_far_details"].items()
    }
    summary["files"] = {k: str(v) for k, v in files.items()}
    write_json_atomic(files["json"], summary)
    return {k: str(v) for k, v in files.items()}
