"""Per-rank proxy memory of the sharded classifier: computed, and measured with gloo ranks on CPU.

    python bench/bench_sharded_memory.py --measure-classes 1000000 --world 2 --out bench/results/shard_mem.json

Computed: recognition.sharded.proxy_memory_breakdown for 1M and 10M classes, d 512, 8 ranks, float32,
SGD (momentum) and AdamW. Measured: `world` processes (gloo, CPU) each build a ShardedClassifier, run one
training step (forward, backward, SGD with momentum) on a batch of `batch` per rank, then report the
bytes of their proxy tensors (weight, grad, momentum) and the growth of the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recognition.sharded import ShardedClassifier, logits_memory_bytes, proxy_memory_breakdown


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, outdir: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rss0 = _rss_bytes()
        clf = ShardedClassifier(args.head, args.measure_classes, args.dim)
        opt = torch.optim.SGD(clf.parameters(), lr=0.1, momentum=0.9)
        emb = torch.randn(args.batch, args.dim, requires_grad=True)
        labels = torch.randint(0, args.measure_classes, (args.batch,))
        t0 = time.perf_counter()
        loss, _ = clf(emb, labels)
        loss.backward()
        opt.step()
        step_s = time.perf_counter() - t0
        tensors = [clf.weight, clf.weight.grad, opt.state[clf.weight]["momentum_buffer"]]
        out = {
            "rank": rank,
            "rows": clf.num_local,
            "proxy_bytes_measured": sum(t.numel() * t.element_size() for t in tensors),
            "peak_rss_growth_bytes": _rss_bytes() - rss0,
            "step_seconds": step_s,
        }
        (Path(outdir) / f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure-classes", type=int, default=1_000_000)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--head", default="lh2face")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    computed: Dict[str, Any] = {}
    print("| classes | ranks | optimizer | rows/rank | weight | weight+grad+state per rank |")
    print("|---|---|---|---|---|---|")
    for c in (1_000_000, 10_000_000):
        for optim in ("sgd", "adamw"):
            b = proxy_memory_breakdown(c, args.dim, 8, torch.float32, optim)
            computed[f"{c}/8/{optim}"] = b
            print(f"| {c:,} | 8 | {optim} | {b['rows']:,} | {b['weight'] / 2**30:.3f} GiB | {b['total'] / 2**30:.3f} GiB |")
    b = proxy_memory_breakdown(args.measure_classes, args.dim, args.world, torch.float32, "sgd")
    print(f"\nlogits+grad (3 float32 copies) per rank, global batch {8 * args.batch}, 1M classes, 8 ranks: "
          f"{logits_memory_bytes(8 * args.batch, 1_000_000, 8) / 2**30:.3f} GiB")
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_worker, args=(args.world, port, args, tmp), nprocs=args.world, join=True)
        measured = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(args.world)]
    print(f"\nmeasured, {args.measure_classes:,} classes on {args.world} gloo ranks (SGD momentum), "
          f"computed {b['total'] / 2**30:.3f} GiB per rank:")
    for m in measured:
        print(f"  rank {m['rank']}: rows {m['rows']:,}, proxy tensors {m['proxy_bytes_measured'] / 2**30:.3f} GiB, "
              f"peak RSS growth {m['peak_rss_growth_bytes'] / 2**30:.3f} GiB, step {m['step_seconds']:.2f} s")
    if args.out is not None:
        from lh2face.io import write_json_atomic

        write_json_atomic(args.out, {"computed_8_ranks": computed, "measured": measured,
                                     "measured_computed": b, "args": {k: str(v) for k, v in vars(args).items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
