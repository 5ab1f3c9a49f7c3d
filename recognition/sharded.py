"""Classifier sharded over ranks (the Partial FC idea) for every head in recognition.heads.

Each rank holds the proxies of a contiguous block of classes (sizes differ by at most one when C is not
divisible by the world size). A step:

1. all-gather embeddings (autograd-aware: the backward sums the gradient over ranks and returns each
   rank its own slice) and labels;
2. cosines against the local proxies (optionally a random subset of them: every positive class kept,
   negatives sampled at `sample_rate`);
3. the head's statistics from the gathered batch (so LH2Face's batch-mean norm and AdaFace's mean/std
   are those of the global batch on every rank), its pure margin step on the local block (the target
   margin lands on the rank that owns the target column), softmax max / sum / target all-reduced;
4. proxy terms from what they need: L_pns uses local columns, L_pp all-reduces only the target proxies
   of the batch.

Gradients: every collective is differentiable with its exact adjoint, and each rank back-propagates its
own partial of the loss (the returned loss carries the total value), so each rank's embedding and proxy
gradients equal those of one process holding the whole classifier and the whole batch. DDP then
*averages* backbone gradients over ranks, which would divide them by the world size; pass
`ddp_average_compensation=True` to scale the embedding gradient by the world size (as insightface does).
With no process group (or world size 1) and sample_rate 1 the classifier is the plain head.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from .heads import build_head
from .heads.base import Logs, MarginHead, ShardContext

__all__ = [
    "ShardedClassifier",
    "DistributedShardContext",
    "shard_range",
    "all_gather_with_grad",
    "all_reduce_sum_with_grad",
    "proxy_memory_bytes",
    "proxy_memory_breakdown",
    "logits_memory_bytes",
]


def shard_range(num_classes: int, world: int, rank: int) -> Tuple[int, int]:
    """(first class, number of classes) held by `rank`; the first C % world ranks hold one extra."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard_range: need 0 <= rank < world, got rank {rank}, world {world}")
    if num_classes < world:
        raise ValueError(
            f"sharded classifier: num_classes ({num_classes}) must be >= world size ({world}) so every rank "
            "holds at least one proxy"
        )
    base, extra = divmod(num_classes, world)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any, grad_scale: float) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size(group)
        ctx.group, ctx.grad_scale = group, grad_scale
        ctx.rank, ctx.rows = dist.get_rank(group), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)  # gloo has no reduce_scatter
        mine = g[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        if ctx.grad_scale != 1.0:
            mine = mine * ctx.grad_scale
        return mine, None, None


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def all_gather_with_grad(x: torch.Tensor, group: Any = None, grad_scale: float = 1.0) -> torch.Tensor:
    """Concatenate x (B, ...) from every rank along dim 0 -> (world*B, ...); equal B on every rank.
    Backward: the gradient summed over ranks, this rank's slice, times grad_scale."""
    return _AllGather.apply(x, group, float(grad_scale))


def all_reduce_sum_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum over ranks; backward is the same sum (its adjoint)."""
    return _AllReduceSum.apply(x, group)


class DistributedShardContext(ShardContext):
    """Collectives of a torch.distributed process group, as used by MarginHead.compute."""

    stats_are_global = True  # the embeddings were all-gathered

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum_with_grad(x, self.group)

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.MAX, group=self.group)
        return y

    def reduce_logs(self, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.group)
        return y


class ShardedClassifier(nn.Module):
    """Any registered head with its proxies split over the ranks of a process group.

    ShardedClassifier(head, num_classes, embedding_size=512, sample_rate=1.0, process_group=None,
    ddp_average_compensation=False, **head_options). `head` is a registry name; `self.head` is that
    head built for the local block, so `self.weight` (C_local, d) holds rows
    [class_start, class_start + num_local) of the full classifier.
    forward(embeddings (B_local, d), labels (B_local,)) -> (loss, logs) like the plain head, where B_local
    must be the same on every rank; loss value and logs are those of the global batch on every rank.
    sample_rate < 1 (training mode only): each rank keeps all its positive classes plus random negatives
    up to ceil(sample_rate * C_local) columns (this step syncs with the host once for the count).
    """

    def __init__(
        self,
        head: str,
        num_classes: int,
        embedding_size: int = 512,
        sample_rate: float = 1.0,
        process_group: Any = None,
        ddp_average_compensation: bool = False,
        **head_options: Any,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"ShardedClassifier: sample_rate must be in (0, 1], got {sample_rate}")
        distributed = dist.is_available() and dist.is_initialized()
        self.group = process_group
        self.world = dist.get_world_size(process_group) if distributed else 1
        self.rank = dist.get_rank(process_group) if distributed else 0
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.class_start, self.num_local = shard_range(self.num_classes, self.world, self.rank)
        self.sample_rate = float(sample_rate)
        self.ddp_average_compensation = bool(ddp_average_compensation)
        self.head: MarginHead = build_head(head, self.num_local, embedding_size, **head_options)
        self.last_columns: Optional[torch.Tensor] = None  # local columns used by the last sampled step

    @property
    def weight(self) -> nn.Parameter:
        return self.head.weight

    def load_full_weight(self, full: torch.Tensor) -> None:
        """Copy this rank's rows of a full (C, d) proxy matrix into the local shard."""
        if tuple(full.shape) != (self.num_classes, self.embedding_size):
            raise ValueError(
                f"ShardedClassifier.load_full_weight: expected ({self.num_classes}, {self.embedding_size}), "
                f"got {tuple(full.shape)}"
            )
        with torch.no_grad():
            self.head.weight.copy_(full[self.class_start:self.class_start + self.num_local])

    def _context(self) -> ShardContext:
        return DistributedShardContext(self.group) if self.world > 1 else ShardContext()

    def _sample_columns(self, target_col: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Local columns to use (sorted, all positives kept) and the remapped target columns."""
        owned = target_col >= 0
        col = target_col.clamp_min(0)
        hits = torch.zeros(self.num_local, device=col.device).index_add_(0, col, owned.float())
        positive = hits > 0
        wanted = int(math.ceil(self.sample_rate * self.num_local))
        k = max(wanted, int(positive.sum()))  # host sync, as in Partial FC
        score = torch.rand(self.num_local, device=col.device)
        score = torch.where(positive, torch.full_like(score, 2.0), score)
        columns = torch.topk(score, k, sorted=False).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=col.device)
        remap[columns] = torch.arange(k, device=col.device)
        new_target = torch.where(owned, remap[col], torch.full_like(col, -1))
        return columns, new_target

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, Logs]:
        MarginHead._check_inputs(embeddings, labels, self.num_classes)
        if self.world > 1:
            scale = float(self.world) if self.ddp_average_compensation else 1.0
            emb = all_gather_with_grad(embeddings, self.group, grad_scale=scale)
            parts = [torch.empty_like(labels) for _ in range(self.world)]
            dist.all_gather(parts, labels.contiguous(), group=self.group)
            labels_all = torch.cat(parts, 0)
        else:
            emb, labels_all = embeddings, labels
        local = labels_all - self.class_start
        owned = (local >= 0) & (local < self.num_local)
        target_col = torch.where(owned, local, torch.full_like(local, -1))
        weight = self.head.weight
        if self.sample_rate < 1.0 and self.training:
            columns, target_col = self._sample_columns(target_col)
            weight = weight.index_select(0, columns)
            self.last_columns = columns
        else:
            self.last_columns = None
        return self.head.compute(emb, labels_all, target_col, weight, self._context())

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, world={self.world}, rank={self.rank}, "
                f"class_start={self.class_start}, num_local={self.num_local}, sample_rate={self.sample_rate}")


_OPTIMIZER_STATES = {"none": 0, "sgd": 1, "adamw": 2}


def proxy_memory_breakdown(
    num_classes: int, dim: int, world: int = 1, dtype: torch.dtype = torch.float32, optimizer: str = "sgd"
) -> Dict[str, int]:
    """Bytes per rank for the largest proxy shard: weight, gradient, optimizer state, total.

    optimizer: "sgd" (one momentum buffer), "adamw" (exp_avg and exp_avg_sq), "none" (no state);
    state tensors are taken to have the proxies' dtype.
    """
    if optimizer not in _OPTIMIZER_STATES:
        raise ValueError(f"proxy_memory_bytes: optimizer must be one of {sorted(_OPTIMIZER_STATES)}, got {optimizer!r}")
    if num_classes < 1 or dim < 1 or world < 1:
        raise ValueError("proxy_memory_bytes: num_classes, dim and world must be >= 1")
    rows = -(-int(num_classes) // int(world))
    one = rows * int(dim) * torch.empty((), dtype=dtype).element_size()
    states = _OPTIMIZER_STATES[optimizer]
    return {"rows": rows, "weight": one, "grad": one, "optimizer": states * one, "total": (2 + states) * one}


def proxy_memory_bytes(
    num_classes: int, dim: int, world: int = 1, dtype: torch.dtype = torch.float32, optimizer: str = "sgd"
) -> int:
    """Total bytes per rank of the proxy shard with its gradient and optimizer state (see the breakdown)."""
    return proxy_memory_breakdown(num_classes, dim, world, dtype, optimizer)["total"]


def logits_memory_bytes(global_batch: int, num_classes: int, world: int = 1, sample_rate: float = 1.0,
                        copies: int = 3) -> int:
    """Rough float32 bytes per rank of the (global_batch, C_local) cosine/logit/gradient matrices."""
    cols = int(math.ceil(sample_rate * -(-int(num_classes) // int(world))))
    return int(global_batch) * cols * 4 * int(copies)
