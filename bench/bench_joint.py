#!/usr/bin/env python
"""Joint training step vs FR-only training step, same process, alternated.

    python bench/bench_joint.py                                   # 112 px, batch 16, MobileFaceNet, CPU
    python bench/bench_joint.py --size 64 --batch 16 --repeats 5 --out bench/results/joint_cpu.json
    python bench/bench_joint.py --device cuda --backbone iresnet50 --batch 64
    python bench/bench_joint.py --config configs/demo.yaml --threads 1            # `make demo`'s step
    python bench/bench_joint.py --config configs/demo.yaml -o loss.canon=0.5 -o loss.view=0.25 --threads 1

Variants (each one full optimisation step: forward, L_train, backward, AdamW step):
  fr_only       input rgb, every reconstruction lambda 0: the plain recognition model
  joint_input   rgb+canonical+depth input (regressor -> canonical face + depth renders -> 7-channel
                backbone), L_FR only (no L_reco / L_canon / L_view)
  joint_reco    the same + L_reco (re-rendered input view: photometric, landmarks, priors, gt coefficients)
  joint_full    the same + L_FR^canon (lambda 0.5) + L_view (lambda 0.25): `make demo`'s loss
With --config (a training YAML, plus -o section.key=value overrides) every variant is that config with
the variant's input mode and lambdas; the extra variant ``config`` is the config exactly as given (after
-o), so `--config configs/demo.yaml` gives the `make demo` ratio (config / fr_only) and adding
`-o loss.canon=0.5 -o loss.view=0.25` the all-terms ratio. Size, batch, backbone, head and embedding
size then come from the config unless given on the command line.
The variants run round-robin, one step of each per repeat, on the same batch of synthetic faces (with
ground-truth coefficients and landmarks), so that a change of machine load hits them alike; reported:
median (and minimum) step time and the ratio of medians to fr_only. The first round is a warm-up
(numba compilation, allocator) and is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _report import finish  # noqa: E402  (bench/ is on sys.path when a script here runs)

VARIANTS = {
    "fr_only": dict(input_mode="rgb", reco=0.0, canon=0.0, view=0.0),
    "joint_input": dict(input_mode="rgb+canonical+depth", reco=0.0, canon=0.0, view=0.0),
    "joint_reco": dict(input_mode="rgb+canonical+depth", reco=1.0, canon=0.0, view=0.0),
    "joint_full": dict(input_mode="rgb+canonical+depth", reco=1.0, canon=0.5, view=0.25),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_config(variant: Optional[Dict[str, Any]], args: argparse.Namespace) -> Any:
    """TrainConfig of one variant (None = the --config as given)."""
    from lh2face.config import from_dict

    from joint.config import TrainConfig, load_train_config, validate

    if args.config is not None:
        over = list(args.override)
        over += [f"data.image_size={args.size}", f"model.backbone={args.backbone}", f"model.head={args.head}",
                 f"model.embedding_size={args.embedding_size}", f"run.device={args.device}"]
        if variant is not None:
            over += [f"model.input_mode={variant['input_mode']}"]
            over += [f"loss.{k}={variant[k]}" for k in ("reco", "canon", "view")]
        return load_train_config(args.config, over, check_paths=False)
    cfg = from_dict(TrainConfig, {
        "data": {"kind": "synthetic", "image_size": args.size},
        "model": {"backbone": args.backbone, "embedding_size": args.embedding_size, "head": args.head,
                  "input_mode": variant["input_mode"]},
        "recon": {"prior": 0.001, "gt_coeffs": True},
        "loss": {"reco": variant["reco"], "canon": variant["canon"], "view": variant["view"]},
        "run": {"device": args.device},
    })
    return validate(cfg, check_paths=False)


def synthetic_batch(n: int, size: int, device: torch.device) -> Dict[str, Any]:
    from recon.synth import SyntheticFaces

    from joint.data import DictSamples, collate_samples

    ids = max(2, n // 4)
    ds = DictSamples(SyntheticFaces(ids, -(-n // ids), seed=0, image_size=size))
    batch = collate_samples([ds[i] for i in range(n)])
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def bench(args: argparse.Namespace, device: torch.device, names: Sequence[str]) -> Dict[str, Any]:
    from joint.losses import joint_loss
    from joint.model import JointModel

    t0 = time.perf_counter()
    batch = synthetic_batch(args.batch, args.size, device)
    synth_s = time.perf_counter() - t0
    images, labels = batch["image"], batch["label"]
    extras = {k: v for k, v in batch.items() if k not in ("image", "label", "n_bad", "n_seen")}
    num_classes = int(labels.max()) + 1
    models, opts = {}, {}
    rows: Dict[str, Dict[str, Any]] = {}
    for name in names:
        torch.manual_seed(0)
        cfg = make_config(VARIANTS.get(name), args)
        rows[name] = dict(input_mode=cfg.model.input_mode, reco=cfg.loss.reco, canon=cfg.loss.canon, view=cfg.loss.view)
        models[name] = JointModel.from_config(cfg, num_classes).to(device).train()
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
    times: Dict[str, List[float]] = {k: [] for k in names}
    clock = time.process_time if args.clock == "process" else time.perf_counter
    for i in range(args.repeats + args.warmup):
        for name in names:
            m = models[name]
            _sync(device)
            t = clock()
            out = m.trunk(images, extras)
            loss, _ = joint_loss(out, labels, m.head, m.lambdas)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            _sync(device)
            if i >= args.warmup:
                times[name].append(clock() - t)
    base = statistics.median(times[names[0]])
    res = {}
    for name in names:
        med = statistics.median(times[name])
        res[name] = {"median_s": med, "min_s": min(times[name]), "ratio_to_fr_only": med / base,
                     "images_per_s": args.batch / med, "all_s": times[name], **rows[name]}
    return {"config": None if args.config is None else str(args.config), "overrides": list(args.override),
            "batch": args.batch, "size": args.size, "backbone": args.backbone, "head": args.head,
            "repeats": args.repeats, "warmup": args.warmup, "clock": args.clock, "synth_batch_s": synth_s,
            "variants": res}


def markdown(r: Dict[str, Any]) -> str:
    over = " ".join("-o " + o for o in r.get("overrides", []))
    src = f"config {r['config']} {over}".rstrip() + ", " if r.get("config") else ""
    lines = [f"Joint vs FR-only training step: {src}{r['backbone']}, {r['head']} head, batch {r['batch']}, "
             f"{r['size']} px, median of {r['repeats']} alternated steps"
             + (", CPU time of this process" if r.get("clock") == "process" else ""),
             "", "| variant | input | L_reco / L_canon / L_view | median step (s) | min step (s) | images/s | x FR-only |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {v['input_mode']} | {v['reco']:g} / {v['canon']:g} / {v['view']:g} | "
                     f"{v['median_s']:.3f} | {v['min_s']:.3f} | {v['images_per_s']:.1f} | {v['ratio_to_fr_only']:.2f} |")
    return "\n".join(lines) + "\n"


def fill_defaults(args: argparse.Namespace) -> None:
    """Size, batch, backbone, head, embedding size and variants not given: the config's, else the defaults."""
    defaults = dict(size=112, batch=16, backbone="mobilefacenet", head="lh2face", embedding_size=512)
    if args.config is not None:
        from joint.config import load_train_config

        cfg = load_train_config(args.config, args.override, check_paths=False)
        defaults = dict(size=cfg.data.image_size, batch=cfg.schedule.batch_size, backbone=cfg.model.backbone,
                        head=cfg.model.head, embedding_size=cfg.model.embedding_size)
    elif args.override:
        raise ValueError("-o overrides need --config")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.variants is None:
        args.variants = ["fr_only", "joint_input", "config"] if args.config is not None else list(VARIANTS)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help="training YAML the variants start from")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override (with --config; repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default=None, help="default mobilefacenet (or the config's)")
    p.add_argument("--head", default=None, help="default lh2face (or the config's)")
    p.add_argument("--embedding-size", type=int, default=None, help="default 512 (or the config's)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels; default 112 (or the config's)")
    p.add_argument("--batch", type=int, default=None, help="default 16 (or the config's schedule.batch_size)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS) + ["config"],
                   help="the first one is the reference of the ratios (default: all but 'config'; with "
                        "--config: fr_only joint_input config)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=("wall", "process"), default="wall",
                   help="wall: elapsed time; process: CPU time of this process (steadier on a machine shared "
                        "with other jobs; meaningful with --threads 1 on CPU)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (a .md with the table is written next to it)")
    args = p.parse_args(argv)
    try:
        fill_defaults(args)
    except Exception as exc:  # ConfigError, missing file, bad override
        print(f"bench_joint: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_joint: --device cuda asked for but CUDA is not available", file=sys.stderr)
        return 2
    if args.batch < 2 or args.repeats < 1 or args.warmup < 0:
        print("bench_joint: --batch must be >= 2, --repeats >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if "config" in args.variants and args.config is None:
        print("bench_joint: the 'config' variant needs --config", file=sys.stderr)
        return 2
    r = bench(args, device, args.variants)
    return finish(r, device, markdown, args.out)


if __name__ == "__main__":
    sys.exit(main())
