"""Load a trained run (run folder or checkpoint file) for inference: embeddings, export, evaluation.

`load_run(path)` -> (JointModel in eval mode with the trained trunk, TrainConfig, checkpoint path). The head
(classifier proxies) is not loaded: inference needs the trunk only (backbone + regressor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple


def load_run(path: str, device: Any = "cpu") -> Tuple[Any, Any, Path]:
    """(JointModel with trained trunk in eval mode, TrainConfig, checkpoint path) from a run dir or file.

    A run folder resolves to its newest checkpoint whose SHA-256 trailer verifies; raises
    lh2face.io.CheckpointError when there is none."""
    from lh2face.io import CheckpointError, load_checkpoint

    from joint.config import config_from_checkpoint
    from joint.model import JointModel
    from joint.checkpoints import Checkpointer

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such run folder or checkpoint file")
    if p.is_dir():
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        found = Checkpointer(folder).latest_good()
        if found is None:
            raise CheckpointError(f"{p}: no usable checkpoint (ckpt_*.pt) found")
        step, state = found
        ckpt = Checkpointer(folder).path(step)
    else:
        state, ckpt = load_checkpoint(p), p
    cfg = config_from_checkpoint(state["config"])
    model = JointModel.from_config(cfg, int(state["num_classes"]))
    trunk = {k[len("trunk."):]: v for k, v in state["model"].items() if k.startswith("trunk.")}
    model.trunk.load_state_dict(trunk)
    model.to(device).eval()
    return model, cfg, ckpt
