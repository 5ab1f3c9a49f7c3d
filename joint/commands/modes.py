"""`lh2face modes --config configs/demo.yaml --out runs/modes`: the input-mode ablation.

Trains the same config once per input mode (rgb, rgb+canonical, rgb+depth, rgb+canonical+depth; the loss
lambdas of the config are kept, so `rgb` still trains the reconstruction branch through L_reco / L_canon /
L_view when they are on), on one shared data set, and evaluates each on the held-out identities. Then it
times the joint training step against the FR-only step (input rgb, every reconstruction lambda 0) on the
same batch, alternating the two in one process so that both see the same machine load; the ratio is of
median step times. Writes study.json and study.md into --out and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

NAME = "modes"
HELP = "input-mode ablation (rgb / +canonical / +depth / +both) and joint vs FR-only step time"

MODES = ["rgb", "rgb+canonical", "rgb+depth", "rgb+canonical+depth"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="base YAML config")
    parser.add_argument("--out", required=True, help="study folder (one run folder per mode)")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES, help="input modes to train")
    parser.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value for every run")
    parser.add_argument("--timing-steps", type=int, default=5, help="timed steps per model (0 = skip timing)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing runs in --out")


def time_steps(cfg: Any, data: Any, steps: int) -> Dict[str, float]:
    """Median fwd+bwd+optimizer step time of the FR-only model and of the joint model, alternated."""
    import torch

    from joint.config import LossConfig
    from joint.data import collate_samples
    from joint.losses import joint_loss
    from joint.model import JointModel

    fr_cfg = copy.deepcopy(cfg)
    fr_cfg.model.input_mode = "rgb"
    fr_cfg.loss = LossConfig()
    torch.manual_seed(0)
    models = {"fr_only": JointModel.from_config(fr_cfg, data.num_classes),
              "joint": JointModel.from_config(cfg, data.num_classes)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    n = min(cfg.schedule.batch_size, len(data.train))
    batch = collate_samples([data.train[i] for i in range(n)])
    images, labels = batch["image"], batch["label"]
    extras = {k: v for k, v in batch.items() if k not in ("image", "label", "n_bad", "n_seen")}
    times: Dict[str, List[float]] = {k: [] for k in models}
    for i in range(steps + 1):  # the first round warms up (numba compilation, allocator)
        for k, m in models.items():
            m.train()
            t0 = time.perf_counter()
            out = m.trunk(images, extras)
            loss, _ = joint_loss(out, labels, m.head, m.lambdas)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            if i > 0:
                times[k].append(time.perf_counter() - t0)
    fr, jt = statistics.median(times["fr_only"]), statistics.median(times["joint"])
    return {"fr_only_step_s": fr, "joint_step_s": jt, "ratio": jt / fr, "batch": n, "steps": steps}


def run(args: argparse.Namespace) -> int:
    from lh2face.config import ConfigError
    from lh2face.io import write_json_atomic, write_text_atomic

    from joint.config import load_train_config
    from joint.data import build_data
    from joint.train import TrainingError, format_result, train

    try:
        base = load_train_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(base.data, base.eval, seed=base.run.seed)
    if data.eval_images is None:
        print("error: the study needs held-out identities (data.eval_identities / synth_eval_identities)",
              file=sys.stderr)
        return 2
    results: Dict[str, Any] = {"config": str(args.config), "overrides": list(args.overrides), "modes": {}}
    for mode in args.modes:
        cfg = copy.deepcopy(base)
        cfg.model.input_mode = mode
        run_dir = out / mode.replace("+", "_")
        t0 = time.perf_counter()
        try:
            res = train(cfg, out=str(run_dir), overwrite=args.overwrite, resume=not args.overwrite, data=data)
        except (ConfigError, TrainingError) as exc:
            print(f"error: {mode}: {exc}", file=sys.stderr)
            return 1
        res = dict(res)
        res["wall_s"] = time.perf_counter() - t0
        results["modes"][mode] = res
        print(f"{mode}: {format_result(res)}")
        write_json_atomic(out / "study.json", results)
    if args.timing_steps > 0:
        results["timing"] = time_steps(base, data, args.timing_steps)
        write_json_atomic(out / "study.json", results)
    table = study_table(results)
    write_text_atomic(out / "study.md", table)
    print(table)
    return 0


def study_table(results: Dict[str, Any]) -> str:
    """Markdown table of the modes' metrics plus the step-time line."""
    lines = ["| input mode | accuracy | TAR@FAR=1e-3 | TAR@FAR=1e-2 | recon error (mm) |", "|---|---|---|---|---|"]
    for mode, r in results["modes"].items():
        err = r.get("vertex_error_mm")
        lines.append(f"| {mode} | {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} | {r.get('tar@far=1e-03', float('nan')):.4f} "
                     f"| {r.get('tar@far=1e-02', float('nan')):.4f} | {'' if err is None else f'{err:.2f}'} |")
    t = results.get("timing")
    if t:
        lines.append("")
        lines.append(f"joint step {t['joint_step_s']:.3f} s vs FR-only step {t['fr_only_step_s']:.3f} s "
                     f"(batch {t['batch']}, median of {t['steps']} alternated steps): ratio {t['ratio']:.2f}")
    return "\n".join(lines) + "\n"
