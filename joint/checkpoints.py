"""Checkpoints of a run: `checkpoints/ckpt_XXXXXXXX.pt` (+ `.rankR` shards under DDP), the newest good one
for `--resume`, and what a checkpoint holds (`run_state_dict` / `restore`)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from lh2face.io import CheckpointError, load_checkpoint, save_checkpoint

log = logging.getLogger("lh2face.train")

CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")


class Checkpointer:
    """`checkpoints/ckpt_XXXXXXXX.pt` (rank 0; other ranks add `.rankR`), newest `keep` kept.

    `latest_good()` returns the newest step whose file loads and passes its checksum, logging each
    corrupt one it skips (the previous checkpoint is then used).
    """

    def __init__(self, folder: Path, rank: int = 0, keep: int = 2) -> None:
        self.folder, self.rank, self.keep = Path(folder), rank, keep

    def path(self, step: int, rank: Optional[int] = None) -> Path:
        r = self.rank if rank is None else rank
        return self.folder / (f"ckpt_{step:08d}.pt" if r == 0 else f"ckpt_{step:08d}.rank{r}.pt")

    def steps(self) -> List[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in self.folder.iterdir() if (m := CKPT_RE.match(f.name)))

    def save(self, step: int, state: Dict[str, Any]) -> Path:
        p = self.path(step)
        save_checkpoint(p, state)
        return p

    def prune(self) -> None:
        steps = self.steps()
        for s in steps[: max(0, len(steps) - self.keep)]:
            for f in self.folder.glob(f"ckpt_{s:08d}*.pt"):
                f.unlink(missing_ok=True)

    def load_step(self, step: int, map_location: Any = "cpu") -> Dict[str, Any]:
        return load_checkpoint(self.path(step), map_location=map_location)

    def latest_good(self, map_location: Any = "cpu",
                    candidates: Optional[Sequence[int]] = None) -> Optional[Tuple[int, Dict[str, Any]]]:
        for s in sorted(candidates if candidates is not None else self.steps(), reverse=True):
            try:
                return s, self.load_step(s, map_location)
            except CheckpointError as exc:
                log.warning("checkpoint %s is unusable (%s); falling back to the previous one", self.path(s), exc)
        return None


def find_resume(ckpt: Checkpointer, world: int, device: torch.device) -> Optional[Tuple[int, Dict[str, Any]]]:
    """Newest checkpoint usable on every rank (a corrupt newest falls back to the previous)."""
    if world == 1:
        return ckpt.latest_good(map_location=device)
    good = []
    for s in ckpt.steps():
        try:
            load_checkpoint(ckpt.path(s), map_location="cpu")
            good.append(s)
        except CheckpointError as exc:
            log.warning("checkpoint %s is unusable (%s)", ckpt.path(s), exc)
    gathered: List[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, good)
    common = set(gathered[0]).intersection(*map(set, gathered[1:]))
    if not common:
        return None
    step = max(common)
    return step, ckpt.load_step(step, map_location=device)


def restore(state: Dict[str, Any], model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
            world: int) -> None:
    """Load a checkpoint's model, optimiser, scheduler and grad-scaler states (the caller restores RNG)."""
    from lh2face.config import ConfigError

    if state.get("world", 1) != world:
        raise ConfigError(f"checkpoint step {state.get('step')} was written by {state.get('world')} processes, "
                          f"this run has {world}; resume with the same --nproc")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
