"""The training loop, single process or torchrun DDP: setup, one step at a time, finish.

    lh2face train --config X.yaml [--out DIR] [--resume] [--nproc N]
    torchrun --nproc_per_node N -m joint.train --config X.yaml     (the same command, one process per rank)

What the pieces live in: the step itself (forward, L_train, non-finite check, backward, clip, optimiser)
is joint.step.train_step; processes, device, RNG, optimiser and memory estimate joint.run_state;
checkpoints and resume joint.checkpoints; the run folder and its log joint.run_folder; metrics, the
per-step log line and plots joint.metrics_log; evaluation targets and results joint.evaluation.

Exactness of `--resume`: every step draws its randomness (flips, novel views, dropout) from a generator
seeded by (seed, step, rank), batch b of epoch e is a function of (seed, e, b, rank) only
(`ResumableBatchSampler`), and the checkpoint holds model, optimizer, scheduler, grad scaler and RNG
states plus the step. A run killed at any point and resumed reaches the same weights at step N as an
uninterrupted run (with the same thread count / deterministic kernels).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from lh2face.config import ConfigError, to_dict
from lh2face.io import save_checkpoint, write_json_atomic, write_text_atomic

from . import run_state as rs
from .checkpoints import Checkpointer, find_resume, restore
from .config import TrainConfig, config_to_yaml
from .errors import DataFaultError, NonFiniteLossError
from .evaluation import BestValues, EvalTarget, build_targets, check_targets, evaluate_target, format_result
from .metrics_log import MetricsLog, StepLine, plot_losses
from .run_folder import check_out, prepare_out, setup_logging
from .step import flip_batch, train_step

log = logging.getLogger("lh2face.train")

__all__ = ["train", "setup", "step", "finish", "Run"]


@dataclass
class Run:
    """Everything one training process holds while it runs."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    data: Any = None
    model: Any = None
    trunk: Any = None  # model.trunk, or its DDP wrapper
    sampler: Any = None
    loader: Any = None
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    ckpt: Any = None
    metrics: Any = None
    targets: List[EvalTarget] = field(default_factory=list)
    best: BestValues = field(default_factory=BestValues)
    step: int = 0
    start: int = 0
    last_good: Optional[Path] = None
    n_bad: int = 0
    n_seen: int = 0
    bar: Any = None
    step_line: Any = None


def train(cfg: TrainConfig, out: Optional[str] = None, resume: bool = False, overwrite: bool = False,
          data: Any = None) -> Dict[str, Any]:
    """Train per `cfg`; returns the final evaluation of the first eval target (empty without one).

    `data`: a prebuilt `joint.data.DataBundle` (e.g. shared by the runs of a study); by default it is
    built from cfg.data."""
    run = setup(cfg, out, resume, overwrite, data)
    try:
        while run.step < cfg.schedule.steps:
            epoch, b0 = divmod(run.step, run.sampler.batches_per_epoch)
            run.sampler.set_epoch(epoch, b0)
            for batch in run.loader:
                step(run, batch)
                if run.step >= cfg.schedule.steps:
                    break
        return finish(run)
    finally:
        if run.bar is not None:
            run.bar.close()
        run.metrics.close()


# ----------------------------------------------------------------------------------------------- setup


def setup(cfg: TrainConfig, out: Optional[str], resume: bool, overwrite: bool, data: Any) -> Run:
    """Processes and run folder, data, model, optimiser, resume, DDP wrapper, the run summary."""
    run = _start_process(cfg, out, resume, overwrite)
    _build(run, data)
    if cfg.model.init_from:  # pretrained weights; a resumed checkpoint below overrides them
        from .init import init_from

        init_from(run.model, cfg.model.init_from)
    run.optimizer = rs.build_optimizer(cfg, run.model)
    run.scheduler = rs.build_scheduler(cfg, run.optimizer)
    run.scaler = torch.amp.GradScaler("cuda", enabled=cfg.run.precision == "fp16" and run.device.type == "cuda")
    if resume:
        _resume(run)
    run.step = run.start
    run.trunk = run.model.trunk
    if cfg.run.compile:
        run.model.trunk.backbone.compile()
    if run.world > 1:
        run.trunk = torch.nn.parallel.DistributedDataParallel(
            run.model.trunk, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.rank == 0:
        run.targets = build_targets(cfg, run.data)
        _announce(run)
    _start_progress(run)
    return run


def _start_process(cfg: TrainConfig, out: Optional[str], resume: bool, overwrite: bool) -> Run:
    """Process group, device, threads, run folder (checked before anything is written) and log."""
    rank, world, local_rank = rs.dist_info()
    out_dir = Path(out or cfg.run.out)
    cfg.run.out = str(out_dir)
    check_targets(cfg)
    rs.init_distributed(cfg, world, local_rank)
    device = rs.pick_device(cfg.run.device, local_rank)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    check_out(out_dir, resume, overwrite)
    rs.barrier(world)  # every rank has checked before rank 0 creates anything
    prepare_out(out_dir, resume, overwrite, rank)
    rs.barrier(world)
    setup_logging(out_dir, rank, progress_bar=cfg.run.progress)
    if rank == 0:
        write_text_atomic(out_dir / "config.yaml", config_to_yaml(cfg))
    if cfg.run.precision != "fp32" and device.type == "cpu":
        log.warning("run.precision=%s on CPU: autocast works but is much slower than fp32 here", cfg.run.precision)
    return Run(cfg=cfg, out=out_dir, rank=rank, world=world, device=device)


def _build(run: Run, data: Any) -> None:
    """Data, the model on its device, the resumable sampler and loader, checkpoints and metrics."""
    from .data import ResumableBatchSampler, build_data, collate_samples
    from .model import JointModel

    cfg = run.cfg
    rs.seed_all(cfg.run.seed)
    run.data = data if data is not None else build_data(cfg.data, cfg.eval, seed=cfg.run.seed,
                                                        need_eval=(run.rank == 0))
    if run.data.num_classes < 2:
        raise ConfigError(f"the training set has {run.data.num_classes} identities; at least 2 are needed")
    try:
        run.model = JointModel.from_config(cfg, run.data.num_classes)
        if run.world > 1:
            run.model.head = rs.build_head_for_world(cfg, run.data.num_classes)
    except (TypeError, ValueError) as exc:  # e.g. an unknown backbone option
        raise ConfigError(f"model: {exc}") from None
    run.model.to(run.device)
    run.sampler = ResumableBatchSampler(len(run.data.train), cfg.schedule.batch_size, seed=cfg.run.seed,
                                        rank=run.rank, world=run.world)
    run.loader = torch.utils.data.DataLoader(
        run.data.train, batch_sampler=run.sampler, num_workers=cfg.data.num_workers, collate_fn=collate_samples,
        pin_memory=run.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0)  # one worker start per run, not per epoch
    run.ckpt = Checkpointer(run.out / "checkpoints", rank=run.rank, keep=cfg.schedule.keep_checkpoints)
    run.metrics = MetricsLog(run.out, enabled=(run.rank == 0), tensorboard=cfg.run.tensorboard)


def _resume(run: Run) -> None:
    found = find_resume(run.ckpt, run.world, run.device)
    if found is None:
        log.info("--resume: no usable checkpoint in %s; starting from step 0", run.ckpt.folder)
        return
    run.start, state = found
    restore(state, run.model, run.optimizer, run.scheduler, run.scaler, run.world)
    rs.set_rng_state(state["rng"])
    run.best.values = dict(state.get("best") or {})
    run.last_good = run.ckpt.path(run.start)
    log.info("resumed from %s at step %d", run.last_good, run.start)
    run.metrics.truncate_after(run.start)


def _announce(run: Run) -> None:
    """The run summary and the memory estimate (rank 0)."""
    from .data import collate_samples

    cfg, data, model, s = run.cfg, run.data, run.model, run.cfg.schedule
    n_trunk = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))
    good = [it for it in (data.train[i] for i in range(min(4, len(data.train)))) if it is not None]
    sample = collate_samples(good)["image"] if len(good) >= 2 else None
    est = rs.memory_estimate(model, cfg, run.device, sample)
    held = (f"{len(data.eval_images)} held-out images / {len(data.eval_pairs[2])} pairs"
            if data.eval_images is not None else "no held-out set")
    log.info("lh2face train: %d identities, %d training images, %s | backbone %s (%.2fM params, input %s, %d px) "
             "head %s (%d x %d%s) | device %s x%d | %d steps of batch %d%s", data.num_classes, len(data.train),
             held, cfg.model.backbone, n_trunk / 1e6, cfg.model.input_mode, cfg.data.image_size, cfg.model.head,
             data.num_classes, cfg.model.embedding_size, f", sharded over {run.world} ranks" if run.world > 1 else "",
             run.device, run.world, s.steps, s.batch_size, f" (resuming at {run.start})" if run.start else "")
    log.info("eval targets: %s (%s; best = highest accuracy)", ", ".join(t.name for t in run.targets) or "none",
             f"every {s.eval_every} steps and at the end" if s.eval_every > 0 else "at the end only")
    log.info("memory estimate per process: trunk %s (+%s grads/optimizer), head proxies %s (+%s), "
             "activations %s, total ~%s", *[rs.fmt_bytes(est[k]) for k in (
                 "trunk_params", "trunk_grads_optimizer", "head_proxies_per_rank", "head_grads_optimizer",
                 "activations", "total")])


def _start_progress(run: Run) -> None:
    from tqdm.auto import tqdm

    s = run.cfg.schedule
    run.bar = tqdm(total=s.steps, initial=run.start, disable=(run.rank != 0 or not run.cfg.run.progress),
                   unit="step", dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
    run.step_line = StepLine(s.steps, run.start)
    run.model.train()


# ------------------------------------------------------------------------------------------------ step


def step(run: Run, batch: Dict[str, Any]) -> None:
    """One loop iteration: the training step (or a skipped empty batch), then logging, checkpoint, eval."""
    cfg = run.cfg
    rs.seed_all(rs.step_seed(cfg.run.seed, run.step, run.rank))
    run.n_bad += batch["n_bad"]
    run.n_seen += batch["n_seen"]
    flags = torch.tensor([0.0, float(run.n_bad), float(run.n_seen)])
    logs = None
    if "image" in batch:
        batch = {k: (v.to(run.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if cfg.data.flip:
            batch = flip_batch(batch, torch.rand(batch["image"].shape[0]) < 0.5)
        try:
            logs = train_step(run.model, batch, run.optimizer, trunk=run.trunk, scaler=run.scaler,
                              precision=cfg.run.precision, grad_clip=cfg.optim.grad_clip, world=run.world,
                              after_loss=lambda term, lg: _check_flags(run, flags, term, lg))
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"{exc} at step {run.step}; stopped. The last good checkpoint is "
                f"{run.last_good or 'none (no checkpoint written yet)'}: lower optim.lr, enable optim.grad_clip "
                f"or check the data, then --resume") from None
        run.step_line.add_images(batch["image"].shape[0] * run.world)
    else:
        bad = _check_flags(run, flags, None, {})
        if bad is not None:
            raise NonFiniteLossError(f"non-finite loss ({bad}) at step {run.step}; stopped; last good checkpoint "
                                     f"{run.last_good or 'none'}")
        log.warning("step %d: every sample of the batch failed to load; batch skipped", run.step)
    run.scheduler.step()
    run.step += 1
    run.bar.update(1)
    _after_step(run, logs, int(flags[1]))


def _check_flags(run: Run, flags: torch.Tensor, term: Optional[str], logs: Dict[str, Any]) -> Optional[str]:
    """Between loss and backward: share the non-finite flag and bad-sample counts over ranks, stop on too
    many bad samples; returns where the loss is non-finite (this rank's term, or another rank) or None."""
    flags[0] = 1.0 if term is not None else 0.0
    if run.world > 1:
        torch.distributed.all_reduce(flags)
    if flags[0] > 0:
        return f"term '{term}' = {float(logs[term])}" if term is not None else "on another rank"
    tot_bad, tot_seen = int(flags[1]), int(flags[2])
    limit = run.cfg.data.max_bad_fraction
    if tot_bad > 0 and tot_seen >= min(len(run.data.train) * run.world, 500) and tot_bad / tot_seen > limit:
        raise DataFaultError(
            f"{tot_bad} of {tot_seen} samples failed to load ({100 * tot_bad / tot_seen:.1f}% > "
            f"data.max_bad_fraction={limit}); the file names are in {run.out / 'train.log'}: fix or remove "
            f"them, or raise data.max_bad_fraction")
    return None


def _after_step(run: Run, logs: Optional[Dict[str, torch.Tensor]], tot_bad: int) -> None:
    s = run.cfg.schedule
    if run.rank == 0 and logs is not None and (run.step % max(1, s.log_every) == 0 or run.step == s.steps):
        vals = {k: float(v) for k, v in logs.items()}
        vals["lr"] = run.optimizer.param_groups[0]["lr"]
        vals = run.step_line(run.step, vals)
        vals["bad_samples"] = tot_bad
        run.metrics.write("train", run.step, vals)
        run.bar.set_postfix(loss=f"{vals['loss']:.3f}", img_s=f"{vals['img_per_s']:.0f}", refresh=False)
    if s.checkpoint_every > 0 and run.step % s.checkpoint_every == 0 and run.step < s.steps:
        run.last_good = save(run)
    if s.eval_every > 0 and run.step % s.eval_every == 0 and run.step < s.steps:
        evaluate(run)
        rs.barrier(run.world)


# ---------------------------------------------------------------------------- checkpoints, evaluation


def state_dict(run: Run) -> Dict[str, Any]:
    """What a checkpoint holds: weights, optimiser / scheduler / scaler / RNG states, step, best values."""
    return {"step": run.step, "world": run.world, "rank": run.rank, "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None, "rng": rs.rng_state(),
            "config": to_dict(run.cfg), "num_classes": run.data.num_classes, "best": dict(run.best.values)}


def save(run: Run) -> Path:
    p = run.ckpt.save(run.step, state_dict(run))
    rs.barrier(run.world)
    run.ckpt.prune()
    return p


def evaluate(run: Run, final: bool = False) -> Dict[str, Dict[str, Any]]:
    """Rank 0: every eval target (ROC plot of the first at the end); metrics rows, one log line each,
    best values updated and best.pt written when the first target improves."""
    results: Dict[str, Dict[str, Any]] = {}
    if run.rank != 0:
        return results
    cfg = run.cfg
    for i, t in enumerate(run.targets):
        roc = run.out / "plots" / "roc.png" if final and i == 0 else None
        res = evaluate_target(run.model, t, cfg, run.device, roc_path=roc,
                              label=f"{cfg.model.head} ({cfg.model.input_mode})")
        results[t.name] = res
        run.metrics.write("eval", run.step, {"target": t.name, **res})
        log.info("step %d: %s: %s", run.step, t.name, format_result(res))
    better = run.best.update(run.step, results)
    if run.targets and run.targets[0].name in better:
        save_checkpoint(run.out / "best.pt", state_dict(run))
        log.info("best.pt: step %d (%s accuracy %.4f)", run.step, run.targets[0].name,
                 results[run.targets[0].name]["accuracy"])
    return results


# ---------------------------------------------------------------------------------------------- finish


def finish(run: Run) -> Dict[str, Any]:
    """Final checkpoint, evaluation of every target, loss plot, results.json; returns the first target's
    result."""
    run.bar.close()
    run.last_good = save(run)
    first: Dict[str, Any] = {}
    if run.rank == 0:
        results = evaluate(run, final=True)
        first = results[run.targets[0].name] if run.targets else {}
        if run.cfg.run.plots:
            try:
                plot_losses(run.metrics.rows(), run.out / "plots" / "loss.png")
            except Exception as exc:  # noqa: BLE001 - a plot must not fail a finished run
                log.warning("loss plot failed: %s", exc)
        best_pt = run.out / "best.pt"
        write_json_atomic(run.out / "results.json", {
            "step": run.step, "checkpoint": str(run.last_good), "eval": first, "targets": results,
            "best": run.best.values, "best_checkpoint": str(best_pt) if best_pt.is_file() else None,
            "bad_samples": run.n_bad, "config": to_dict(run.cfg)})
        log.info("finished at step %d: %s", run.step, format_result(first) if first else "no eval target")
    rs.barrier(run.world)
    return first


if __name__ == "__main__":  # torchrun --nproc_per_node N -m joint.train --config C == `lh2face train ...`
    from joint.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
