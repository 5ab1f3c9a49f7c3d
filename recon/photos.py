"""Reconstruction from real photographs (placeholder; filled below)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Union

from lh2face.io import PathLike

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def list_images(paths: Union[PathLike, Iterable[PathLike]], recursive: bool = True) -> List[Path]:
    """Files and folders -> image files. Folders are searched (recursively, sorted) for image
    suffixes; files given explicitly are kept whatever their suffix (a bad one is reported later).
    Raises FileNotFoundError naming a path that does not exist."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            out.extend(sorted(q for q in it if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out
