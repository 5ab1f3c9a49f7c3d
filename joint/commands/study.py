"""`lh2face study --config configs/study_synthetic.yaml [--out DIR] [--jobs 2] [--report-only]`.

The experiment driver of joint.study: heads x input modes x seeds (+ ablation variants) under one
training config; configs/study_modes.yaml is the four-input-mode comparison at the demo budget. Writes
study.json and study.md into the study folder and prints the table. Resumable; `--jobs N` trains N runs
at a time in worker processes. Exit codes: 0 done, 2 a config fault.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

NAME = "study"
HELP = "experiment driver: heads x input modes x seeds (+ ablations) from a study config (see joint.study)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="study YAML (sections study + train)")
    parser.add_argument("--out", default=None, help="study folder (default: study.out)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (each trains one run at a time)")
    parser.add_argument("--only", default=None, help="run only the runs whose key contains this text")
    parser.add_argument("--report-only", action="store_true", help="only aggregate the finished runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study config value (e.g. train.schedule.steps=50, study.seeds=[0])")


def run(args: argparse.Namespace) -> int:
    from lh2face.config import ConfigError

    from joint.study import load_study_config, report, worker

    try:
        cfg = load_study_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or cfg.study.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker or (args.jobs <= 1 and not args.report_only):
        try:
            worker(cfg, out, args.only)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.worker:
            return 0
    elif not args.report_only:
        _run_workers(args, out)
    print(report(cfg, out))
    return 0


def _run_workers(args: argparse.Namespace, out: Path) -> None:
    """`--jobs N`: N worker processes of this command claim the unfinished runs one at a time."""
    cmd = [sys.executable, "-m", "joint.cli", NAME, "--config", str(args.config), "--out", str(out), "--worker"]
    for o in args.overrides:
        cmd += ["--set", o]
    if args.only:
        cmd += ["--only", args.only]
    procs = [subprocess.Popen(cmd) for _ in range(args.jobs)]
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"error: worker exit codes {codes}", file=sys.stderr)
