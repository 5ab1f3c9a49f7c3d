"""Timing and device set-up shared by the benchmark scripts of bench/ (imported as `_common`: bench/ is on
sys.path when a script there runs)."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, List, Optional

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds (of `clock`) one call of fn takes, the device synchronised before and after."""
    sync(device)
    t = clock()
    fn()
    sync(device)
    return clock() - t


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 0) -> List[float]:
    """`warmup` untimed calls, then the seconds of each of `repeats` calls (time_call)."""
    for _ in range(warmup):
        fn()
    return [time_call(fn, device) for _ in range(repeats)]


def open_device(prog: str, name: str, threads: Optional[int] = None) -> Optional[torch.device]:
    """torch.device(name) with torch's CPU threads set to `threads` (when > 0); None after one error line on
    stderr when CUDA is asked for but not available (the caller then exits with code 2)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: --device {name} asked for but CUDA is not available", file=sys.stderr)
        return None
    if threads:
        torch.set_num_threads(threads)
    return device
