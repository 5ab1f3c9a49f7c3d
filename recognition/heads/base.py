"""What every margin head shares: proxies, cosines, the (shardable) softmax cross-entropy, logging.

A head's forward is split so that one code path serves a single process and a classifier sharded over
ranks (recognition.sharded):

    cos (B, C_local) = normalize(z) @ normalize(W_local)^T
    stats            = head.batch_statistics(norms, ctx)            # replicated, detached (EMA updates)
    logits           = head.margin_logits(cos, norms, target_col, stats)    # pure, (B, C_local)
    partials         = {"l_ce": cross_entropy(...), **head.extra_losses(...)}

`target_col` (B,) long holds each sample's target column *inside the local proxy block* or -1 when the
target lives elsewhere, so margins touch only the target column and only where it lives.

Sharding semantics ("partial losses"): every term is returned as this rank's partial, and the partials
over ranks sum to the term. Collectives are differentiable with their true adjoint (the adjoint of an
all-reduce-sum is an all-reduce-sum, of an all-gather a reduce-scatter), so each rank back-propagating
its own partial yields exactly the gradient of the total. A value that every rank computes identically
(e.g. the softmax loss after the max/sum all-reduces) contributes value / world to each partial.
With one process the context is the identity and the partial is the total.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Logs = Dict[str, torch.Tensor]

__all__ = [
    "ShardContext",
    "MarginHead",
    "sharded_cross_entropy",
    "replace_target",
    "target_values",
    "label_counts",
]


class ShardContext:
    """Single-process context: this rank holds every class; collectives are identities.

    recognition.sharded.DistributedShardContext overrides the collectives for a process group.
    """

    world: int = 1
    rank: int = 0
    # True when `norms` seen by batch_statistics are already those of the global batch (sharded case);
    # False for a plain head, where under data parallelism each rank sees its own batch only.
    stats_are_global: bool = False

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable sum over ranks (adjoint: sum over ranks)."""
        return x

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """Max over ranks, no gradient."""
        return x.detach()

    def reduce_logs(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of detached partials over ranks (for logging)."""
        return x.detach()


def target_values(x: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """x[i, target_col[i]] for rows with target_col >= 0, 0 elsewhere. x (B, C), target_col (B,) -> (B,)."""
    valid = target_col >= 0
    picked = x.gather(1, target_col.clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def replace_target(x: torch.Tensor, target_col: torch.Tensor, new_target: torch.Tensor) -> torch.Tensor:
    """Copy of x (B, C) with x[i, target_col[i]] = new_target[i] where target_col[i] >= 0 (differentiable)."""
    valid = target_col >= 0
    idx = target_col.clamp_min(0).unsqueeze(1)
    old = x.gather(1, idx).squeeze(1)
    val = torch.where(valid, new_target.to(x.dtype), old)
    return x.scatter(1, idx, val.unsqueeze(1))


def label_counts(labels: torch.Tensor) -> torch.Tensor:
    """(B,) number of samples in the batch sharing each sample's label (no host sync)."""
    return (labels.unsqueeze(0) == labels.unsqueeze(1)).sum(1)


def sharded_cross_entropy(logits: torch.Tensor, target_col: torch.Tensor, ctx: ShardContext) -> torch.Tensor:
    """This rank's partial of mean_i CE(logits_i, y_i) where each rank holds a block of the columns.

    logits (B, C_local) float; target_col (B,) local target column or -1. The max and the sum of the
    softmax denominators and the target logit are all-reduced; the (replicated) mean loss is divided
    by the world size so the partials sum to it.
    """
    # log-sum-exp of the local block first: no (B, C) temporary is kept for the backward pass
    local_lse = torch.logsumexp(logits, dim=1)  # (B,)
    row_max = ctx.all_reduce_max(local_lse)  # detached; any per-row shift is exact
    sum_exp = ctx.all_reduce_sum(torch.exp(local_lse - row_max))
    target = ctx.all_reduce_sum(target_values(logits, target_col))
    per_sample = torch.log(sum_exp) + row_max - target
    return per_sample.mean() / ctx.world


class MarginHead(nn.Module):
    """Base class: proxies `weight` (C, d) and the shared forward; subclasses define the margin.

    Subclasses implement `margin_logits` (pure) and may override `batch_statistics`, `extra_losses`
    and `margin_logs`.
    """

    name = "base"

    def __init__(self, num_classes: int, embedding_size: int = 512, weight_init_std: float = 0.01) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"head '{self.name}': num_classes must be >= 1, got {num_classes}")
        if int(embedding_size) < 2:
            raise ValueError(f"head '{self.name}': embedding_size must be >= 2, got {embedding_size}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_size).normal_(0.0, float(weight_init_std)))

    # --- hooks ---------------------------------------------------------------------------------
    def batch_statistics(self, norms: torch.Tensor, ctx: Optional[ShardContext] = None) -> Dict[str, torch.Tensor]:
        """Detached statistics of the batch's norms (B,); may update EMA buffers."""
        return {}

    def margin_logits(
        self, cos: torch.Tensor, norms: torch.Tensor, target_col: torch.Tensor, stats: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """cos (B, C) (within rounding of [-1, 1]), norms (B,), target_col (B,) (-1: target elsewhere) -> (B, C)."""
        raise NotImplementedError

    def extra_losses(
        self,
        cos: torch.Tensor,
        norms: torch.Tensor,
        target_col: torch.Tensor,
        labels: torch.Tensor,
        proxies: torch.Tensor,
        stats: Dict[str, torch.Tensor],
        ctx: ShardContext,
    ) -> Dict[str, torch.Tensor]:
        """Partials of extra weighted loss terms (name -> 0-d tensor); none by default."""
        return {}

    def margin_logs(self, norms: torch.Tensor, stats: Dict[str, torch.Tensor]) -> Logs:
        """Replicated detached 0-d tensors describing the margin (must include 'margin')."""
        raise NotImplementedError

    # --- forward -------------------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Logs]:
        """embeddings (B, d) un-normalised, labels (B,) long in [0, C) -> (loss 0-d, logs)."""
        self._check_inputs(embeddings, labels, self.num_classes)
        return self.compute(embeddings, labels, labels, self.weight, ShardContext())

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        target_col: torch.Tensor,
        weight: torch.Tensor,
        ctx: ShardContext,
    ) -> Tuple[torch.Tensor, Logs]:
        """The shardable core. embeddings (B, d) and labels (B,) of the whole batch, weight (C_local, d)
        this rank's (possibly sampled) proxies, target_col (B,) local column of the target or -1.

        Returns (loss, logs): loss has the value of the total loss and the gradient of this rank's partial.
        """
        emb = embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings
        norms = emb.norm(dim=1).clamp_min(1e-12)
        x = emb / norms.unsqueeze(1)
        w = weight.to(emb.dtype)
        proxies = F.normalize(w, dim=1, eps=1e-12)
        # under autocast the product may come back in half precision: margins and softmax run in emb's dtype.
        # |cos| may exceed 1 by rounding; the margins that need [-1, 1] (acos, sqrt) clamp the target only.
        cos = (x @ proxies.t()).to(emb.dtype)
        stats = self.batch_statistics(norms.detach(), ctx)
        logits = self.margin_logits(cos, norms, target_col, stats)
        partials: Dict[str, torch.Tensor] = {"l_ce": sharded_cross_entropy(logits, target_col, ctx)}
        partials.update(self.extra_losses(cos, norms, target_col, labels, proxies, stats, ctx))
        loss_partial = sum(self.term_weight(k) * v for k, v in partials.items())
        names = list(partials)
        summed = ctx.reduce_logs(torch.stack([partials[k].detach() for k in names] + [loss_partial.detach()]))
        total = summed[-1]
        loss = loss_partial + (total - loss_partial).detach()
        logs: Logs = {"loss": total, "mean_norm": norms.detach().mean()}
        for i, k in enumerate(names):
            logs[self.log_name(k)] = summed[i]
        logs.update({k: v.detach() for k, v in self.margin_logs(norms.detach(), stats).items()})
        return loss, logs

    def term_weight(self, name: str) -> float:
        return 1.0

    def log_name(self, name: str) -> str:
        return name

    @staticmethod
    def _check_inputs(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        if embeddings.dim() != 2:
            raise ValueError(f"head: embeddings must be (B, d), got shape {tuple(embeddings.shape)}")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"head: labels must be (B,) with B = {embeddings.shape[0]}, got shape {tuple(labels.shape)}"
            )
        if labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"head: labels must be an integer (long) tensor, got {labels.dtype}")
        if labels.device.type == "cpu":
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
                raise ValueError(
                    f"head: labels must lie in [0, {num_classes}); got min {int(labels.min())}, "
                    f"max {int(labels.max())} - check num_classes against the dataset"
                )
        else:  # no host sync on accelerators
            torch._assert_async(((labels >= 0) & (labels < num_classes)).all(), "head: label out of range")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"


def check_positive(head: str, **values: float) -> None:
    """Raise a clear error for a non-positive option."""
    for k, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"head '{head}': option {k} must be a positive number, got {v!r}")
