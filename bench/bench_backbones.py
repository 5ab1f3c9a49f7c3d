#!/usr/bin/env python
"""Forward + backward throughput (images/s) of the face-recognition backbones.

    python bench/bench_backbones.py                         # IResNet-50 + MobileFaceNet, 3 and 7 ch, CPU
    python bench/bench_backbones.py --device cuda --compile --repeats 20 --out bench/results/backbones.json

Each measurement: build the backbone in train mode, run `warmup` untimed steps, then `repeats` timed
steps of forward + backward of a scalar loss (sum of squared embeddings) on a random batch; the number
reported is batch / median step time. `--compile` adds the same measurement through torch.compile (its
compilation happens in the warm-up steps). Prints a markdown table; `--out` also writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from recognition.backbones import build_backbone  # noqa: E402
from _common import open_device, sync, timed  # noqa: E402  (bench/ is on sys.path when a script here runs)


def measure(name: str, channels: int, batch: int, size: int, repeats: int, warmup: int, device: torch.device,
            compile_model: bool, embedding_size: int = 512) -> Dict[str, Any]:
    """One configuration -> dict with the per-step times (s) and the median throughput (images/s)."""
    torch.manual_seed(0)
    model = build_backbone(name, in_channels=channels, embedding_size=embedding_size, input_size=size).to(device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    run = torch.compile(model) if compile_model else model
    x = torch.rand(batch, channels, size, size, device=device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        run(x).square().sum().backward()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    times = timed(step, device, repeats)
    med = statistics.median(times)
    return {
        "model": name,
        "channels": channels,
        "batch": batch,
        "size": size,
        "compile": compile_model,
        "params": params,
        "warmup_s": round(warm_s, 4),
        "step_s": [round(t, 5) for t in times],
        "median_step_s": round(med, 5),
        "images_per_s": round(batch / med, 2),
    }


def markdown(results: List[Dict[str, Any]], env: Dict[str, Any]) -> str:
    lines = [
        f"Backbone fwd+bwd throughput on {env['device_name']} (torch {env['torch']}, {env['threads']} threads), "
        f"median of {env['repeats']} steps"
        + (f"; 1-min load average at start {env['loadavg_at_start']:.1f}" if env.get("loadavg_at_start") is not None else ""),
        "",
        "| model | channels | batch | size | compile | params (M) | median step (s) | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['channels']} | {r['batch']} | {r['size']} | {r['compile']} | - | - | "
                         f"failed: {r['error'][:60]} |")
            continue
        lines.append(
            f"| {r['model']} | {r['channels']} | {r['batch']} | {r['size']} | {r['compile']} | "
            f"{r['params'] / 1e6:.2f} | {r['median_step_s']:.4f} | {r['images_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="iresnet50,mobilefacenet", help="comma-separated backbone names")
    ap.add_argument("--channels", default="3,7", help="comma-separated input channel counts")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=112, help="input side in pixels")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per configuration (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    ap.add_argument("--out", type=Path, default=None, help="write JSON results here (and .md beside it)")
    args = ap.parse_args(argv)

    device = open_device("bench_backbones", args.device, args.threads)
    if device is None:
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        print("error: --batch and --repeats must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # shared-CPU contention
    }
    results: List[Dict[str, Any]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for ch in [int(c) for c in args.channels.split(",") if c.strip()]:
            for comp in ([False, True] if args.compile else [False]):
                try:
                    r = measure(name, ch, args.batch, args.size, args.repeats, args.warmup, device, comp)
                except Exception as exc:  # e.g. torch.compile without a C++ compiler: report, go on
                    r = {"model": name, "channels": ch, "batch": args.batch, "size": args.size, "compile": comp,
                         "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "step_s"}), file=sys.stderr, flush=True)
                _write(args.out, env, results)  # after every configuration: partial results survive a kill
    print(markdown(results, env))
    return 0


def _write(out: Path | None, env: Dict[str, Any], results: List[Dict[str, Any]]) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results, env) + "\n")


if __name__ == "__main__":
    sys.exit(main())
