"""What a run records while it trains: metrics.jsonl + train.csv / eval.csv (+ TensorBoard), the per-step
line of train.log (step, loss terms, lr, img/s, ETA) and the loss plot."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from lh2face.io import write_bytes_atomic, write_text_atomic

log = logging.getLogger("lh2face.train")


def _tensorboard_writer(folder: Path) -> Any:
    """A SummaryWriter on `folder`, or None with one log line saying the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("TensorBoard: package not installed, no events written (pip install tensorboard); "
                 "the metrics are in metrics.jsonl, train.csv and eval.csv")
        return None
    log.info("TensorBoard events: %s (tensorboard --logdir %s)", folder, folder)
    return SummaryWriter(str(folder))


class MetricsLog:
    """metrics.jsonl + train.csv / eval.csv (+ TensorBoard); on resume, rows after the resumed step are dropped."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.out, self.enabled = out, enabled
        self.jsonl = out / "metrics.jsonl"
        self.tb = _tensorboard_writer(out / "tb") if enabled and tensorboard else None

    def truncate_after(self, step: int) -> None:
        if not self.enabled:
            return
        rows = [r for r in self.rows() if r.get("step", 0) <= step]
        write_text_atomic(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        for kind in ("train", "eval"):
            self._rewrite_csv(kind, [r for r in rows if r.get("kind") == kind])

    def rows(self) -> List[Dict[str, Any]]:
        if not self.jsonl.is_file():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run
        return out

    def _rewrite_csv(self, kind: str, rows: List[Dict[str, Any]]) -> None:
        path = self.out / f"{kind}.csv"
        if not rows:
            path.unlink(missing_ok=True)
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        write_text_atomic(path, buf.getvalue())

    def write(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        """Append one row (numbers as floats; NaN / inf as null in the JSON line)."""
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v)
                    for k, v in values.items()})
        safe = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(safe) + "\n")
        self._append_csv(kind, row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def _append_csv(self, kind: str, row: Dict[str, Any]) -> None:
        path = self.out / f"{kind}.csv"
        new = not path.is_file()
        keys = list(row.keys())
        if not new:
            with open(path) as fh:
                keys = next(csv.reader(fh), keys)
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class StepLine:
    """The train.log line of a logged step: ``step 40/200 | loss 3.512 l_fr 3.1 ... | lr 1.8e-03 |
    41.2 img/s | ETA 3m05s``; img/s over the steps since the previous line, ETA from the mean step time
    since this (possibly resumed) process started."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start = total, start
        self.t0 = self.t_last = time.perf_counter()
        self.images = 0

    def add_images(self, n: int) -> None:
        self.images += n

    def __call__(self, step: int, values: Dict[str, float]) -> Dict[str, float]:
        """Adds img_per_s and eta_s to `values`, logs the line, returns `values`."""
        now = time.perf_counter()
        values["img_per_s"] = self.images / max(now - self.t_last, 1e-9)
        values["eta_s"] = (now - self.t0) / max(1, step - self.start) * (self.total - step)
        self.t_last, self.images = now, 0
        names = ["loss"] + [k for k in values if k.startswith(("l_", "fr/l_", "reco/"))]
        terms = " ".join(f"{k} {values[k]:.4g}" for k in names if k in values)
        log.info("step %d/%d | %s | lr %.3g | %.1f img/s | ETA %s", step, self.total, terms,
                 values.get("lr", float("nan")), values["img_per_s"], _duration(values["eta_s"]),
                 extra={"step_line": True})
        return values


def plot_losses(rows: List[Dict[str, Any]], path: Path) -> None:
    """Loss curves (every logged loss term over steps) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train"]
    if not train:
        return
    keys = [k for k in train[-1] if (k == "loss" or k.startswith(("l_", "fr/l_", "reco/")))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    steps = [r["step"] for r in train]
    for k in keys:
        ax.plot(steps, [r.get(k) if r.get(k) is not None else float("nan") for r in train], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
