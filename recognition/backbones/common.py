"""Pieces shared by the backbones: input normalisation, size checks, checkpointing helper."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class InputNorm(nn.Module):
    """Maps every input channel from [0, 1] to [-1, 1]: (x - 0.5) / 0.5. No parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 2.0


def conv_out(n: int, stride: int) -> int:
    """Spatial size after a 3x3 conv with padding 1 (equals ceil(n / stride))."""
    return (n + 2 - 3) // stride + 1


def check_input(x: torch.Tensor, in_channels: int, input_size: int, name: str) -> None:
    """Raise a clear error when x is not (B, in_channels, input_size, input_size)."""
    if x.dim() != 4 or x.shape[1] != in_channels or x.shape[2] != input_size or x.shape[3] != input_size:
        raise ValueError(
            f"{name}: expected input (B, {in_channels}, {input_size}, {input_size}), got {tuple(x.shape)}; "
            f"build the backbone with in_channels={x.shape[1] if x.dim() == 4 else '?'} / input_size=... "
            "to match, or resize the images"
        )


def validate_options(name: str, in_channels: int, embedding_size: int, input_size: int, min_size: int) -> None:
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"{name}: in_channels must be a positive int, got {in_channels!r}")
    if not isinstance(embedding_size, int) or embedding_size < 1:
        raise ValueError(f"{name}: embedding_size must be a positive int, got {embedding_size!r}")
    if not isinstance(input_size, int) or input_size < min_size:
        raise ValueError(f"{name}: input_size must be an int >= {min_size}, got {input_size!r} (default 112)")


@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """During checkpoint recomputation, keep BatchNorm running statistics from being updated twice.

    With momentum 0 the running-average update leaves the buffers unchanged; batch statistics (used in
    training-mode normalisation) are still recomputed exactly. num_batches_tracked is restored.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def run_maybe_checkpointed(module: nn.Module, x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """module(x), through non-reentrant activation checkpointing when enabled and grads are needed."""
    if not (enabled and torch.is_grad_enabled() and module.training):
        return module(x)

    def contexts() -> Tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _frozen_bn_stats(module)

    fn: Callable[[torch.Tensor], torch.Tensor] = module
    return checkpoint(fn, x, use_reentrant=False, context_fn=contexts)
