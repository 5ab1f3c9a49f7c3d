"""`lh2face regressor [--out assets/regressor] [--work DIR]`: train the pretrained reconstruction regressor.

Trains recon.regressor.CoeffRegressor on synthetic faces with ground truth (recon.synth) plus real aligned
crops with 68 dlib landmarks (AT&T and the first --lfw-train-people people of lfw-dev), measures it on
held-out synthetic identities (vertex error, mm) and the held-out lfw-dev people (landmark NME beside the
mean face and the per-photo fit), and writes OUT/regressor.pt (float16, atomic), OUT/metrics.json and
OUT/README.md. Landmark caches and rendered synthetic sets are kept under --work, so a rerun only trains.
Seeded: the same command gives the same file (on one device). Exit code 0 on success, 2 for bad input.

Training runs on --device (auto = cuda when available); the synthetic faces are rendered on the CPU (numba),
by --synth-workers processes. The aligned real crops are cached as WORK/crops_{att,lfw-dev}_{size}.npz, so a
machine without dlib or the images (a GPU machine) needs only that folder. --time-budget SECONDS ends the
training loop cleanly (the cosine decay then follows the budget) and the asset records steps_done.
GPU recipe (one H200, about 3 minutes; make WORK's crops here first with the same --size):
  lh2face regressor --device cuda --size 48 --width 32 --steps 40000 --batch-size 128 --lr 1e-3
    --synth-identities 2000 --synth-images 4 --synth-workers 12 --fit-photos 0 --time-budget 150 --overwrite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import USER_ERRORS, add_threads_argument, user_error

NAME = "regressor"
HELP = "train the pretrained reconstruction regressor (synthetic + AT&T + lfw-dev) into assets/regressor/"


def _default_data(name: str) -> str:
    from lh2face.paths import assets_dir

    for cand in (assets_dir() / name, assets_dir().parent.parent / "shared" / "data" / name,
                 Path("../shared/data") / name):
        if cand.is_dir():
            return str(cand)
    return str(Path("../shared/data") / name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recon.pretrain import PretrainConfig

    d = PretrainConfig()
    parser.add_argument("--out", default=None, help="output folder (default: the bundled assets/regressor)")
    parser.add_argument("--work", default="runs/regressor_work",
                        help="cache folder for landmark caches and rendered synthetic faces")
    parser.add_argument("--att", default=None, help="AT&T ImageFolder (default assets/att_faces)")
    parser.add_argument("--lfw", default=None, help="lfw-dev ImageFolder (default ../shared/data/lfw-dev)")
    parser.add_argument("--lfw-train-people", type=int, default=d.lfw_train_people,
                        help="the first N lfw-dev people (sorted) train, the rest are held out")
    parser.add_argument("--size", type=int, default=d.size, help="input size of the regressor in pixels")
    parser.add_argument("--width", type=int, default=d.width, help="channels of the regressor's first stage")
    parser.add_argument("--trunk", choices=("pooled", "landmarks"), default=d.trunk,
                        help="regressor trunk: 'landmarks' predicts 68 landmark heat maps (soft-argmax) that the "
                             "coefficient head reads; 'pooled' regresses from pooled features")
    parser.add_argument("--trunk-landmark-weight", type=float, default=d.trunk_landmark_weight,
                        help="weight of the landmark trunk's direct landmark loss")
    parser.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (cosine decay to 5 %%)")
    parser.add_argument("--synth-identities", type=int, default=d.synth_identities)
    parser.add_argument("--synth-images", type=int, default=d.synth_images, help="images per synthetic identity")
    parser.add_argument("--synth-workers", type=int, default=0,
                        help="processes rendering the synthetic faces (CPU, numba; 0 = this process)")
    parser.add_argument("--eval-identities", type=int, default=d.eval_identities,
                        help="held-out synthetic identities (another seed) for the vertex error")
    parser.add_argument("--fit-photos", type=int, default=d.fit_photos,
                        help="held-out lfw-dev crops also fitted per photo, for the NME comparison (0 = none)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default="auto", help="where to train: cuda, cpu or auto (cuda when available)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="stop training cleanly after this many seconds (fewer steps; the asset is still written "
                             "and its metrics say how many steps ran)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/regressor.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from recon.pretrain import PretrainConfig, pretrain_regressor, write_asset
    from recon.regressor import default_regressor_path

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        print(f"error: --device {args.device}: use cuda, cpu or auto", file=sys.stderr)
        return 2
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    if args.time_budget is not None and args.time_budget <= 0:
        print(f"error: --time-budget {args.time_budget}: must be > 0 seconds", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else default_regressor_path().parent
    if (out / "regressor.pt").exists() and not args.overwrite:
        print(f"error: {out / 'regressor.pt'} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    cfg = PretrainConfig(size=args.size, width=args.width, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         synth_identities=args.synth_identities, synth_images=args.synth_images,
                         eval_identities=args.eval_identities, lfw_train_people=args.lfw_train_people,
                         fit_photos=args.fit_photos, seed=args.seed, time_budget=args.time_budget,
                         synth_workers=max(0, args.synth_workers), trunk=args.trunk,
                         trunk_landmark_weight=args.trunk_landmark_weight)
    command = (f"nice lh2face regressor --threads {args.threads or 'N'} --size {cfg.size} --width {cfg.width} "
               f"--trunk {cfg.trunk} --trunk-landmark-weight {cfg.trunk_landmark_weight:g} "
               f"--steps {cfg.steps} --batch-size {cfg.batch_size} --lr {cfg.lr:g} --synth-identities "
               f"{cfg.synth_identities} --synth-images {cfg.synth_images} --eval-identities {cfg.eval_identities} "
               f"--lfw-train-people {cfg.lfw_train_people} --fit-photos {cfg.fit_photos} --seed {cfg.seed} "
               f"--device {device}" + (f" --time-budget {cfg.time_budget:g}" if cfg.time_budget else ""))
    try:
        reg, metrics = pretrain_regressor(args.att or _default_data("att_faces"), args.lfw or _default_data("lfw-dev"),
                                          args.work, cfg, progress=not args.quiet, device=device)
        write_asset(reg, metrics, out, command)
    except USER_ERRORS as exc:
        return user_error(exc)
    print(f"vertex error {metrics['vertex_error_mm']:.2f} mm (mean face {metrics['vertex_error_mm_mean_face']:.2f}) on "
          f"{metrics['synth_eval_images']} held-out synthetic faces; landmark NME {metrics['nme']:.4f} (mean frontal "
          f"face {metrics['nme_mean_frontal_face']:.4f}"
          + (f", per-photo fit {metrics['nme_fit']:.4f} on {metrics['fit_photos']}" if "nme_fit" in metrics else "")
          + f") on {metrics['heldout_real_crops']} held-out lfw-dev crops; wrote {out / 'regressor.pt'}")
    print(summary_line(metrics))
    return 0


def summary_line(m: dict) -> str:
    """One line: steps done, seconds, held-out vertex error (regressor vs mean face), NME (metrics.json keys)."""
    budget = " (stopped by --time-budget)" if m.get("stopped_by_time_budget") else ""
    return (f"regressor summary: {m['steps_done']}/{m['config']['steps']} steps{budget} in {m['steps_seconds']:.1f} s "
            f"on {m['device']} (+{m['data_seconds']:.1f} s data); vertex error {m['vertex_error_mm']:.3f} mm vs mean "
            f"face {m['vertex_error_mm_mean_face']:.3f} mm; NME {m['nme']:.4f} vs mean face "
            f"{m['nme_mean_frontal_face']:.4f}")
