"""Training loop, single process or torchrun DDP: ``python -m joint.train --config X.yaml [--out DIR]``.

Run directory layout::

    config.yaml          resolved config (every default filled in)
    train.log            log (rank 0)
    metrics.jsonl        one JSON row per logged step / evaluation
    train.csv, eval.csv  the same rows as CSV
    checkpoints/ckpt_00000200.pt   (+ ckpt_00000200.rank1.pt ... under DDP: each rank's head shard)
    plots/loss.png, plots/roc.png
    results.json         final evaluation
    tb/                  TensorBoard events (when tensorboard is installed)

Exactness of `--resume`: every step draws its randomness (flips, novel views, dropout) from a generator
seeded by (seed, step, rank), batch b of epoch e is a function of (seed, e, b, rank) only
(`ResumableBatchSampler`), and the checkpoint holds model, optimizer, scheduler, grad scaler and RNG
states plus the step. A run killed at any point and resumed reaches the same weights at step N as an
uninterrupted run (with the same thread count / deterministic kernels).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lh2face.config import ConfigError, to_dict
from lh2face.io import CheckpointError, load_checkpoint, save_checkpoint, write_json_atomic, write_text_atomic

from .config import TrainConfig, config_to_yaml, load_train_config

log = logging.getLogger("lh2face.train")

CKPT_RE = re.compile(r"^ckpt_(\d{8})\.pt$")


class TrainingError(RuntimeError):
    """A run had to stop (non-finite loss, too many bad samples, ...); the message says why and what to do."""


class NonFiniteLossError(TrainingError):
    pass


class DataFaultError(TrainingError):
    pass


# ------------------------------------------------------------------------------------------ utilities


def dist_info() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name} but CUDA is not available; use run.device=cpu or auto")
    return dev


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def seed_all(s: int) -> None:
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up from 1/warmup to 1 over `warmup` steps, then cosine decay to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on 1-d parameters (BN, biases, PReLU); head lr x head_lr_mult."""
    o = cfg.optim
    groups: Dict[Tuple[bool, bool], List[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        decay = p.dim() > 1
        groups.setdefault((is_head, decay), []).append(p)
    param_groups = []
    for (is_head, decay), params in sorted(groups.items()):
        param_groups.append({
            "params": params,
            "lr": o.lr * (o.head_lr_mult if is_head else 1.0),
            "weight_decay": o.weight_decay if decay else 0.0,
        })
    if o.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return torch.optim.SGD(param_groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def memory_estimate(model: torch.nn.Module, cfg: TrainConfig, world: int, device: torch.device,
                    sample: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Bytes per process: trunk weights+grads+optimizer state, head proxies (per rank) + states, activations.

    Activations are measured by counting the tensors autograd saves during one forward pass of two
    samples (saved_tensors_hooks), scaled to the batch size; BatchNorm statistics are restored after.
    """
    opt_states = 2 if cfg.optim.name == "adamw" else (1 if cfg.optim.momentum > 0 else 0)
    trunk_p = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("head."))
    head_p = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.startswith("head."))
    est = {
        "trunk_params": trunk_p, "trunk_grads_optimizer": trunk_p * (1 + opt_states),
        "head_proxies_per_rank": head_p, "head_grads_optimizer": head_p * (1 + opt_states),
        "activations": 0.0,
    }
    if sample is not None and sample.shape[0] >= 2:
        saved = [0]
        seen = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = (t.data_ptr(), t.numel())
            if key not in seen and t.device.type == device.type:
                seen.add(key)
                saved[0] += t.numel() * t.element_size()
            return t

        buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
        was_training = model.training
        model.train()
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model.trunk(sample[:2].to(device), {})
                del out
        except Exception as exc:  # noqa: BLE001 - an estimate must never stop the run
            log.debug("activation estimate failed: %s", exc)
        finally:
            model.load_state_dict(buffers, strict=False)
            model.train(was_training)
        est["activations"] = saved[0] / 2 * cfg.schedule.batch_size
    est["total"] = sum(v for k, v in est.items())
    return est


# ---------------------------------------------------------------------------------------- checkpoints


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

    def latest_good(self, map_location: Any = "cpu", candidates: Optional[Sequence[int]] = None) -> Optional[Tuple[int, Dict[str, Any]]]:
        for s in sorted(candidates if candidates is not None else self.steps(), reverse=True):
            try:
                return s, self.load_step(s, map_location)
            except CheckpointError as exc:
                log.warning("checkpoint %s is unusable (%s); falling back to the previous one", self.path(s), exc)
        return None


# --------------------------------------------------------------------------------------------- metrics


class MetricsLog:
    """metrics.jsonl + train.csv / eval.csv (+ TensorBoard); on resume, rows after the resumed step are dropped."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.out, self.enabled = out, enabled
        self.jsonl = out / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

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
        keys = list(rows[0].keys())
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
        write_text_atomic(path, buf.getvalue())

    def write(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v) for k, v in values.items()})
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
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
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and k not in ("step", "time"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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
        ax.plot(steps, [r.get(k, float("nan")) for r in train], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    from lh2face.io import write_bytes_atomic

    write_bytes_atomic(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, bundle: Any, cfg: TrainConfig, device: torch.device,
                   roc_path: Optional[Path] = None, label: str = "model") -> Dict[str, Any]:
    """Verification on the held-out pairs (accuracy 10-fold, TAR@FAR) and, with ground-truth coefficients,
    the reconstruction error in mm."""
    from recognition.eval.features import extract_embeddings
    from recognition.eval.verification import evaluate_pairs

    was = model.training
    model.eval()
    try:
        def embed_fn(x: torch.Tensor) -> torch.Tensor:
            return model.embed(x.to(device)).float()

        emb = extract_embeddings(embed_fn, bundle.eval_images, batch_size=cfg.eval.batch_size, flip=cfg.eval.flip,
                                 progress=False)
        emb = torch.as_tensor(emb)
        i1, i2, same = bundle.eval_pairs
        res = evaluate_pairs(emb[i1], emb[i2], same.numpy().astype(bool), n_folds=cfg.eval.n_folds)
        out = verification_summary(emb, i1, i2, same, res, cfg.eval.n_folds)
        if bundle.extra and "coeffs" in bundle.extra and getattr(model.trunk, "regressor", None) is not None:
            out["vertex_error_mm"] = reconstruction_error(model, bundle, cfg, device)
        if roc_path is not None and cfg.run.plots:
            try:
                from recognition.eval.plots import plot_roc

                plot_roc(roc_path, {label: (np.asarray(res["fpr"]), np.asarray(res["tpr"]))})
            except Exception as exc:  # noqa: BLE001 - a plot must not stop training
                log.warning("ROC plot failed: %s", exc)
        return out
    finally:
        model.train(was)


def verification_summary(emb: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor, same: torch.Tensor,
                         res: Dict[str, Any], n_folds: int) -> Dict[str, Any]:
    """TAR@FAR from all pairs (`res`); accuracy (10-fold) on the balanced subset (every genuine pair and as
    many impostors) unless the pairs are balanced already, as in LFW / .bin sets."""
    from recognition.eval.verification import evaluate_pairs

    from .data import balanced_subset

    n_pos = int(same.sum())
    acc, std, label = res["accuracy"], res["accuracy_std"], "pairs"
    if 0 < n_pos and n_pos * 2 != len(same):
        b = balanced_subset(same)
        if len(b) >= 2 * n_folds:
            rb = evaluate_pairs(emb[i1[b]], emb[i2[b]], same[b].numpy().astype(bool), n_folds=n_folds)
            acc, std, label = rb["accuracy"], rb["accuracy_std"], "balanced"
    out: Dict[str, Any] = {"accuracy": float(acc), "accuracy_std": float(std), "accuracy_on": label,
                           "pairs": int(len(same)), "genuine": n_pos}
    for far, tar in res["tar_at_far"].items():
        out[f"tar@far={float(far):.0e}"] = float(tar)
    out["auc"] = float(res.get("auc", float("nan")))
    return out


@torch.no_grad()
def reconstruction_error(model: torch.nn.Module, bundle: Any, cfg: TrainConfig, device: torch.device) -> float:
    """Mean vertex distance (mm, after similarity alignment; recon.losses.vertex_error_mm) between the
    neutral-expression identity shape of the regressed and of the ground-truth coefficients."""
    from recon.losses import vertex_error_mm

    from .model import resize

    trunk = model.trunk
    mm, _, layout = trunk._assets(device)
    errs = []
    for s in range(0, len(bundle.eval_images), cfg.eval.batch_size):
        x = bundle.eval_images[s : s + cfg.eval.batch_size].to(device)
        pred = layout.split(trunk.regressor(resize(x, trunk.regressor_size)))["id"]
        gt = layout.split(bundle.extra["coeffs"][s : s + cfg.eval.batch_size].to(device, pred.dtype))["id"]
        errs.append(vertex_error_mm(mm.shape(pred, None), mm.shape(gt, None)).double().cpu())
    return float(torch.cat(errs).mean())


# ------------------------------------------------------------------------------------------- the loop


def _holds_run(out: Path) -> bool:
    return out.is_dir() and any((out / n).exists() for n in ("checkpoints", "metrics.jsonl", "config.yaml"))


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if _holds_run(out) and not resume and not overwrite:
        raise ConfigError(f"run directory {out} already holds a run; pass --resume to continue it or --overwrite")


def _prepare_out(out: Path, resume: bool, overwrite: bool, rank: int) -> None:
    existing = _holds_run(out)
    if rank != 0:
        return
    if existing and overwrite and not resume:
        for n in ("checkpoints", "plots", "tb"):
            shutil.rmtree(out / n, ignore_errors=True)
        for n in ("metrics.jsonl", "train.csv", "eval.csv", "results.json", "train.log", "config.yaml"):
            (out / n).unlink(missing_ok=True)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)


def _setup_logging(out: Path, rank: int) -> logging.Handler:
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    if rank == 0:
        fh = logging.FileHandler(out / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
        for name in ("recognition", "recon"):  # dataset warnings (bad files) go to the run log too
            logging.getLogger(name).addHandler(fh)
        return fh
    log.addHandler(logging.NullHandler())
    return logging.NullHandler()


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def clip_grad_norm_global(model: torch.nn.Module, max_norm: float, world: int = 1) -> torch.Tensor:
    """Clip by the norm of the *whole* model's gradient. Under DDP the trunk gradients are already equal on
    every rank while the head is sharded: its squared norm is summed over ranks, so every rank computes the
    same coefficient (clipping per rank would make the replicas drift apart)."""
    if world == 1:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    trunk = [p.grad for n, p in model.named_parameters() if p.grad is not None and not n.startswith("head.")]
    head = [p.grad for n, p in model.named_parameters() if p.grad is not None and n.startswith("head.")]
    dev = (trunk or head)[0].device
    sq_t = sum((g.detach().float().pow(2).sum() for g in trunk), torch.zeros((), device=dev))
    sq_h = sum((g.detach().float().pow(2).sum() for g in head), torch.zeros((), device=dev))
    torch.distributed.all_reduce(sq_h)
    norm = (sq_t + sq_h).sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in trunk + head:
        g.detach().mul_(coef.to(g.dtype))
    return norm


def _first_nonfinite(logs: Dict[str, torch.Tensor]) -> Optional[str]:
    # most specific first: the head's own terms and recon terms, then the combined ones
    order = [k for k in logs if "/" in k] + [k for k in logs if "/" not in k and k != "loss"] + ["loss"]
    for k in order:
        v = logs[k]
        if torch.is_tensor(v) and not bool(torch.isfinite(v).all()):
            return k
    return None


def build_head_for_world(cfg: TrainConfig, num_classes: int, rank: int, world: int) -> torch.nn.Module:
    """The classifier: the plain head for one process, recognition.sharded.ShardedClassifier for world > 1."""
    from recognition.sharded import ShardedClassifier

    # The sharded loss is the global-batch loss on every rank; DDP averages trunk gradients over ranks,
    # so the embedding gradient is scaled by the world size to match one process with the whole batch.
    return ShardedClassifier(cfg.model.head, num_classes, embedding_size=cfg.model.embedding_size,
                             sample_rate=cfg.model.sharded_sample_rate, ddp_average_compensation=True,
                             **cfg.model.head_options)


def train(cfg: TrainConfig, out: Optional[str] = None, resume: bool = False, overwrite: bool = False,
          data: Any = None) -> Dict[str, Any]:
    """Train per `cfg`; returns the final evaluation (empty when there is no held-out data).

    `data`: a prebuilt `joint.data.DataBundle` (e.g. shared by the runs of `lh2face modes`); by default
    it is built from cfg.data."""
    from .data import ResumableBatchSampler, build_data, collate_samples
    from .losses import joint_loss
    from .model import JointModel

    rank, world, local_rank = dist_info()
    out_dir = Path(out or cfg.run.out)
    cfg.run.out = str(out_dir)
    if world > 1 and not torch.distributed.is_initialized():
        backend = cfg.run.dist_backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and cfg.run.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend=backend)
    device = pick_device(cfg.run.device, local_rank)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    _check_out(out_dir, resume, overwrite)
    if world > 1:
        torch.distributed.barrier()  # every rank has checked before rank 0 creates anything
    _prepare_out(out_dir, resume, overwrite, rank)
    if world > 1:
        torch.distributed.barrier()
    _setup_logging(out_dir, rank)
    if rank == 0:
        write_text_atomic(out_dir / "config.yaml", config_to_yaml(cfg))

    # ---- data and model
    seed_all(cfg.run.seed)
    if data is None:
        data = build_data(cfg.data, cfg.eval, seed=cfg.run.seed, need_eval=(rank == 0))
    if data.num_classes < 2:
        raise ConfigError(f"the training set has {data.num_classes} identities; at least 2 are needed")
    try:
        model = JointModel.from_config(cfg, data.num_classes)
        if world > 1:
            model.head = build_head_for_world(cfg, data.num_classes, rank, world)
    except (TypeError, ValueError) as exc:  # e.g. an unknown backbone option
        raise ConfigError(f"model: {exc}") from None
    model.to(device)
    sampler = ResumableBatchSampler(len(data.train), cfg.schedule.batch_size, seed=cfg.run.seed, rank=rank, world=world)
    loader = torch.utils.data.DataLoader(
        data.train, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,  # one worker start per run, not per epoch
    )
    optimizer = build_optimizer(cfg, model)
    s = cfg.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda st: lr_factor(st, s.steps, s.warmup_steps, s.min_lr_ratio))
    use_scaler = cfg.run.precision == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    if cfg.run.precision != "fp32" and device.type == "cpu":
        log.warning("run.precision=%s on CPU: autocast works but is much slower than fp32 here", cfg.run.precision)
    ckpt = Checkpointer(out_dir / "checkpoints", rank=rank, keep=s.keep_checkpoints)
    metrics = MetricsLog(out_dir, enabled=(rank == 0), tensorboard=cfg.run.tensorboard)

    # ---- resume
    start = 0
    if resume:
        found = _find_resume(ckpt, world, device)
        if found is None:
            log.info("--resume: no usable checkpoint in %s; starting from step 0", ckpt.folder)
        else:
            start, state = found
            if state.get("world", 1) != world:
                raise ConfigError(f"checkpoint step {start} was written by {state.get('world')} processes, "
                                  f"this run has {world}; resume with the same --nproc")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            log.info("resumed from %s at step %d", ckpt.path(start), start)
            metrics.truncate_after(start)

    trunk = model.trunk
    if cfg.run.compile:
        model.trunk.backbone.compile()
    if world > 1:
        trunk = torch.nn.parallel.DistributedDataParallel(
            model.trunk, device_ids=[local_rank] if device.type == "cuda" else None)

    # ---- announce
    if rank == 0:
        n_trunk = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
        n_head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
        sample = None
        if len(data.train) >= 2:
            items = [data.train[i] for i in range(min(4, len(data.train)))]
            good = [it for it in items if it is not None]
            if len(good) >= 2:
                sample = collate_samples(good)["image"]
        est = memory_estimate(model, cfg, world, device, sample)
        log.info(
            "lh2face train: %d identities, %d training images, %s%s | backbone %s (%.2fM params, input %s, %d px) "
            "head %s (%d x %d%s) | device %s x%d | %d steps of batch %d%s",
            data.num_classes, len(data.train),
            f"{len(data.eval_images)} held-out images / {len(data.eval_pairs[2])} pairs" if data.eval_images is not None else "no held-out set",
            "", cfg.model.backbone, n_trunk / 1e6, cfg.model.input_mode, cfg.data.image_size, cfg.model.head,
            data.num_classes, cfg.model.embedding_size, f", sharded over {world} ranks" if world > 1 else "",
            device, world, s.steps, s.batch_size, f" (resuming at {start})" if start else "",
        )
        log.info("memory estimate per process: trunk %s (+%s grads/optimizer), head proxies %s (+%s), "
                 "activations %s, total ~%s", *[_fmt_bytes(est[k]) for k in (
                     "trunk_params", "trunk_grads_optimizer", "head_proxies_per_rank", "head_grads_optimizer",
                     "activations", "total")])

    # ---- loop
    from tqdm.auto import tqdm

    bar = tqdm(total=s.steps, initial=start, disable=(rank != 0 or not cfg.run.progress), unit="step",
               dynamic_ncols=True, file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30.0)
    bpe = sampler.batches_per_epoch
    n_bad = n_seen = 0
    step = start
    t_last, imgs_since = time.perf_counter(), 0
    result: Dict[str, Any] = {}
    model.train()
    last_good = ckpt.path(start) if start else None

    def save(at: int) -> Path:
        state = {
            "step": at, "world": world, "rank": rank, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else None, "rng": rng_state(),
            "config": to_dict(cfg), "num_classes": data.num_classes,
        }
        p = ckpt.save(at, state)
        if world > 1:
            torch.distributed.barrier()
        ckpt.prune()
        return p

    try:
        while step < s.steps:
            epoch, b0 = divmod(step, bpe)
            sampler.set_epoch(epoch, b0)
            for batch in loader:
                seed_all(step_seed(cfg.run.seed, step, rank))
                n_bad += batch["n_bad"]
                n_seen += batch["n_seen"]
                flags = torch.tensor([0.0, float(n_bad), float(n_seen)])
                has_images = "image" in batch
                if has_images:
                    images = batch["image"].to(device, non_blocking=True)
                    labels = batch["label"].to(device, non_blocking=True)
                    if cfg.data.flip:
                        flip = torch.rand(images.shape[0]) < 0.5
                        if flip.any():
                            images = images.clone()
                            images[flip.to(device)] = images[flip.to(device)].flip(-1)
                            if "landmarks" in batch and batch["landmarks"] is not None:
                                batch = _flip_landmarks(batch, flip, images.shape[-1])
                    extras = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
                              if k not in ("image", "label", "n_bad", "n_seen")}
                    with _autocast(device, cfg.run.precision):
                        outs = trunk(images, extras)
                    outs = {k: (v.float() if torch.is_tensor(v) else ({kk: vv.float() for kk, vv in v.items()} if isinstance(v, dict) else v))
                            for k, v in outs.items()}
                    loss, logs = joint_loss(outs, labels, model.head, cfg.loss)
                    bad_term = _first_nonfinite(logs)
                    if bad_term is not None:
                        flags[0] = 1.0
                if world > 1:
                    torch.distributed.all_reduce(flags)
                if flags[0] > 0:
                    where = f"term '{bad_term}' = {float(logs[bad_term])}" if has_images and bad_term else "on another rank"
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step} ({where}); stopped. The last good checkpoint is "
                        f"{last_good or 'none (no checkpoint written yet)'}: lower optim.lr, enable optim.grad_clip "
                        f"or check the data, then --resume")
                tot_bad, tot_seen = int(flags[1]), int(flags[2])
                if tot_bad > 0 and tot_seen >= min(len(data.train) * world, 500) and tot_bad / tot_seen > cfg.data.max_bad_fraction:
                    raise DataFaultError(
                        f"{tot_bad} of {tot_seen} samples failed to load ({100 * tot_bad / tot_seen:.1f}% > "
                        f"data.max_bad_fraction={cfg.data.max_bad_fraction}); the file names are in "
                        f"{out_dir / 'train.log'}: fix or remove them, or raise data.max_bad_fraction")
                if has_images:
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.optim.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        gnorm = clip_grad_norm_global(model, cfg.optim.grad_clip, world)
                        logs["grad_norm"] = gnorm.detach()
                        if not use_scaler and not bool(torch.isfinite(gnorm)):
                            raise NonFiniteLossError(
                                f"non-finite gradient norm at step {step} (term 'gradient'); stopped. The last "
                                f"good checkpoint is {last_good or 'none'}: lower optim.lr and --resume")
                    scaler.step(optimizer)
                    scaler.update()
                    imgs_since += images.shape[0] * world
                else:
                    log.warning("step %d: every sample of the batch failed to load; batch skipped", step)
                scheduler.step()
                step += 1
                bar.update(1)
                if rank == 0 and has_images and (step % max(1, s.log_every) == 0 or step == s.steps):
                    dt = time.perf_counter() - t_last
                    ips = imgs_since / max(dt, 1e-9)
                    t_last, imgs_since = time.perf_counter(), 0
                    vals = {k: float(v) for k, v in logs.items()}
                    vals["lr"] = optimizer.param_groups[0]["lr"]
                    vals["img_per_s"] = ips
                    vals["bad_samples"] = tot_bad
                    metrics.write("train", step, vals)
                    bar.set_postfix(loss=f"{vals['loss']:.3f}", img_s=f"{ips:.0f}", refresh=False)
                if s.checkpoint_every > 0 and step % s.checkpoint_every == 0 and step < s.steps:
                    last_good = save(step)
                if s.eval_every > 0 and step % s.eval_every == 0 and step < s.steps:
                    _periodic_eval(model, data, cfg, device, metrics, step, rank, world, out_dir)
                if step >= s.steps:
                    break
        bar.close()
        last_good = save(step)
        if rank == 0:
            if data.eval_images is not None:
                result = evaluate_model(model, data, cfg, device, roc_path=out_dir / "plots" / "roc.png",
                                        label=f"{cfg.model.head} ({cfg.model.input_mode})")
                metrics.write("eval", step, result)
            if cfg.run.plots:
                try:
                    plot_losses(metrics.rows(), out_dir / "plots" / "loss.png")
                except Exception as exc:  # noqa: BLE001
                    log.warning("loss plot failed: %s", exc)
            final = {"step": step, "checkpoint": str(last_good), "eval": result,
                     "bad_samples": n_bad, "config": to_dict(cfg)}
            write_json_atomic(out_dir / "results.json", final)
        if world > 1:
            torch.distributed.barrier()
    finally:
        bar.close()
        metrics.close()
    return result


def _flip_landmarks(batch: Dict[str, Any], flip: torch.Tensor, width: int) -> Dict[str, Any]:
    """Mirror landmark x for flipped samples (x -> W - x) and swap left/right iBUG-68 points."""
    lm = batch["landmarks"].clone().float()
    perm = torch.as_tensor(IBUG68_MIRROR)
    sel = flip.nonzero().flatten()
    mirrored = lm[sel][:, perm]
    mirrored[..., 0] = width - mirrored[..., 0]
    lm[sel] = mirrored
    batch = dict(batch)
    batch["landmarks"] = lm
    if "coeffs" in batch:
        batch.pop("coeffs")  # a mirrored image no longer matches its ground-truth pose
    return batch


def _mirror_ibug68() -> List[int]:
    m = list(range(68))

    def pair(a: Sequence[int], b: Sequence[int]) -> None:
        for i, j in zip(a, b):
            m[i], m[j] = j, i

    pair(range(0, 8), range(16, 8, -1))  # jaw
    pair(range(17, 22), range(26, 21, -1))  # brows
    pair([31, 32], [35, 34])  # nostrils
    pair([36, 37, 38, 39, 40, 41], [45, 44, 43, 42, 47, 46])  # eyes
    pair([48, 49, 50], [54, 53, 52])  # outer lips
    pair([59, 58], [55, 56])
    pair([60, 61], [64, 63])  # inner lips
    pair([67], [65])
    return m


IBUG68_MIRROR = _mirror_ibug68()


def _periodic_eval(model, data, cfg, device, metrics, step, rank, world, out_dir) -> None:
    if rank == 0 and data.eval_images is not None:
        res = evaluate_model(model, data, cfg, device)
        metrics.write("eval", step, res)
        log.info("step %d: held-out accuracy %.4f, TAR@FAR=1e-3 %.4f, TAR@FAR=1e-2 %.4f", step,
                 res["accuracy"], res.get("tar@far=1e-03", float("nan")), res.get("tar@far=1e-02", float("nan")))
    if world > 1:
        torch.distributed.barrier()


def _find_resume(ckpt: Checkpointer, world: int, device: torch.device) -> Optional[Tuple[int, Dict[str, Any]]]:
    """Newest checkpoint usable on every rank (a corrupt newest falls back to the previous)."""
    if world == 1:
        return ckpt.latest_good(map_location=device)
    good = []
    for s_ in ckpt.steps():
        try:
            load_checkpoint(ckpt.path(s_), map_location="cpu")
            good.append(s_)
        except CheckpointError as exc:
            log.warning("checkpoint %s is unusable (%s)", ckpt.path(s_), exc)
    gathered: List[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, good)
    common = set(gathered[0]).intersection(*map(set, gathered[1:]))
    if not common:
        return None
    st = max(common)
    return st, ckpt.load_step(st, map_location=device)


def format_result(res: Dict[str, Any]) -> str:
    """One human line with accuracy, TAR@FAR 1e-3 / 1e-2 and reconstruction error when present."""
    bal = " (balanced: every genuine pair + as many impostors)" if res.get("accuracy_on") == "balanced" else ""
    parts = [f"accuracy {res['accuracy']:.4f} +- {res['accuracy_std']:.4f}{bal}",
             f"{res['pairs']} pairs, {res['genuine']} genuine"]
    for far in ("1e-03", "1e-02"):
        k = f"tar@far={far}"
        if k in res:
            parts.append(f"TAR@FAR={far.replace('e-0', 'e-')} {res[k]:.4f}")
    if "vertex_error_mm" in res:
        parts.append(f"reconstruction error {res['vertex_error_mm']:.2f} mm")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ entry point


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="YAML config (see configs/)")
    parser.add_argument("--out", help="run directory (default: run.out from the config)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. -o optim.lr=0.01 (repeatable)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (torchrun DDP; gloo on CPU, NCCL on CUDA)")


def run_from_args(args: argparse.Namespace) -> int:
    """Load + validate the config (one error line on a fault), then train; returns an exit code."""
    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:
        return spawn_torchrun(args)
    try:
        res = train(cfg, out=args.out, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        log.error("error: %s", exc)
        if not log.handlers:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    rank = dist_info()[0]
    if rank == 0 and res:
        print(f"held-out verification: {format_result(res)}")
    return 0


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m joint.train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    rc = run_from_args(args)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return rc


if __name__ == "__main__":
    sys.exit(main())
