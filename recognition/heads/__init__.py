"""Classification heads behind one registry.

    head = build_head(name, num_classes, embedding_size=512, **options)
    loss, logs = head(embeddings (B, d), labels (B,) long)

Names: lh2face, arcface, cosface, adaface. `head.weight` (C, d) holds the proxies. `logs` holds detached
0-d tensors: loss, mean_norm, margin, and each loss term (l_vmf, l_pps, l_pns, l_pp for lh2face;
l_arcface / l_cosface / l_adaface for the baselines). The same heads run sharded over ranks through
recognition.sharded.ShardedClassifier.
"""

from __future__ import annotations

import inspect
from typing import Any, List

from lh2face.registry import Registry

from .base import MarginHead, ShardContext, sharded_cross_entropy
from .lh2face import LH2FaceHead, lh2face_logits
from .margins import (
    AdaFaceHead,
    ArcFaceHead,
    CosFaceHead,
    adaface_logits,
    adaface_norm_hat,
    arcface_logits,
    cosface_logits,
)

HEADS: Registry[MarginHead] = Registry("head")
HEADS.register("lh2face")(LH2FaceHead)
HEADS.register("arcface")(ArcFaceHead)
HEADS.register("cosface")(CosFaceHead)
HEADS.register("adaface")(AdaFaceHead)


def build_head(name: str, num_classes: int, embedding_size: int = 512, **options: Any) -> MarginHead:
    """Build a head by registry name; an unknown name or option raises an error naming it."""
    cls = HEADS.get(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "num_classes", "embedding_size"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"head '{name}': unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}"
        )
    return cls(num_classes, embedding_size, **options)


def head_names() -> List[str]:
    """Registered head names."""
    return list(HEADS.names())


__all__ = [
    "HEADS",
    "build_head",
    "head_names",
    "MarginHead",
    "ShardContext",
    "sharded_cross_entropy",
    "LH2FaceHead",
    "ArcFaceHead",
    "CosFaceHead",
    "AdaFaceHead",
    "lh2face_logits",
    "cosface_logits",
    "arcface_logits",
    "adaface_logits",
    "adaface_norm_hat",
]
