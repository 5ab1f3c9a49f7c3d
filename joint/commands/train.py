"""`lh2face train --config configs/<name>.yaml [--out DIR] [--resume] [--overwrite] [-o key=value ...]`.

Trains per the config (recognition only for input_mode rgb with every reconstruction lambda 0, the
joint model otherwise), evaluates eval.targets and prints accuracy and TAR@FAR. `--nproc N` runs N
processes with torchrun (DDP); `torchrun --nproc_per_node N -m joint.train --config C` is the same.
Watch a run: `tail -f RUN/train.log` (one line per schedule.log_every steps with the loss terms, lr,
img/s and ETA), or `tensorboard --logdir RUN/tb` when tensorboard is installed.
Exit codes: 0 done, 1 the run stopped (non-finite loss, too many bad images), 2 a config fault.
"""

from __future__ import annotations

import argparse
import os
import sys

NAME = "train"
HELP = "train a model from a YAML config (single process or --nproc N with DDP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="YAML config (see configs/)")
    parser.add_argument("--out", help="run directory (default: run.out from the config)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. -o optim.lr=0.01 (repeatable)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (torchrun DDP; gloo on CPU, NCCL on CUDA)")


def run(args: argparse.Namespace) -> int:
    """Load + validate the config (one error line on a fault), then train; returns an exit code."""
    import logging

    from lh2face.config import ConfigError

    from joint.config import load_train_config
    from joint.errors import TrainingError
    from joint.evaluation import check_targets, format_result
    from joint.run_state import dist_info
    from joint.train import train

    try:
        cfg = load_train_config(args.config, args.overrides)
        check_targets(cfg)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return spawn_torchrun(args)
    try:
        res = train(cfg, out=args.out, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        log = logging.getLogger("lh2face.train")
        log.error("error: %s", exc)
        if not log.handlers:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _end_process_group()
    if dist_info()[0] == 0 and res:
        print(f"held-out verification: {format_result(res)}")
    return 0


def _end_process_group() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def spawn_torchrun(args: argparse.Namespace) -> int:
    """Re-run this command under torch.distributed.run with --nproc_per_node=args.nproc."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "joint.train", "--config", args.config]
    if args.out:
        cmd += ["--out", args.out]
    if args.resume:
        cmd.append("--resume")
    if args.overwrite:
        cmd.append("--overwrite")
    for o in args.overrides:
        cmd += ["-o", o]
    return subprocess.call(cmd)
