"""LFW's pairs.txt (View 2: 10 folds x (300 matched + 300 mismatched) pairs; View 1 pairsDevTrain/Test).

File layout (Huang et al., LFW technical report 07-49, README of the data set):
    first line: "<folds>\t<n>" (pairs.txt: "10\t300") or "<n>" (pairsDevTrain.txt: "1100")
    matched pair:    name<TAB>i<TAB>j            -> name/name_000i.jpg and name/name_000j.jpg
    mismatched pair: name1<TAB>i<TAB>name2<TAB>j
Each fold is n matched lines followed by n mismatched lines. Image numbers are 1-based, zero-padded to 4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]


@dataclass
class LFWPairs:
    """Pairs from an LFW pairs file. path1/path2: lists of Path; issame (N,) bool; fold (N,) int."""

    path1: List[Path]
    path2: List[Path]
    issame: np.ndarray
    fold: np.ndarray
    n_folds: int = 1
    _unique: Optional[Tuple[List[Path], np.ndarray, np.ndarray]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.path1)

    def __iter__(self) -> Iterator[Tuple[Path, Path, bool]]:
        for a, b, s in zip(self.path1, self.path2, self.issame):
            yield a, b, bool(s)

    def unique_paths(self) -> Tuple[List[Path], np.ndarray, np.ndarray]:
        """(distinct image paths in first-seen order, index of path1 in it (N,), index of path2 (N,)):
        embed each image once, then pair up embeddings[idx1] with embeddings[idx2]."""
        if self._unique is None:
            pos: Dict[Path, int] = {}
            for p in self.path1 + self.path2:
                pos.setdefault(p, len(pos))
            idx1 = np.array([pos[p] for p in self.path1], dtype=np.int64)
            idx2 = np.array([pos[p] for p in self.path2], dtype=np.int64)
            self._unique = (list(pos), idx1, idx2)
        return self._unique


def lfw_image_path(lfw_root: PathLike, name: str, number: int, ext: str = "jpg") -> Path:
    """lfw_root/name/name_%04d.ext."""
    return Path(lfw_root) / name / f"{name}_{int(number):04d}.{ext.lstrip('.')}"


def read_lfw_pairs(pairs_txt: PathLike, lfw_root: PathLike, ext: str = "jpg", check_exists: bool = True) -> LFWPairs:
    """Parse an LFW pairs file (3-field matched and 4-field mismatched lines, optional header).

    Args:
        pairs_txt: pairs.txt / pairsDevTest.txt.
        lfw_root: folder holding one sub-folder per person.
        ext: image extension ("jpg"; aligned copies are often "png").
        check_exists: raise FileNotFoundError listing missing images (first ten) if any is absent.
    Returns:
        LFWPairs; folds follow the header (each fold is n matched then n mismatched lines).
    """
    pairs_txt = Path(pairs_txt)
    if not pairs_txt.is_file():
        raise FileNotFoundError(f"LFW pairs file '{pairs_txt}' does not exist")
    lines = [ln.strip() for ln in pairs_txt.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ValueError(f"{pairs_txt}: empty pairs file")
    n_folds, per_fold = 1, None
    head = lines[0].split()
    if all(tok.isdigit() for tok in head) and len(head) in (1, 2):
        if len(head) == 2:
            n_folds, per_fold = int(head[0]), int(head[1])
        else:
            per_fold = int(head[0])
        lines = lines[1:]
    p1: List[Path] = []
    p2: List[Path] = []
    same: List[bool] = []
    for lineno, line in enumerate(lines, 2 if per_fold is not None else 1):
        f = line.split("\t") if "\t" in line else line.split()
        try:
            if len(f) == 3:
                p1.append(lfw_image_path(lfw_root, f[0], int(f[1]), ext))
                p2.append(lfw_image_path(lfw_root, f[0], int(f[2]), ext))
                same.append(True)
            elif len(f) == 4:
                p1.append(lfw_image_path(lfw_root, f[0], int(f[1]), ext))
                p2.append(lfw_image_path(lfw_root, f[2], int(f[3]), ext))
                same.append(False)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"{pairs_txt}:{lineno}: expected 'name i j' or 'name1 i name2 j', got {line!r}"
            ) from None
    n = len(same)
    if per_fold is not None:
        if n != n_folds * 2 * per_fold:
            raise ValueError(
                f"{pairs_txt}: header announces {n_folds} fold(s) of {per_fold}+{per_fold} pairs "
                f"({n_folds * 2 * per_fold}) but the file has {n} pair lines"
            )
        fold = np.arange(n) // (2 * per_fold)
    else:
        fold = np.zeros(n, dtype=np.int64)
    if check_exists:
        missing = sorted({str(p) for p in p1 + p2 if not p.is_file()})
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) named in {pairs_txt} are missing under '{lfw_root}' "
                f"(ext '{ext}'), e.g. {', '.join(missing[:10])}"
            )
    return LFWPairs(p1, p2, np.asarray(same, dtype=bool), fold.astype(np.int64), n_folds)
