#!/usr/bin/env python
"""Export throughput (faces/s): what `lh2face export` and the synthetic data set cost per face.

    python bench/bench_export.py                                  # 16 faces per repeat, 5 repeats, CPU
    python bench/bench_export.py --faces 32 --repeats 7 --out bench/results/export_cpu.json
    python bench/bench_export.py --device cuda

Stages, each timed over ``--faces`` synthetic identities per repeat (median over ``--repeats``, after one
untimed warm-up round; the stages run round-robin within each repeat so load changes hit all alike):
  render      recon.export.face_outputs: canonical face + normalised depth (112x112) and the mesh
              vertices / albedo colours, batched (``--batch-size``), no files
  export      recon.export.export_coefficients into a temporary folder: the render plus, per face,
              canonical.png, 16-bit depth.png, depth.npy, mesh.obj, mesh.ply, coeffs.json (atomic writes)
  synth       recon.synth.SyntheticFaces items (random expression, pose, light, background, blur,
              noise; 112x112 aligned crop with landmarks): the on-the-fly training data
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _common import open_device, time_call  # noqa: E402  (bench/ is on sys.path when a script here runs)
from _report import finish  # noqa: E402

STAGES = ("render", "export", "synth")


def bench(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    from recon.export import export_coefficients, face_outputs, synthetic_identities
    from recon.morphable import MorphableModel
    from recon.render import build_renderer
    from recon.synth import SyntheticFaces

    model = MorphableModel().to(device)
    renderer = build_renderer(args.backend)
    coeffs = synthetic_identities(MorphableModel(), args.faces, seed=0).to(device)
    tmp = Path(tempfile.mkdtemp(prefix="lh2face_bench_export_"))
    counter = [0]

    def render() -> None:
        for s in range(0, args.faces, args.batch_size):
            face_outputs(model, renderer, coeffs[s : s + args.batch_size])

    def export() -> None:
        counter[0] += 1
        export_coefficients(coeffs, tmp / f"r{counter[0]}", model=model, renderer=renderer,
                            batch_size=args.batch_size, progress=False)
        shutil.rmtree(tmp / f"r{counter[0]}", ignore_errors=True)

    synth_rounds = [0]

    def synth() -> None:
        synth_rounds[0] += 1  # new identities each round: no cache can help
        ds = SyntheticFaces(args.faces, 1, seed=synth_rounds[0], image_size=112)
        for i in range(len(ds)):
            ds[i]

    fns: Dict[str, Callable[[], None]] = {"render": render, "export": export, "synth": synth}
    names = [s for s in STAGES if s in args.stages]
    times: Dict[str, List[float]] = {k: [] for k in names}
    try:
        for i in range(args.repeats + 1):
            for k in names:
                t = time_call(fns[k], device)
                if i > 0:
                    times[k].append(t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {}
    for k in names:
        med = statistics.median(times[k])
        res[k] = {"median_s": med, "min_s": min(times[k]), "faces_per_s": args.faces / med,
                  "ms_per_face": 1e3 * med / args.faces, "all_s": times[k]}
    return {"faces": args.faces, "batch_size": args.batch_size, "repeats": args.repeats,
            "renderer": type(renderer).__name__, "stages": res}


def markdown(r: Dict[str, Any]) -> str:
    lines = [f"Export throughput: {r['faces']} synthetic faces per repeat, render batch {r['batch_size']}, "
             f"median of {r['repeats']} repeats ({r['renderer']})", "",
             "| stage | median (s) | min (s) | faces/s | ms/face |", "|---|---|---|---|---|"]
    for k, v in r["stages"].items():
        lines.append(f"| {k} | {v['median_s']:.3f} | {v['min_s']:.3f} | {v['faces_per_s']:.1f} | {v['ms_per_face']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", help="renderer backend (auto, torch, pytorch3d)")
    p.add_argument("--faces", type=int, default=16, help="faces per timed repeat")
    p.add_argument("--batch-size", type=int, default=16, help="faces rendered per renderer call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON path (a .md with the table is written next to it)")
    args = p.parse_args(argv)
    device = open_device("bench_export", args.device, args.threads)
    if device is None:
        return 2
    if args.faces < 1 or args.batch_size < 1 or args.repeats < 1:
        print("bench_export: --faces, --batch-size and --repeats must be >= 1", file=sys.stderr)
        return 2
    r = bench(args, device)
    return finish(r, device, markdown, args.out)


if __name__ == "__main__":
    sys.exit(main())
