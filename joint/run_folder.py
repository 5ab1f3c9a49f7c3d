"""The run folder: refuse to overwrite a run by accident, clear it on --overwrite, and the run's log.

Layout::

    config.yaml          resolved config (every default filled in)
    train.log            log (rank 0): the run summary, one line per schedule.log_every steps, evaluations,
                         the final result
    metrics.jsonl        one JSON row per logged step / evaluation (train.csv, eval.csv: the same as CSV)
    checkpoints/ckpt_00000200.pt   (+ ckpt_00000200.rank1.pt ... under DDP: each rank's head shard)
    best.pt              the checkpoint with the best value of the first eval target
    plots/loss.png, plots/roc.png
    results.json         final evaluation (valid JSON: NaN / inf written as null)
    tb/                  TensorBoard events (when the tensorboard package is installed)
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from lh2face.config import ConfigError

log = logging.getLogger("lh2face.train")

RUN_FILES = ("metrics.jsonl", "train.csv", "eval.csv", "results.json", "train.log", "config.yaml", "best.pt")
RUN_FOLDERS = ("checkpoints", "plots", "tb")


def holds_run(out: Path) -> bool:
    return out.is_dir() and any((out / n).exists() for n in ("checkpoints", "metrics.jsonl", "config.yaml"))


def check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """ConfigError when `out` holds a run and neither --resume nor --overwrite was given."""
    if holds_run(out) and not resume and not overwrite:
        raise ConfigError(f"run directory {out} already holds a run; pass --resume to continue it or --overwrite")


def prepare_out(out: Path, resume: bool, overwrite: bool, rank: int) -> None:
    """Rank 0: remove an old run's files on --overwrite, then create checkpoints/ and plots/."""
    if rank != 0:
        return
    if holds_run(out) and overwrite and not resume:
        for n in RUN_FOLDERS:
            shutil.rmtree(out / n, ignore_errors=True)
        for n in RUN_FILES:
            (out / n).unlink(missing_ok=True)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)


class _NoStepLines(logging.Filter):
    """Keeps the per-step lines off the terminal while a progress bar shows the same numbers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "step_line", False)


def setup_logging(out: Path, rank: int, progress_bar: bool) -> None:
    """Rank 0 logs to out/train.log and stderr (dataset warnings about bad files go to train.log too);
    other ranks log nothing. Per-step lines (``extra={"step_line": True}``) reach stderr only when there
    is no progress bar."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if rank != 0:
        log.addHandler(logging.NullHandler())
        return
    fh = logging.FileHandler(out / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(logging.Formatter("%(message)s"))
    if progress_bar:
        sh.addFilter(_NoStepLines())
    log.addHandler(sh)
    for name in ("recognition", "recon"):
        other = logging.getLogger(name)
        for h in [h for h in other.handlers if getattr(h, "_lh2face_run_log", False)]:
            other.removeHandler(h)
        fh._lh2face_run_log = True  # type: ignore[attr-defined]
        other.addHandler(fh)
