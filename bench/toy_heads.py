"""Toy stability comparison of the heads (chooses the LH2Face defaults; DESIGN.md section 2).

Data: `classes` Gaussian clusters in R^dim (centres N(0, I)), within-class noise sigma, a fixed training
set and a held-out set of the same identities. Model: MLP dim -> 256 -> 256 -> emb (ReLU). Adam.
Metric: held-out closed-set accuracy (argmax cosine to the learned proxies) and the mean embedding norm.

    python bench/toy_heads.py --steps 1200 --seeds 0 1 --out bench/results/toy_heads.json

Prints a markdown table (mean over seeds) and writes JSON with every run. Each run is ~1,200 Adam steps of
a small MLP (a few seconds on an idle core; the full set of variants took ~25 min on a 2-core machine
loaded by other jobs); `--only SUBSTRING ...` runs a subset. Results: bench/results/toy_heads.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from recognition.heads import build_head

LITERAL = dict(scale_normalised=False, pps_detach_direction=False)

VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "cosface": ("cosface", {}),
    "arcface": ("arcface", {}),
    "adaface": ("adaface", {}),
    "lh2face literal (all terms)": ("lh2face", dict(LITERAL)),
    "lh2face literal, no proxy terms": ("lh2face", dict(LITERAL, w_pps=0.0, w_pns=0.0, w_pp=0.0)),
    "lh2face literal, pps dir. detached": ("lh2face", dict(scale_normalised=False, pps_detach_direction=True)),
    "lh2face literal, kappa detached": ("lh2face", dict(LITERAL, detach_kappa=True)),
    "lh2face scale-norm, no proxy terms": ("lh2face", dict(scale_normalised=True, w_pps=0.0, w_pns=0.0, w_pp=0.0)),
    "lh2face scale-norm (all terms)": ("lh2face", dict(scale_normalised=True, pps_detach_direction=False)),
    "lh2face scale-norm, pps dir. detached": ("lh2face", dict(scale_normalised=True, pps_detach_direction=True)),
    "lh2face scale-norm, pps dir. det., EMA": (
        "lh2face", dict(scale_normalised=True, pps_detach_direction=True, margin_stat="ema")),
    "lh2face scale-norm, pps dir. det., kappa det.": (
        "lh2face", dict(scale_normalised=True, pps_detach_direction=True, detach_kappa=True)),
    "lh2face scale-norm, pps det., no L_pns": (
        "lh2face", dict(scale_normalised=True, pps_detach_direction=True, w_pns=0.0)),
    "lh2face scale-norm, pps det., no L_pp": (
        "lh2face", dict(scale_normalised=True, pps_detach_direction=True, w_pp=0.0)),
    "lh2face scale-norm, pps det., L_pps only": (
        "lh2face", dict(scale_normalised=True, pps_detach_direction=True, w_pns=0.0, w_pp=0.0)),
    "lh2face scale-norm, pps det., w_pns 0.1": (
        "lh2face", dict(scale_normalised=True, pps_detach_direction=True, w_pns=0.1)),
    "lh2face defaults": ("lh2face", {}),
}


def make_data(classes: int, dim: int, per_class: int, sigma: float, seed: int):
    """Training and held-out sets: (x (N, dim), y (N,)) each."""
    g = torch.Generator().manual_seed(1000 + seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(per_class)

    def sample() -> torch.Tensor:
        return centres[y] + sigma * torch.randn(y.shape[0], dim, generator=g)

    return (sample(), y), (sample(), y.clone())


def run_one(head_name: str, options: Dict[str, Any], args: argparse.Namespace, seed: int) -> Dict[str, Any]:
    (xtr, ytr), (xte, yte) = make_data(args.classes, args.dim, args.per_class, args.sigma, seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(args.dim, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, args.emb)
    )
    head = build_head(head_name, args.classes, args.emb, **options)
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=args.lr)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    diverged = False
    for step in range(args.steps):
        idx = torch.randint(0, xtr.shape[0], (args.batch,), generator=g)
        loss, logs = head(model(xtr[idx]), ytr[idx])
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        z = model(xte)
        cos = nn.functional.normalize(z, dim=1) @ nn.functional.normalize(head.weight, dim=1).t()
        acc = float((cos.argmax(1) == yte).float().mean())
        norm = float(z.norm(dim=1).mean())
    return {
        "head": head_name,
        "options": options,
        "seed": seed,
        "accuracy": acc if not diverged else 0.0,
        "mean_norm": norm,
        "diverged": diverged,
        "final_logs": {k: float(v) for k, v in logs.items()},
        "seconds": elapsed,
    }


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--sigma", type=float, default=2.0)
    p.add_argument("--emb", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, help="substrings of variant names to run")
    p.add_argument("--out", type=Path, default=None, help="write every run as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in VARIANTS if not args.only or any(s in n for s in args.only)]
    runs: List[Dict[str, Any]] = []
    rows = []
    for name in names:
        head_name, options = VARIANTS[name]
        res = [run_one(head_name, options, args, s) for s in args.seeds]
        for r in res:
            r["variant"] = name
        runs.extend(res)
        accs = [r["accuracy"] for r in res]
        norms = [r["mean_norm"] for r in res]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append((name, statistics.mean(accs), sd, statistics.mean(norms), sum(r["diverged"] for r in res)))
        print(f"  {name}: acc {statistics.mean(accs):.3f} +- {sd:.3f}, |z| {statistics.mean(norms):.2f}",
              file=sys.stderr, flush=True)
    print(f"\nToy: {args.classes} clusters, dim {args.dim}, sigma {args.sigma}, {args.per_class}/class train, "
          f"emb {args.emb}, batch {args.batch}, Adam lr {args.lr}, {args.steps} steps, seeds {args.seeds}\n")
    print("| variant | held-out acc (mean +- sd) | mean norm | diverged |")
    print("|---|---|---|---|")
    for name, acc, sd, norm, div in rows:
        print(f"| {name} | {acc:.3f} +- {sd:.3f} | {norm:.2f} | {div} |")
    if args.out is not None:
        from lh2face.io import write_json_atomic

        write_json_atomic(args.out, {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                     "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
