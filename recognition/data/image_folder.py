"""Folder-per-identity image datasets: root/<identity>/<image>.{jpg,jpeg,png,pgm,ppm,bmp}."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from lh2face.io import ImageReadError

from .transforms import Transform, check_on_error, load_sample, logger

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")

Sample = Optional[Tuple[torch.Tensor, int]]


class ImageListDataset(Dataset):
    """Images from a list of (path, label): item -> (image float (3, S, S) in [0, 1], label int).

    Args:
        samples: sequence of (path, label).
        image_size: output side S; images of another size are resized (bilinear). None keeps the size.
        on_error: "raise" -> ImageReadError naming the file; "skip" -> the item is None, the file name is
            logged (logger "recognition.data") and counted in `num_failed` (per process).
        transform: optional callable on the float (3, S, S) tensor (e.g. RandomHorizontalFlip).
    """

    def __init__(
        self,
        samples: Sequence[Tuple[Union[str, os.PathLike], int]],
        image_size: Optional[int] = 112,
        on_error: str = "raise",
        transform: Optional[Transform] = None,
    ) -> None:
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        self.samples: List[Tuple[str, int]] = [(str(p), int(y)) for p, y in samples]
        self.image_size = image_size
        self.on_error = check_on_error(on_error)
        self.transform = transform
        self.num_failed = 0
        self.failed_files: List[str] = []

    @property
    def targets(self) -> List[int]:
        """Label of every sample, in order (no image decoding)."""
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.samples[index]
        try:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ImageReadError(f"{path}: cannot read ({exc})") from exc
            image = load_sample(data, path, self.image_size)
        except ImageReadError as exc:
            if self.on_error == "raise":
                raise
            self.num_failed += 1
            self.failed_files.append(path)
            logger.warning("skipping unreadable image %s: %s", path, exc)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class ImageFolderDataset(ImageListDataset):
    """root/<identity>/<images>: identities sorted by folder name get labels 0..C-1.

    Grey (PGM, L), palette, alpha and CMYK images become RGB; see ImageListDataset for the options.
    Attributes: classes (folder names), class_to_idx, samples [(path, label)], targets.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        image_size: Optional[int] = 112,
        on_error: str = "raise",
        transform: Optional[Transform] = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolderDataset: '{root}' is not a folder; expected root/<identity>/<image>")
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        samples: List[Tuple[str, int]] = []
        kept: List[str] = []
        for name in classes:
            files = sorted(
                f for f in (self.root / name).iterdir() if f.is_file() and f.suffix.lower() in exts
            )
            if not files:
                continue  # an identity folder without images gets no label
            label = len(kept)
            kept.append(name)
            samples.extend((str(f), label) for f in files)
        if not samples:
            raise FileNotFoundError(
                f"ImageFolderDataset: no images with extensions {', '.join(exts)} under '{root}/<identity>/'"
            )
        self.classes: List[str] = kept
        self.class_to_idx = {c: i for i, c in enumerate(kept)}
        super().__init__(samples, image_size=image_size, on_error=on_error, transform=transform)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
