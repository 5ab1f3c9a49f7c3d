"""Batched embedding extraction with flip-test, for any ``embed_fn(images) -> embeddings``.

``embed_fn`` takes a float batch (B, 3, H, W) in [0, 1] on ``device`` and returns (B, d); a plain
backbone, the joint 7-channel model wrapped to take RGB, or a test double all fit. Flip-test is the
sum of the embeddings of the image and of its horizontal mirror; the sum is *not* normalised by
default, so its norm still carries the quality signal used by norm-weighted template pooling.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

EmbedFn = Callable[[torch.Tensor], torch.Tensor]


def _image_of(item: Any, where: str) -> torch.Tensor:
    """The image tensor of a dataset item: a tensor, (image, label, ...) or {'image': ...}."""
    if isinstance(item, dict):
        if "image" not in item:
            raise ValueError(f"{where}: dict item has no 'image' key (keys: {sorted(item)})")
        item = item["image"]
    elif isinstance(item, (tuple, list)):
        if not item:
            raise ValueError(f"{where}: empty tuple item")
        item = item[0]
    if item is None:
        raise ValueError(f"{where}: got None instead of an image (unreadable file skipped upstream?)")
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not torch.is_tensor(item):
        raise TypeError(f"{where}: expected a tensor image (3,H,W) or batch (B,3,H,W), got {type(item).__name__}")
    if item.ndim not in (3, 4):
        raise ValueError(f"{where}: expected (3,H,W) or (B,3,H,W), got shape {tuple(item.shape)}")
    return item


def iter_batches(images: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield (B, C, H, W) float batches of at most ``batch_size`` from a tensor, a Dataset or an iterable.

    Single images (C, H, W) are stacked; batches (B, C, H, W) (e.g. from a DataLoader) are re-cut
    to ``batch_size``. Items may be tensors, numpy arrays, (image, label) tuples or dicts with 'image'.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if torch.is_tensor(images):
        if images.ndim != 4:
            raise ValueError(f"images tensor must be (N,C,H,W), got shape {tuple(images.shape)}")
        for i in range(0, images.shape[0], batch_size):
            yield images[i : i + batch_size]
        return
    if hasattr(images, "__getitem__") and hasattr(images, "__len__") and not isinstance(images, (list, tuple)):
        source: Iterable[Any] = (images[i] for i in range(len(images)))  # map-style Dataset
    else:
        source = images
    pending: List[torch.Tensor] = []
    n_pending = 0
    for idx, item in enumerate(source):
        img = _image_of(item, f"item {idx}")
        chunk = img.unsqueeze(0) if img.ndim == 3 else img
        pending.append(chunk)
        n_pending += chunk.shape[0]
        while n_pending >= batch_size:
            cat = torch.cat(pending, 0) if len(pending) > 1 else pending[0]
            yield cat[:batch_size]
            rest = cat[batch_size:]
            pending = [rest] if rest.shape[0] else []
            n_pending = rest.shape[0]
    if n_pending:
        yield torch.cat(pending, 0) if len(pending) > 1 else pending[0]


def _length(images: Any) -> Optional[int]:
    if torch.is_tensor(images) or isinstance(images, np.ndarray):
        return int(images.shape[0])
    dataset = getattr(images, "dataset", None)  # DataLoader
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    try:
        return len(images)
    except TypeError:
        return None


@torch.no_grad()
def extract_embeddings(
    embed_fn: EmbedFn,
    images: Any,
    batch_size: int = 64,
    flip: bool = True,
    device: Union[str, torch.device] = "cpu",
    normalize: bool = False,
    progress: bool = True,
    return_both: bool = False,
    desc: str = "embeddings",
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Embed all images, optionally with flip-test.

    Args:
        embed_fn: (B, 3, H, W) float [0, 1] on ``device`` -> (B, d). An ``nn.Module`` is put in
            eval mode for the call and restored afterwards.
        images: tensor / array (N, 3, H, W) float [0, 1], a map-style Dataset, a DataLoader or any
            iterable of images / batches (see :func:`iter_batches`).
        flip: add the embedding of the horizontally mirrored image (flip-test).
        normalize: L2-normalise the returned rows (drops the norm / quality signal).
        return_both: return ``(emb, emb_flipped)`` separately, each (N, d), un-summed
            (``normalize`` then applies to each); requires ``flip``.
    Returns:
        (N, d) float32 numpy array: e(x) + e(flip(x)) with ``flip``, else e(x).
    """
    if return_both and not flip:
        raise ValueError("return_both=True needs flip=True")
    module = embed_fn if isinstance(embed_fn, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    total = _length(images)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="img", leave=False)
    outs: List[np.ndarray] = []
    outs_flip: List[np.ndarray] = []
    try:
        for batch in iter_batches(images, batch_size):
            x = batch.to(device=device, dtype=torch.float32, non_blocking=True)
            e = _embed(embed_fn, x)
            if flip:
                ef = _embed(embed_fn, torch.flip(x, dims=(3,)))
                if ef.shape != e.shape:
                    raise ValueError(f"embed_fn gave {tuple(ef.shape)} for flipped images but {tuple(e.shape)} for originals")
                if return_both:
                    outs_flip.append(ef.float().cpu().numpy())
                else:
                    e = e + ef
            outs.append(e.float().cpu().numpy())
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
        if module is not None and was_training:
            module.train()
    if not outs:
        raise ValueError("no images to embed (empty input)")
    emb = np.concatenate(outs, 0).astype(np.float32, copy=False)
    if return_both:
        embf = np.concatenate(outs_flip, 0).astype(np.float32, copy=False)
        return (l2_normalize(emb), l2_normalize(embf)) if normalize else (emb, embf)
    return l2_normalize(emb) if normalize else emb


def _embed(embed_fn: EmbedFn, x: torch.Tensor) -> torch.Tensor:
    e = embed_fn(x)
    if not torch.is_tensor(e):
        e = torch.as_tensor(np.asarray(e))
    if e.ndim != 2 or e.shape[0] != x.shape[0]:
        raise ValueError(f"embed_fn must return (B, d) for a batch of {x.shape[0]}, got {tuple(e.shape)}")
    return e


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero). (N, d) -> (N, d)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(x.dtype, copy=False)
