"""Forward+backward time of every head, as a ratio to CosFace measured in the same process.

    python bench/bench_heads.py --classes 10000 100000 --batch 128 --dim 512 --repeats 7 \
        --out bench/results/heads.json [--device cuda]

Heads are timed round-robin (one repeat of each head in turn) so that load changes on a shared machine
hit all of them alike; the median over repeats is reported (and the minimum, which is less sensitive to a loaded machine). Each timed step is: zero grads, forward
(cosines, margins, all loss terms), backward to the embeddings and proxies; on CUDA the device is
synchronised before reading the clock.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from recognition.heads import build_head

from _common import open_device, sync, time_call  # bench/ is on sys.path when a script here runs

VARIANTS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("cosface", "cosface", {}),
    ("arcface", "arcface", {}),
    ("adaface", "adaface", {}),
    ("lh2face", "lh2face", {}),
    ("lh2face (L_vMF only)", "lh2face", dict(w_pps=0.0, w_pns=0.0, w_pp=0.0)),
]


def bench(num_classes: int, args: argparse.Namespace, device: torch.device) -> Dict[str, Dict[str, float]]:
    g = torch.Generator().manual_seed(0)
    emb0 = (torch.randn(args.batch, args.dim, generator=g) * 10).to(device)
    labels = torch.randint(0, num_classes, (args.batch,), generator=g).to(device)
    heads = {}
    for label, name, options in VARIANTS:
        heads[label] = build_head(name, num_classes, args.dim, **options).to(device)
    times: Dict[str, List[float]] = {k: [] for k in heads}

    def step(head) -> None:
        emb = emb0.clone().requires_grad_(True)
        head.weight.grad = None
        loss, _ = head(emb, labels)
        loss.backward()

    for head in heads.values():
        for _ in range(args.warmup):
            step(head)
    sync(device)
    for _ in range(args.repeats):
        for label, head in heads.items():
            times[label].append(time_call(lambda: step(head), device))
    base = statistics.median(times["cosface"])
    base_min = min(times["cosface"])
    return {k: {"median_ms": 1e3 * statistics.median(v), "ratio_to_cosface": statistics.median(v) / base,
                "min_ms": 1e3 * min(v), "ratio_of_minima": min(v) / base_min,
                "all_ms": [1e3 * t for t in v]} for k, v in times.items()}


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    device = open_device("bench_heads", args.device, args.threads)
    if device is None:
        return 2
    results: Dict[str, Any] = {}
    for c in args.classes:
        results[str(c)] = bench(c, args, device)
        print(f"  {c} classes done", file=sys.stderr, flush=True)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nfwd+bwd per step, batch {args.batch}, d {args.dim}, {args.repeats} repeats (median), "
          f"device {device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    header = "| head | " + " | ".join(f"{c} classes: median ms (x CosFace) / min ms (x CosFace)"
                                      for c in args.classes) + " |"
    print(header)
    print("|---|" + "---|" * len(args.classes))
    for label, _, _ in VARIANTS:
        cells = []
        for c in args.classes:
            r = results[str(c)][label]
            cells.append(f"{r['median_ms']:.1f} ({r['ratio_to_cosface']:.2f}) / {r['min_ms']:.1f} ({r['ratio_of_minima']:.2f})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.out is not None:
        from lh2face.io import write_json_atomic

        write_json_atomic(args.out, {
            "batch": args.batch, "dim": args.dim, "repeats": args.repeats, "device": str(device),
            "device_name": dev_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "results": results,
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
