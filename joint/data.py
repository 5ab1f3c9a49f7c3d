"""Datasets, identity splits, a resumable (distributed) batch sampler and verification pairs from config.

Every training sample becomes a dict ``{"image": (3,H,W) float [0,1], "label": int, ...}`` (synthetic
samples also carry ``coeffs`` and ``landmarks``; an ImageFolder aligned by `lh2face align`, i.e. with
root/landmarks.npz, carries ``landmarks`` (68,2) in pixels of the data.image_size image); samples that fail to load are ``None`` and are
counted by `collate_samples`, so the training loop can stop past ``data.max_bad_fraction``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lh2face.config import ConfigError

from .config import DataConfig, EvalConfig, resolve_path

log = logging.getLogger("lh2face.train")


# --------------------------------------------------------------------------------------------- samples


class DictSamples(Dataset):
    """Wraps a dataset of ``(image, label)`` / ``(image, label, landmarks)`` tuples or dicts (or None for a
    bad sample) into dicts.

    `indices` selects a subset; `label_map` renumbers labels (e.g. the training identities 0..N-1).
    """

    def __init__(self, base: Dataset, indices: Optional[Sequence[int]] = None,
                 label_map: Optional[Dict[int, int]] = None) -> None:
        self.base = base
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Optional[Dict[str, Any]]:
        item = self.base[self.indices[i]]
        if item is None:
            return None
        if isinstance(item, dict):
            out = dict(item)
        else:
            image, label = item[0], item[1]
            out = {"image": image, "label": label}
            if len(item) > 2 and item[2] is not None:
                out["landmarks"] = item[2]
        label = int(out["label"])
        out["label"] = self.label_map[label] if self.label_map is not None else label
        return out


class MemoryCache(Dataset):
    """Caches the items of a deterministic dataset (e.g. on-the-fly synthetic faces) after first use."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self._cache: Dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        if i not in self._cache:
            self._cache[i] = self.base[i]
        return self._cache[i]


def collate_samples(batch: Sequence[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """Stack dict samples, dropping ``None`` (bad) ones; ``n_bad`` counts them, ``n_seen`` all of them."""
    good = [b for b in batch if b is not None]
    out: Dict[str, Any] = {"n_bad": len(batch) - len(good), "n_seen": len(batch)}
    if not good:
        return out
    for key in good[0]:
        vals = [g[key] for g in good]
        if key == "label":
            out[key] = torch.as_tensor([int(v) for v in vals], dtype=torch.long)
        elif isinstance(vals[0], (torch.Tensor, np.ndarray)):
            out[key] = torch.stack([torch.as_tensor(v) for v in vals])
        elif isinstance(vals[0], (int, float)):
            out[key] = torch.as_tensor(vals)
        else:
            out[key] = vals
    if out["image"].dtype == torch.uint8:
        out["image"] = out["image"].float() / 255.0
    return out


# ------------------------------------------------------------------------------------------- samplers


class ResumableBatchSampler(Sampler[List[int]]):
    """Shuffled batches of indices for one epoch, partitioned over ranks, resumable mid-epoch.

    Epoch e's order is a permutation drawn from a generator seeded by (seed, e), padded to a multiple of
    ``world`` (like DistributedSampler) and strided by rank; the last incomplete batch is dropped so every
    rank runs the same number of steps. ``set_epoch(e, start_batch)`` starts epoch e at batch
    ``start_batch``: batch b of epoch e is a function of (seed, e, b, rank) only, so a resumed run sees
    exactly the batches the uninterrupted run would have.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True) -> None:
        if num_samples <= 0:
            raise ValueError("the training set is empty; check data.root / the identity split")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.per_rank = math.ceil(num_samples / world)
        if self.per_rank < batch_size:
            raise ValueError(
                f"schedule.batch_size={batch_size} is larger than the {self.per_rank} training samples per "
                f"process; lower the batch size"
            )
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def epoch_indices(self, epoch: int) -> List[int]:
        """This rank's index order for `epoch`."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world
        order = order + order[: total - len(order)]
        return order[self.rank : total : self.world]

    def __iter__(self) -> Iterator[List[int]]:
        idx = self.epoch_indices(self.epoch)
        for b in range(self.start_batch, self.batches_per_epoch):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


# ------------------------------------------------------------------------------------------- datasets


@dataclass
class DataBundle:
    """What the training loop needs: the training set, its number of classes, held-out eval data."""

    train: Dataset
    num_classes: int
    eval_images: Optional[torch.Tensor] = None  # (N,3,H,W) float [0,1]
    eval_labels: Optional[torch.Tensor] = None  # (N,)
    eval_pairs: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # (i1, i2, issame)
    eval_name: str = "heldout"
    extra: Optional[Dict[str, Any]] = None  # e.g. ground-truth eval coeffs for reconstruction error


def dataset_labels(ds: Any) -> List[int]:
    """Labels of every sample of an ImageFolder/RecordIO dataset, without decoding images."""
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return [int(v) for v in getattr(ds, attr)]
    if hasattr(ds, "samples"):
        return [int(s[1]) for s in ds.samples]
    return [int(ds[i][1]) for i in range(len(ds))]  # slow fallback: decodes every sample


def _imagefolder(root: str, image_size: int, on_error: str, landmarks: bool = True) -> Dataset:
    """ImageFolder at `root`; with `landmarks`, an aligned folder's sidecar (root/landmarks.npz) is read
    and its items carry landmarks; a sidecar that does not match the images is a ConfigError."""
    from lh2face.landmark_sidecar import SidecarError
    from recognition.data import ImageFolderDataset

    path = resolve_path(root)
    if not path.is_dir():
        raise ConfigError(f"data folder '{root}' does not exist")
    try:
        ds = ImageFolderDataset(str(path), image_size=image_size, on_error=on_error,
                                landmarks="auto" if landmarks else False)
    except SidecarError as exc:
        raise ConfigError(str(exc)) from None
    if landmarks:
        side = getattr(ds, "sidecar", None)
        log.info("%s: %s", root, f"68 landmarks per image from its sidecar ({side.size} px aligned crops)" if side
                 else "no landmark sidecar (align it with `lh2face align` for the landmark term of L_reco)")
    return ds


def split_identities(labels: Sequence[int], n_train: int, n_eval: int) -> Tuple[List[int], List[int], Dict[int, int]]:
    """Indices of training and held-out samples by identity (sorted label order) and the train label map."""
    ids = sorted(set(labels))
    if n_train <= 0:
        train_ids, eval_ids = ids, []
    else:
        if n_train >= len(ids):
            raise ConfigError(
                f"data.train_identities={n_train} leaves no held-out identity out of {len(ids)}; lower it"
            )
        train_ids = ids[:n_train]
        rest = ids[n_train:]
        eval_ids = rest if n_eval <= 0 else rest[:n_eval]
    tset, eset = set(train_ids), set(eval_ids)
    label_map = {lab: i for i, lab in enumerate(train_ids)}
    tr = [i for i, lab in enumerate(labels) if lab in tset]
    ev = [i for i, lab in enumerate(labels) if lab in eset]
    return tr, ev, label_map


def make_pairs(labels: Sequence[int], max_pairs: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Verification pairs among held-out images: every pair when there are at most `max_pairs`, else all
    genuine pairs (up to half) plus random impostor pairs; shuffled so that contiguous folds mix both."""
    lab = np.asarray(labels)
    n = len(lab)
    if n < 2:
        raise ValueError("need at least two held-out images to build verification pairs")
    i1, i2 = np.triu_indices(n, k=1)
    same = lab[i1] == lab[i2]
    rng = np.random.default_rng(seed)
    if len(i1) > max_pairs:
        pos = np.nonzero(same)[0]
        neg = np.nonzero(~same)[0]
        n_pos = min(len(pos), max_pairs // 2)
        pos = rng.choice(pos, n_pos, replace=False)
        neg = rng.choice(neg, min(len(neg), max_pairs - n_pos), replace=False)
        keep = np.concatenate([pos, neg])
    else:
        keep = np.arange(len(i1))
    keep = rng.permutation(keep)
    if not same[keep].any() or same[keep].all():
        raise ValueError("held-out pairs need both genuine and impostor pairs (>= 2 identities, >= 2 images each)")
    return (torch.as_tensor(i1[keep]), torch.as_tensor(i2[keep]), torch.as_tensor(same[keep]))


def balanced_subset(issame: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Indices of every genuine pair plus as many impostor pairs (drawn without replacement, in pair order),
    so that verification accuracy is measured at a 50% base rate (as LFW's protocol) rather than at the
    impostor share of all pairs."""
    same = torch.as_tensor(issame).bool().numpy()
    pos, neg = np.nonzero(same)[0], np.nonzero(~same)[0]
    k = min(len(pos), len(neg))
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
    return torch.as_tensor(np.sort(keep))


def _stack_eval(ds: Dataset, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor, List[Dict[str, Any]]]:
    """Load held-out samples into memory (skipping bad ones)."""
    images, labels, extras = [], [], []
    for i in indices:
        item = ds[i]
        if item is None:
            continue
        if not isinstance(item, dict):
            item = {"image": item[0], "label": item[1]}
        img = torch.as_tensor(item["image"])
        if img.dtype == torch.uint8:
            img = img.float() / 255.0
        images.append(img)
        labels.append(int(item["label"]))
        extras.append({k: v for k, v in item.items() if k not in ("image", "label")})
    if not images:
        raise ConfigError("no readable held-out images for evaluation")
    return torch.stack(images), torch.as_tensor(labels), extras


def build_data(cfg: DataConfig, ecfg: EvalConfig, seed: int = 0, need_eval: bool = True) -> DataBundle:
    """Build training data and held-out verification data from the `data` config section."""
    eval_ds, eval_idx, extra = None, None, None
    if cfg.kind == "synthetic":
        from recon.synth import SyntheticFaces

        from recon.synth import SynthOptions

        try:
            opts = SynthOptions(**cfg.synth_options)
        except TypeError as exc:
            raise ConfigError(f"data.synth_options: {exc}") from None
        base = SyntheticFaces(cfg.synth_identities, cfg.synth_images, seed=cfg.synth_seed, image_size=cfg.image_size,
                              options=opts)
        train = DictSamples(MemoryCache(base))
        num_classes = cfg.synth_identities
        if need_eval and cfg.synth_eval_identities > 0:
            eval_ds = SyntheticFaces(cfg.synth_eval_identities, cfg.synth_eval_images, seed=cfg.synth_seed,
                                     identity_offset=cfg.synth_identities, image_size=cfg.image_size, options=opts)
            eval_idx = list(range(len(eval_ds)))
    else:
        if cfg.kind == "imagefolder":
            base = _imagefolder(cfg.root, cfg.image_size, "skip")
        else:
            from recognition.data import RecordIODataset

            rec = resolve_path(cfg.rec or "")
            idx = resolve_path(cfg.idx) if cfg.idx else None
            base = RecordIODataset(str(rec), None if idx is None else str(idx), image_size=cfg.image_size,
                                   on_error="skip")
        labels = dataset_labels(base)
        tr, ev, label_map = split_identities(labels, cfg.train_identities, cfg.eval_identities)
        train = DictSamples(base, tr, label_map)
        num_classes = len(label_map) if cfg.train_identities > 0 else (max(labels) + 1 if labels else 0)
        if cfg.train_identities <= 0:
            label_map = None
            train = DictSamples(base, tr, None)
        if need_eval and ev:
            eval_ds, eval_idx = base, ev
    bundle = DataBundle(train=train, num_classes=num_classes)
    if need_eval:
        if eval_ds is None and cfg.eval_root:
            eval_ds = _imagefolder(cfg.eval_root, cfg.image_size, "skip", landmarks=False)
            eval_idx = list(range(len(eval_ds)))
        if eval_ds is not None:
            imgs, labs, extras = _stack_eval(eval_ds, eval_idx)
            bundle.eval_images, bundle.eval_labels = imgs, labs
            bundle.eval_pairs = make_pairs(labs.tolist(), ecfg.max_pairs, seed)
            if extras and "coeffs" in extras[0]:
                bundle.extra = {"coeffs": torch.stack([torch.as_tensor(e["coeffs"]) for e in extras])}
        elif cfg.eval_bin:
            from recognition.data import load_verification_bin

            imgs, issame = _load_bin(load_verification_bin(str(resolve_path(cfg.eval_bin))), cfg.image_size)
            n = len(issame)
            bundle.eval_images = imgs
            bundle.eval_pairs = (torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2), torch.as_tensor(issame))
            bundle.eval_name = resolve_path(cfg.eval_bin).stem
    return bundle


def _load_bin(result: Any, image_size: int) -> Tuple[torch.Tensor, List[bool]]:
    """Normalise what load_verification_bin returns to ((2N,3,S,S) float, issame list)."""
    images, issame = result[0], result[1]
    if isinstance(images, (list, tuple)):
        images = torch.stack([torch.as_tensor(np.asarray(im)) for im in images])
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    if images.dim() == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2).contiguous()
    if images.shape[-1] != image_size:
        images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                                 align_corners=False, antialias=True)
    return images, [bool(v) for v in issame]
