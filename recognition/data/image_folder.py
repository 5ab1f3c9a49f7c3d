"""Folder-per-identity image datasets: root/<identity>/<image>.{jpg,jpeg,png,pgm,ppm,bmp}.

An aligned folder written by `lh2face align` also holds root/landmarks.npz (lh2face.landmark_sidecar);
with `landmarks=True` (or "auto" and the file present) samples are (image, label, landmarks (68,2)
float32 in pixels of the returned image).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from lh2face.io import ImageReadError

from lh2face.landmark_sidecar import SidecarError, landmarks_for_files, load_sidecar, sidecar_path

from .transforms import RandomHorizontalFlip, Transform, check_on_error, decode_rgb, logger, resize_uint8, to_tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")

Sample = Optional[tuple]  # (image, label) or (image, label, landmarks)


class ImageListDataset(Dataset):
    """Images from a list of (path, label): item -> (image float (3, S, S) in [0, 1], label int).

    Args:
        samples: sequence of (path, label).
        image_size: output side S; images of another size are resized (bilinear). None keeps the size.
        on_error: "raise" -> ImageReadError naming the file; "skip" -> the item is None, the file name is
            logged (logger "recognition.data") and counted in `num_failed` (per process).
        transform: optional callable on the float (3, S, S) tensor (e.g. RandomHorizontalFlip; not with
            landmarks, which it would not move).
        landmarks: optional (N, 68, 2) pixels of each image as stored (`landmark_size` x `landmark_size`);
            items then carry them scaled to the output size. An image whose size is not landmark_size
            raises SidecarError naming it (whatever on_error): its landmarks would be wrong.
    """

    def __init__(
        self,
        samples: Sequence[Tuple[Union[str, os.PathLike], int]],
        image_size: Optional[int] = 112,
        on_error: str = "raise",
        transform: Optional[Transform] = None,
        landmarks: Optional[np.ndarray] = None,
        landmark_size: Optional[int] = None,
    ) -> None:
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        self.samples: List[Tuple[str, int]] = [(str(p), int(y)) for p, y in samples]
        if landmarks is not None:
            landmarks = np.asarray(landmarks, dtype=np.float32)
            if landmarks.shape != (len(self.samples), 68, 2):
                raise ValueError(f"landmarks must be ({len(self.samples)}, 68, 2), got {landmarks.shape}")
            if not isinstance(landmark_size, int) or landmark_size < 1:
                raise ValueError(f"landmark_size (the side of the images the landmarks refer to) must be a "
                                 f"positive int, got {landmark_size!r}")
            if isinstance(transform, RandomHorizontalFlip):
                raise ValueError("a flip transform would not mirror the landmarks; flip in the training loop")
        self.landmarks = landmarks
        self.landmark_size = landmark_size
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
            img = decode_rgb(data, path)
        except ImageReadError as exc:
            if self.on_error == "raise":
                raise
            self.num_failed += 1
            self.failed_files.append(path)
            logger.warning("skipping unreadable image %s: %s", path, exc)
            return None
        lm = None
        if self.landmarks is not None:
            if img.shape[:2] != (self.landmark_size, self.landmark_size):
                raise SidecarError(
                    f"{path}: image is {img.shape[1]}x{img.shape[0]} but its landmarks refer to a "
                    f"{self.landmark_size}x{self.landmark_size} crop; re-align the folder with `lh2face align`")
            out = self.image_size or self.landmark_size
            lm = self.landmarks[index] * np.float32(out / self.landmark_size)
        if self.image_size is not None:
            img = resize_uint8(img, self.image_size)
        image = to_tensor(img)
        if self.transform is not None:
            image = self.transform(image)
        return (image, label) if lm is None else (image, label, torch.from_numpy(lm))


class ImageFolderDataset(ImageListDataset):
    """root/<identity>/<images>: identities sorted by folder name get labels 0..C-1.

    Grey (PGM, L), palette, alpha and CMYK images become RGB; see ImageListDataset for the options.
    landmarks: False -> items (image, label); True -> root/landmarks.npz (written by `lh2face align`) must
    exist and have a row for every image (else SidecarError naming the sidecar and the image), items are
    (image, label, landmarks (68,2) float32 pixels of the returned image); "auto" -> True when it exists.
    Attributes: classes (folder names), class_to_idx, samples [(path, label)], targets, sidecar (or None).
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        image_size: Optional[int] = 112,
        on_error: str = "raise",
        transform: Optional[Transform] = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        landmarks: Union[bool, str] = False,
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
        if landmarks not in (True, False, "auto"):
            raise ValueError(f"landmarks must be True, False or 'auto', got {landmarks!r}")
        side_file = sidecar_path(self.root)
        use = landmarks is True or (landmarks == "auto" and side_file.is_file())
        self.sidecar = load_sidecar(side_file) if use else None
        lms = None
        if self.sidecar is not None:
            lms = landmarks_for_files(self.sidecar, self.root, [p for p, _ in samples], side_file)
        super().__init__(samples, image_size=image_size, on_error=on_error, transform=transform,
                         landmarks=lms, landmark_size=None if self.sidecar is None else self.sidecar.size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
