"""Evaluation: verification metrics (ROC, TAR@FAR), the LFW 10-fold protocol, flip-test embedding
extraction, ROC / bar plots and the IJB-B/C 1:1 template protocol.

Submodules: ``metrics``, ``verification``, ``features``, ``plots``, ``ijb``. The most used names are
re-exported here; ``plots`` (matplotlib) and ``ijb`` are imported on first use.
"""

from .features import extract_embeddings, l2_normalize
from .metrics import DEFAULT_FARS, auc, roc_auc, roc_curve, tar_at_far, tar_at_far_details, tar_table_markdown
from .verification import evaluate_image_pairs, evaluate_pairs, evaluate_scores

__all__ = [
    "DEFAULT_FARS",
    "auc",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "tar_at_far_details",
    "tar_table_markdown",
    "evaluate_pairs",
    "evaluate_scores",
    "evaluate_image_pairs",
    "extract_embeddings",
    "l2_normalize",
]
