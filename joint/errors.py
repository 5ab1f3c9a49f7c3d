"""Why a training run stopped: each error's message says what happened and what to do."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run had to stop (non-finite loss, too many bad samples, ...); the message says why and what to do."""


class NonFiniteLossError(TrainingError):
    """A loss term or the gradient norm became NaN / inf."""


class DataFaultError(TrainingError):
    """More samples failed to load than data.max_bad_fraction allows."""
