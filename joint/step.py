"""One joint training step: forward under autocast, L_train, non-finite check, backward, clip, optimiser step.

`train_step` is the only copy of the step: the training loop (joint.train), the study (through the loop)
and bench/bench_joint.py call it. Batch augmentation that depends on the step's RNG (the random flip) is
`flip_batch`, also here.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .errors import NonFiniteLossError

Logs = Dict[str, torch.Tensor]
# after_loss(first non-finite term or None, logs) -> description of a non-finite loss (on any rank) or None
AfterLoss = Callable[[Optional[str], Logs], Optional[str]]

BATCH_KEYS = ("image", "label", "n_bad", "n_seen")  # everything else in a batch goes to the trunk as extras


def autocast(device: torch.device, precision: str):
    """The autocast context of run.precision: fp32 (none), bf16 or fp16."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def first_nonfinite(logs: Logs) -> Optional[str]:
    """The most specific non-finite logged term (head / recon terms, then combined ones, then `loss`)."""
    order = [k for k in logs if "/" in k] + [k for k in logs if "/" not in k and k != "loss"] + ["loss"]
    for k in order:
        v = logs.get(k)
        if torch.is_tensor(v) and not bool(torch.isfinite(v).all()):
            return k
    return None


def clip_grad_norm_global(model: torch.nn.Module, max_norm: float, world: int = 1) -> torch.Tensor:
    """Clip by the norm of the *whole* model's gradient; returns the norm before clipping.

    Under DDP the trunk gradients are already equal on every rank while the head is sharded: its squared
    norm is summed over ranks, so every rank computes the same coefficient (clipping per rank would make
    the replicas drift apart)."""
    if world == 1:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    trunk = [p.grad for n, p in model.named_parameters() if p.grad is not None and not n.startswith("head.")]
    head = [p.grad for n, p in model.named_parameters() if p.grad is not None and n.startswith("head.")]
    dev = (trunk or head)[0].device
    sq_t = sum((g.detach().float().pow(2).sum() for g in trunk), torch.zeros((), device=dev))
    sq_h = sum((g.detach().float().pow(2).sum() for g in head), torch.zeros((), device=dev))
    torch.distributed.all_reduce(sq_h)
    norm = (sq_t + sq_h).sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in trunk + head:
        g.detach().mul_(coef.to(g.dtype))
    return norm


def _as_float(outs: Dict[str, Any]) -> Dict[str, Any]:
    """Trunk outputs back to float32 (the head and the losses run in float32 under autocast); integer
    tensors (the row index ``aux_index``) unchanged."""
    def f(v: Any) -> Any:
        if torch.is_tensor(v):
            return v.float() if v.is_floating_point() else v  # integer tensors (aux_index) stay as they are
        if isinstance(v, dict):
            return {k: x.float() for k, x in v.items()}
        return v

    return {k: f(v) for k, v in outs.items()}


def _local_check(term: Optional[str], logs: Logs) -> Optional[str]:
    return None if term is None else f"term '{term}' = {float(logs[term])}"


def train_step(model: torch.nn.Module, batch: Dict[str, Any], optimizer: torch.optim.Optimizer, *,
               trunk: Optional[torch.nn.Module] = None, scaler: Optional[Any] = None, precision: str = "fp32",
               grad_clip: float = 0.0, world: int = 1, after_loss: Optional[AfterLoss] = None) -> Logs:
    """One optimisation step of a joint.model.JointModel on a collated batch already on the device.

    batch: ``image`` (B, C, H, W) float [0, 1], ``label`` (B,), the rest (landmarks, coeffs, ...) is passed
    to the trunk. ``trunk``: the trunk to run (a DDP wrapper of model.trunk; default model.trunk).
    ``after_loss`` runs between the loss and the backward pass (the loop synchronises the non-finite flag
    over ranks there); a non-None return stops the step with NonFiniteLossError. Returns the detached
    logged terms (`loss`, `l_fr`, ..., `grad_norm` when clipping).
    """
    from .losses import joint_loss

    images, labels = batch["image"], batch["label"]
    extras = {k: v for k, v in batch.items() if k not in BATCH_KEYS}
    with autocast(images.device, precision):
        outs = (trunk or model.trunk)(images, extras)
    loss, logs = joint_loss(_as_float(outs), labels, model.head, model.lambdas)
    bad = (after_loss or _local_check)(first_nonfinite(logs), logs)
    if bad is not None:
        raise NonFiniteLossError(f"non-finite loss ({bad})")
    optimizer.zero_grad(set_to_none=True)
    use_scaler = scaler is not None and scaler.is_enabled()
    (scaler.scale(loss) if use_scaler else loss).backward()
    if grad_clip > 0:
        if use_scaler:
            scaler.unscale_(optimizer)
        gnorm = clip_grad_norm_global(model, grad_clip, world)
        logs["grad_norm"] = gnorm.detach()
        if not use_scaler and not bool(torch.isfinite(gnorm)):
            raise NonFiniteLossError("non-finite gradient norm (term 'gradient')")
    if use_scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return logs


# --------------------------------------------------------------------------------------- random flip


def _mirror_ibug68() -> List[int]:
    """Index permutation that swaps the left / right iBUG-68 landmarks of a mirrored face."""
    m = list(range(68))

    def pair(a: Sequence[int], b: Sequence[int]) -> None:
        for i, j in zip(a, b):
            m[i], m[j] = j, i

    pair(range(0, 8), range(16, 8, -1))  # jaw
    pair(range(17, 22), range(26, 21, -1))  # brows
    pair([31, 32], [35, 34])  # nostrils
    pair([36, 37, 38, 39, 40, 41], [45, 44, 43, 42, 47, 46])  # eyes
    pair([48, 49, 50], [54, 53, 52])  # outer lips
    pair([59, 58], [55, 56])
    pair([60, 61], [64, 63])  # inner lips
    pair([67], [65])
    return m


IBUG68_MIRROR = _mirror_ibug68()


def flip_batch(batch: Dict[str, Any], flip: torch.Tensor) -> Dict[str, Any]:
    """Mirror the images selected by the bool mask ``flip`` (B,) horizontally; their landmarks follow
    (x -> W - x, left / right swapped) and their ground-truth coefficients are dropped (a mirrored image
    no longer matches its pose). Returns a new dict; the input is not modified."""
    if not bool(flip.any()):
        return batch
    out = dict(batch)
    images = batch["image"].clone()
    sel = flip.to(images.device)
    images[sel] = images[sel].flip(-1)
    out["image"] = images
    if batch.get("landmarks") is not None:
        lm = batch["landmarks"].clone().float()
        idx = flip.nonzero().flatten().to(lm.device)
        mirrored = lm[idx][:, torch.as_tensor(IBUG68_MIRROR, device=lm.device)]
        mirrored[..., 0] = images.shape[-1] - mirrored[..., 0]
        lm[idx] = mirrored
        out["landmarks"] = lm
        out.pop("coeffs", None)
    return out
