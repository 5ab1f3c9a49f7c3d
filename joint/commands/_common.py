"""Arguments several sub-commands share (one definition each)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; 1 is much faster on a busy machine)")


def apply_threads(args: argparse.Namespace) -> Optional[int]:
    """Set torch's thread count from --threads; returns exit code 2 on a bad value, else None."""
    if args.threads is None:
        return None
    if args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    return None


USER_ERRORS = (FileExistsError, ValueError, FileNotFoundError, RuntimeError)


def user_error(exc: BaseException) -> int:
    """Print a bad-input error (existing output, bad value, missing file, no landmark detector) and return
    exit code 2; any other RuntimeError is a bug and is raised again."""
    if isinstance(exc, RuntimeError):
        from recon.landmarks import DetectorUnavailable

        if not isinstance(exc, DetectorUnavailable):
            raise exc
    print(f"error: {exc}", file=sys.stderr)
    return 2
