#!/usr/bin/env python
"""Joint training step vs FR-only training step, same process, alternated.

    python bench/bench_joint.py                                   # 112 px, batch 16, MobileFaceNet, CPU
    python bench/bench_joint.py --size 64 --batch 16 --repeats 5 --out bench/results/joint_cpu.json
    python bench/bench_joint.py --device cuda --backbone iresnet50 --batch 64

Variants (each one full optimisation step: forward, L_train, backward, AdamW step):
  fr_only       input rgb, every reconstruction lambda 0: the plain recognition model
  joint_input   rgb+canonical+depth input (regressor -> canonical face + depth renders -> 7-channel
                backbone), L_FR only (no L_reco / L_canon / L_view)
  joint_reco    the same + L_reco (re-rendered input view: photometric, landmarks, priors, gt coefficients)
  joint_full    the same + L_FR^canon (lambda 0.5) + L_view (lambda 0.25): `make demo`'s loss
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


def make_config(variant: Dict[str, Any], args: argparse.Namespace) -> Any:
    from lh2face.config import from_dict

    from joint.config import TrainConfig, validate

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
    for name in names:
        torch.manual_seed(0)
        cfg = make_config(VARIANTS[name], args)
        models[name] = JointModel.from_config(cfg, num_classes).to(device).train()
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
    times: Dict[str, List[float]] = {k: [] for k in names}
    for i in range(args.repeats + args.warmup):
        for name in names:
            m = models[name]
            _sync(device)
            t = time.perf_counter()
            out = m.trunk(images, extras)
            loss, _ = joint_loss(out, labels, m.head, m.lambdas)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times[names[0]])
    res = {}
    for name in names:
        med = statistics.median(times[name])
        res[name] = {"median_s": med, "min_s": min(times[name]), "ratio_to_fr_only": med / base,
                     "images_per_s": args.batch / med, "all_s": times[name], **VARIANTS[name]}
    return {"batch": args.batch, "size": args.size, "backbone": args.backbone, "head": args.head,
            "repeats": args.repeats, "warmup": args.warmup, "synth_batch_s": synth_s, "variants": res}


def markdown(r: Dict[str, Any]) -> str:
    lines = [f"Joint vs FR-only training step: {r['backbone']}, {r['head']} head, batch {r['batch']}, "
             f"{r['size']} px, median of {r['repeats']} alternated steps",
             "", "| variant | input | L_reco / L_canon / L_view | median step (s) | min step (s) | images/s | x FR-only |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {v['input_mode']} | {v['reco']:g} / {v['canon']:g} / {v['view']:g} | "
                     f"{v['median_s']:.3f} | {v['min_s']:.3f} | {v['images_per_s']:.1f} | {v['ratio_to_fr_only']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="mobilefacenet")
    p.add_argument("--head", default="lh2face")
    p.add_argument("--embedding-size", type=int, default=512)
    p.add_argument("--size", type=int, default=112, help="image side in pixels")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="the first one is the reference of the ratios (default fr_only)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON path (a .md with the table is written next to it)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_joint: --device cuda asked for but CUDA is not available", file=sys.stderr)
        return 2
    if args.batch < 2 or args.repeats < 1 or args.warmup < 0:
        print("bench_joint: --batch must be >= 2, --repeats >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    r = bench(args, device, args.variants)
    return finish(r, device, markdown, args.out)


if __name__ == "__main__":
    sys.exit(main())
