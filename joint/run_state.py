"""The state a run is built from: processes and device, RNG state, optimiser + schedule, the head under
DDP, and a per-process memory estimate. Nothing here runs a step."""

from __future__ import annotations

import logging
import math
import os
import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lh2face.config import ConfigError

from .config import TrainConfig

log = logging.getLogger("lh2face.train")


# ---------------------------------------------------------------------------------- processes, device


def dist_info() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def init_distributed(cfg: TrainConfig, world: int, local_rank: int) -> None:
    """Start the process group (gloo on CPU, NCCL on CUDA unless run.dist_backend says otherwise)."""
    if world <= 1 or torch.distributed.is_initialized():
        return
    backend = cfg.run.dist_backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and cfg.run.device != "cpu" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend=backend)


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """run.device (auto | cpu | cuda | cuda:N) -> torch.device; ConfigError when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name} but CUDA is not available; use run.device=cpu or auto")
    return dev


# ------------------------------------------------------------------------------------------------ RNG


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step on one rank: every step's randomness is a function of (seed, step, rank)."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ------------------------------------------------------------------------------- optimiser, schedule


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup` steps, then cosine decay to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on 1-d parameters (BN, biases, PReLU); head lr x head_lr_mult, the
    reconstruction regressor's (trunk.regressor.*) lr x regressor_lr_mult. Groups: (kind, decay) sorted,
    kind 0 = rest, 1 = head, 2 = regressor."""
    o = cfg.optim
    mult = {0: 1.0, 1: o.head_lr_mult, 2: o.regressor_lr_mult}
    groups: Dict[Tuple[int, bool], List[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = 1 if name.startswith("head.") else 2 if name.startswith("trunk.regressor.") else 0
            groups.setdefault((kind, p.dim() > 1), []).append(p)
    param_groups = [{"params": params, "lr": o.lr * mult[kind], "weight_decay": o.weight_decay if decay else 0.0}
                    for (kind, decay), params in sorted(groups.items())]
    if o.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR of `lr_factor` (warm-up, then cosine to schedule.min_lr_ratio)."""
    s = cfg.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda st: lr_factor(st, s.steps, s.warmup_steps, s.min_lr_ratio))


def build_head_for_world(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The classifier of a world > 1 run: recognition.sharded.ShardedClassifier (proxies split by rank).

    The sharded loss is the global-batch loss on every rank; DDP averages trunk gradients over ranks,
    so the embedding gradient is scaled by the world size to match one process with the whole batch."""
    from recognition.sharded import ShardedClassifier

    return ShardedClassifier(cfg.model.head, num_classes, embedding_size=cfg.model.embedding_size,
                             sample_rate=cfg.model.sharded_sample_rate, ddp_average_compensation=True,
                             **cfg.model.head_options)


# ------------------------------------------------------------------------------------ memory estimate


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def _activation_bytes(model: torch.nn.Module, sample: torch.Tensor, device: torch.device) -> float:
    """Bytes autograd saves for one forward pass of the trunk on `sample` (BatchNorm statistics restored)."""
    saved, seen = [0], set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.data_ptr(), t.numel())
        if key not in seen and t.device.type == device.type:
            seen.add(key)
            saved[0] += t.numel() * t.element_size()
        return t

    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.trunk(sample.to(device), {})
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop the run
        log.debug("activation estimate failed: %s", exc)
    finally:
        model.load_state_dict(buffers, strict=False)
        model.train(was_training)
    return float(saved[0])


def memory_estimate(model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                    sample: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Bytes per process: trunk weights + grads + optimiser state, head proxies (per rank) + states, and
    activations (tensors autograd saves for two samples, scaled to the batch size)."""
    opt_states = 2 if cfg.optim.name == "adamw" else (1 if cfg.optim.momentum > 0 else 0)
    trunk_p = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("head."))
    head_p = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith("head."))
    est = {"trunk_params": trunk_p, "trunk_grads_optimizer": trunk_p * (1 + opt_states),
           "head_proxies_per_rank": head_p, "head_grads_optimizer": head_p * (1 + opt_states), "activations": 0.0}
    if sample is not None and sample.shape[0] >= 2:
        est["activations"] = _activation_bytes(model, sample[:2], device) / 2 * cfg.schedule.batch_size
    est["total"] = sum(est.values())
    return est
