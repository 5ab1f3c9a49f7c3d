"""Data-parallel training throughput: `lh2face train --nproc 2` against one process, same config.

Each run trains the AT&T recognition config (MobileFaceNet, 64 px, per-process batch 32, one torch thread
per process) for --steps steps; images/s is the median of the logged `img_per_s` rows after the first
--skip rows (global images over all ranks). The two runs go one after the other in this process's
lifetime, so they see the same machine; the ratio is what to read.

    python bench/bench_ddp.py --steps 40 --out bench/results/ddp_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, steps: int, config: str, work: Path) -> list[float]:
    out = work / f"nproc{nproc}"
    cmd = [sys.executable, "-m", "joint.cli", "train", "--config", config, "--out", str(out), "--overwrite",
           "-o", f"schedule.steps={steps}", "-o", "schedule.log_every=2", "-o", "schedule.checkpoint_every=0",
           "-o", "schedule.eval_every=0", "-o", "run.threads=1", "-o", "run.progress=false",
           "-o", "run.plots=false", "-o", "run.tensorboard=false"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["img_per_s"] for r in rows if r.get("kind") == "train" and "img_per_s" in r]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo_att.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=2, help="logged rows to drop as warm-up")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, args.steps, args.config, Path(tmp))[args.skip:]
        two = run(2, args.steps, args.config, Path(tmp))[args.skip:]
    res = {
        "config": args.config, "steps": args.steps, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "img_per_s_1proc": statistics.median(one), "img_per_s_2proc": statistics.median(two),
    }
    res["ratio_2_to_1"] = res["img_per_s_2proc"] / res["img_per_s_1proc"]
    print(f"1 process: {res['img_per_s_1proc']:.1f} img/s | 2 processes (gloo DDP): {res['img_per_s_2proc']:.1f} "
          f"img/s | ratio {res['ratio_2_to_1']:.2f} (load average {res['load_average'][0]:.1f})")
    if args.out:
        from lh2face.io import write_json_atomic

        write_json_atomic(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
