"""`--model RUN` / `--refine N` for export and visualize: a trained run's coefficient regressor."""

from __future__ import annotations

import argparse
from typing import Callable, Optional

import torch


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="RUN",
                        help="photos: use this trained run's (folder or checkpoint) coefficient regressor, one "
                             "forward pass per face, instead of fitting each photo")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="with --model: N fitting steps (photometric + landmarks) from the regressor's output")


def check_model_arguments(args: argparse.Namespace) -> Optional[str]:
    """An error message for a bad --model / --refine / --fit-steps combination, else None."""
    if args.refine < 0:
        return "--refine must be >= 0"
    if args.refine and not args.model:
        return "--refine N refines the regressor of --model RUN; give --model too"
    if args.model and args.fit_steps is not None:
        return "--fit-steps fits from scratch; with --model use --refine N"
    if args.model and not args.photos:
        return "--model RUN reconstructs photos; give PHOTOS"
    return None


def regressor_from_run(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The run's regressor as a callable float images (B,3,H,W) in [0,1] -> coefficients (B,P): the input
    is resized to the run's regressor input size exactly as in training (joint.model.resize).

    Raises lh2face.io.CheckpointError (a ValueError) for a missing / bad run, ValueError when the run has
    no reconstruction branch."""
    from joint.model import resize
    from joint.runs import load_run

    model, cfg, ckpt = load_run(path)
    trunk = model.trunk
    regressor = getattr(trunk, "regressor", None)
    if regressor is None:
        raise ValueError(f"{ckpt}: this run has no reconstruction regressor (input_mode "
                         f"{cfg.model.input_mode}, loss.reco {cfg.loss.reco}); train with input_mode "
                         "rgb+canonical+depth (or loss.reco > 0) to use --model")
    regressor.eval()
    size = int(trunk.regressor_size)

    def regress(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return regressor(resize(images, size))

    return regress
