"""`lh2face train --config configs/<name>.yaml [--out DIR] [--resume] [--overwrite] [-o key=value ...]`.

Trains per the config (recognition only for input_mode rgb, the joint model otherwise), evaluates on the
held-out identities and prints accuracy and TAR@FAR. `--nproc N` runs N processes with torchrun (DDP).
Exit codes: 0 done, 1 the run stopped (non-finite loss, too many bad images), 2 a config fault.
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train a model from a YAML config (single process or --nproc N with DDP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from joint.train import add_train_arguments

    add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from joint.train import run_from_args

    return run_from_args(args)
