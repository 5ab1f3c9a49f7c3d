#!/usr/bin/env python
"""Faces per second of the two photo reconstruction paths of `lh2face export` / `visualize`, side by side.

    python bench/bench_photo_paths.py RUN tests/fixtures/photos --threads 1
    python bench/bench_photo_paths.py RUN ../shared/data/lfw-dev --refine 10 --out bench/results/photo_paths.json

Paths, on the same photos in one process (detection timed separately; one untimed warm-up fit first):
  fit        recon.fitting.fit_image per photo (FitConfig defaults), what export does without --model
  regressor  one forward pass of the run's coefficient regressor (export --model RUN)
  refine     the regressor plus --refine N photometric fitting steps (export --model RUN --refine N)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from _report import finish  # noqa: E402  (bench/ is on sys.path when a script here runs)


def bench(args: argparse.Namespace) -> Dict[str, Any]:
    from joint.commands._run_regressor import regressor_from_run
    from recon.morphable import MorphableModel
    from recon.photos import list_images, reconstruct_photos
    from recon.render import build_renderer

    files = list_images(args.photos)[: args.max_photos]
    mm, renderer = MorphableModel(), build_renderer(args.backend)
    reg = regressor_from_run(args.run)
    list(reconstruct_photos(files[:1], model=mm, renderer=renderer, fit_steps=2))  # warm-up (kernels, caches)
    paths = {"fit": {}, "regressor": {"regressor": reg}, f"refine {args.refine}": {"regressor": reg,
                                                                                   "refine_steps": args.refine}}
    rows: Dict[str, Any] = {}
    for name, kw in paths.items():
        res = [r for r in reconstruct_photos(files, model=mm, renderer=renderer, **kw) if r.ok]
        rec = sum(r.seconds.get("regress", 0.0) + r.seconds.get("fit", 0.0) for r in res)
        det = sum(r.seconds.get("detect", 0.0) for r in res)
        n = max(len(res), 1)
        rows[name] = {"faces": len(res), "faces_per_s": len(res) / rec if rec else float("nan"),
                      "ms_per_face": 1000 * rec / n, "detect_ms_per_face": 1000 * det / n,
                      "nme_after": sum(r.nme.get("after", float("nan")) for r in res) / n}
    return {"run": str(args.run), "photos": [str(p) for p in args.photos], "paths": rows}


def markdown(r: Dict[str, Any]) -> str:
    lines = [f"photo reconstruction paths ({r['device_name']}, {r['threads']} thread(s), load {r['load_average'][0]:.1f})",
             "", "| path | faces | faces/s | ms/face | detection ms/face | landmark NME after |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k, v in r["paths"].items():
        lines.append(f"| {k} | {v['faces']} | {v['faces_per_s']:.2f} | {v['ms_per_face']:.1f} | "
                     f"{v['detect_ms_per_face']:.0f} | {v['nme_after']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained run (folder or checkpoint) with a reconstruction regressor")
    p.add_argument("photos", nargs="+", help="photo files and/or folders")
    p.add_argument("--refine", type=int, default=10, help="fitting steps of the refine path")
    p.add_argument("--max-photos", type=int, default=20)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON path (a .md with the table is written next to it)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return finish(bench(args), torch.device("cpu"), markdown, args.out)


if __name__ == "__main__":
    sys.exit(main())
