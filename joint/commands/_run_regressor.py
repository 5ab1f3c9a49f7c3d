"""Command-line pieces for a trained run and for the face sources of export / visualize.

`--model RUN` (embed, eval, export-onnx; export / visualize with `--refine N`) is loaded through joint.runs
(the one loader); export and visualize share their sources (PHOTOS... | --coeffs FILE | --synthetic N).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from joint.runs import load_regressor as regressor_from_run  # noqa: F401 (export / visualize / bench name)

RUN_HELP = "run directory (newest good checkpoint) or checkpoint file"


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """The required `--model / -m RUN` of the commands that run a trained model."""
    parser.add_argument("--model", "-m", required=True, help=RUN_HELP)


def load_run_argument(path: str, device: str = "cpu") -> Optional[Tuple[Any, Any, Path, Any]]:
    """(model, TrainConfig, checkpoint path, torch device) for `--model RUN` / `--device`, via
    joint.runs.load_run; prints one 'error: ...' line naming the option and returns None when either is bad."""
    from lh2face.io import CheckpointError

    from joint.runs import load_run
    from joint.run_state import pick_device

    try:
        dev = pick_device(device)
    except (RuntimeError, ValueError) as exc:
        print(f"error: --device {device}: {exc}", file=sys.stderr)
        return None
    try:
        model, cfg, ckpt = load_run(path, dev)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: --model: {exc}", file=sys.stderr)
        return None
    return model, cfg, ckpt, dev


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """export / visualize: the optional `--model RUN` and `--refine N`."""
    parser.add_argument("--model", metavar="RUN",
                        help="photos: use this trained run's (folder or checkpoint) coefficient regressor, one "
                             "forward pass per face, instead of fitting each photo")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="with --model: N fitting steps (photometric + landmarks) from the regressor's output")


def add_source_arguments(parser: argparse.ArgumentParser, verb: str, synthetic_help: str, seed_help: str,
                         out_help: str) -> None:
    """export / visualize: PHOTOS... | --coeffs FILE | --synthetic N, --out DIR, --seed, --identity-offset."""
    parser.add_argument("photos", nargs="*", help=f"photos (files and/or folders) to reconstruct and {verb}")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--coeffs", help="coefficient file (.json from export, .npy/.npz (N,P), .pt)")
    src.add_argument("--synthetic", type=int, metavar="N", help=synthetic_help)
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--seed", type=int, default=0, help=f"--synthetic: {seed_help} (default 0)")
    parser.add_argument("--identity-offset", type=int, default=0, help="--synthetic: first identity")


def check_source_arguments(args: argparse.Namespace) -> Optional[str]:
    """An error message unless exactly one source is given and --model / --refine / --fit-steps fit it."""
    if sum([bool(args.photos), args.coeffs is not None, args.synthetic is not None]) != 1:
        return "give exactly one source: PHOTOS..., --coeffs FILE or --synthetic N"
    return check_model_arguments(args)


def photo_options(args: argparse.Namespace) -> Dict[str, Any]:
    """recon.photos.reconstruct_photos options from --fit-steps, or --model RUN (its regressor) + --refine N."""
    if args.model:
        return {"regressor": regressor_from_run(args.model), "refine_steps": args.refine}
    return {} if args.fit_steps is None else {"fit_steps": args.fit_steps}


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
