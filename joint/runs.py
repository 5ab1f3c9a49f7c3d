"""A trained run for inference: the one loader and the one "run's regressor on images" function.

`load_run(path)` -> (JointModel in eval mode with the trained trunk, TrainConfig, checkpoint path). The head
(classifier proxies) is not loaded: inference needs the trunk only (backbone + regressor). Every inference
path loads runs through it: `lh2face embed / eval / export-onnx`, export / visualize `--model`
(`load_regressor`) and `model.init_from` (joint.init).

`regress_coeffs(trunk, images)` is the coefficient regressor as training applies it (images resized to
``trunk.regressor_size``); `load_regressor(path)` wraps it as a no-grad callable for recon.photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Tuple

if TYPE_CHECKING:
    import torch


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


def regress_coeffs(trunk: Any, images: torch.Tensor) -> torch.Tensor:
    """A joint trunk's coefficient regressor on float images (B,3,H,W) in [0,1] -> coefficients (B,P)
    (recon.coeffs.CoeffLayout order): the images are first resized to ``trunk.regressor_size`` exactly as
    in training (joint.model.resize: bilinear, antialiased when shrinking). Gradients as the caller has them."""
    from joint.model import resize

    return trunk.regressor(resize(images, int(trunk.regressor_size)))


def load_regressor(path: str, device: Any = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """A run's regressor as a no-grad callable images (B,3,H,W) [0,1] -> coefficients (B,P) (regress_coeffs).

    Raises lh2face.io.CheckpointError (a ValueError) for a missing / bad run, ValueError when the run has
    no reconstruction regressor."""
    model, cfg, ckpt = load_run(path, device)
    trunk = model.trunk
    if getattr(trunk, "regressor", None) is None:
        raise ValueError(f"{ckpt}: this run has no reconstruction regressor (input_mode "
                         f"{cfg.model.input_mode}, loss.reco {cfg.loss.reco}); train with input_mode "
                         "rgb+canonical+depth (or loss.reco > 0) to use --model")
    import torch

    def regress(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return regress_coeffs(trunk, images.to(next(trunk.regressor.parameters()).device))

    return regress


__all__ = ["load_regressor", "load_run", "regress_coeffs"]
