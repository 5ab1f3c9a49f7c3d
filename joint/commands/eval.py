"""`lh2face eval`: verification of a trained model.

    lh2face eval --model RUN_DIR_OR_CKPT --folder DIR          # all pairs among held-out identities
    lh2face eval --model RUN --bin lfw.bin                     # insightface verification .bin
    lh2face eval --model RUN --lfw-pairs pairs.txt --lfw-root DIR
    lh2face eval ijb --model RUN --root IJB --target IJBC      # IJB-B/C 1:1 (recognition.eval.ijb)

Prints accuracy (10-fold) and TAR@FAR; `--out DIR` also writes result.json and roc.png.
Exit codes: 0 done, 2 bad arguments / unreadable model or data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._run_regressor import add_run_argument, load_run_argument

NAME = "eval"
HELP = "evaluate a trained model: held-out folder, verification .bin, LFW pairs, or IJB-B/C"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("protocol", nargs="?", default="verify", choices=["verify", "ijb"],
                        help="verify (default: --folder / --bin / --lfw-pairs) or ijb")
    add_run_argument(parser)
    parser.add_argument("--folder", help="ImageFolder of identities to verify (all pairs, capped by --max-pairs)")
    parser.add_argument("--bin", help="insightface verification .bin")
    parser.add_argument("--lfw-pairs", help="LFW pairs.txt")
    parser.add_argument("--lfw-root", help="LFW image folder (one folder per person)")
    parser.add_argument("--lfw-ext", default="jpg", help="LFW image extension")
    parser.add_argument("--root", help="ijb: IJB folder holding meta/ and loose_crop/")
    parser.add_argument("--target", default="IJBC", help="ijb: IJBB or IJBC")
    parser.add_argument("--max-pairs", type=int, default=20000)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-flip", action="store_true", help="no flip-test")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="folder for result.json and roc.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from lh2face.io import write_json_atomic

    from joint.evaluation import format_result

    loaded = load_run_argument(args.model, args.device)
    if loaded is None:
        return 2
    model, cfg, ckpt, device = loaded
    size = cfg.data.image_size

    def embed_fn(x: torch.Tensor) -> torch.Tensor:
        return model.embed(x.to(device)).float()

    if args.protocol == "ijb":
        if not args.root:
            print("error: ijb needs --root (the IJB folder with meta/ and loose_crop/)", file=sys.stderr)
            return 2
        from recognition.eval.ijb import evaluate_ijb

        try:
            with torch.no_grad():
                res = evaluate_ijb(args.root, args.target, embed_fn, batch_size=args.batch_size,
                                   use_flip_test=not args.no_flip, out_dir=args.out, name=Path(str(ckpt)).stem,
                                   device=device)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: ijb: {exc}", file=sys.stderr)
            return 2
        print(res.get("table", ""))
        return 0

    from recognition.eval.features import extract_embeddings
    from recognition.eval.verification import evaluate_pairs

    from joint.evaluation import verification_summary

    try:
        target = _target(args, size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if target is None:
        return 2
    name, images, (i1, i2, same) = target.name, target.images, target.pairs
    with torch.no_grad():
        emb = torch.as_tensor(extract_embeddings(embed_fn, images, batch_size=args.batch_size,
                                                 flip=not args.no_flip, progress=not args.quiet,
                                                 desc=f"embed {name}"))
    res = evaluate_pairs(emb[i1], emb[i2], same.numpy().astype(bool), n_folds=args.folds)
    out = verification_summary(emb, torch.as_tensor(i1), torch.as_tensor(i2), torch.as_tensor(same).bool(), res,
                               args.folds)
    out.update({"checkpoint": str(ckpt), "set": name})
    print(f"{name}: {format_result(out)}")
    if args.out:
        write_json_atomic(Path(args.out) / "result.json", out)
        from recognition.eval.plots import plot_roc

        plot_roc(Path(args.out) / "roc.png", {name: (np.asarray(res["fpr"]), np.asarray(res["tpr"]))})
    return 0


def _target(args: argparse.Namespace, size: int) -> Any:
    """The verification set of --folder / --bin / --lfw-pairs as a joint.evaluation.EvalTarget; None
    (after an error line) when none or an incomplete one is given."""
    import torch

    from joint.evaluation import EvalTarget, load_bin_target, load_lfw_target

    if args.folder:
        from recognition.data import ImageFolderDataset

        from joint.data import make_pairs

        ds = ImageFolderDataset(args.folder, image_size=size, on_error="skip")
        keep = [i for i in range(len(ds)) if ds[i] is not None]
        images = torch.stack([ds[i][0] for i in keep])
        pairs = make_pairs([ds.targets[i] for i in keep], args.max_pairs)
        return EvalTarget(Path(args.folder).name, images, pairs)
    if args.bin:
        return load_bin_target(args.bin, size)
    if args.lfw_pairs:
        if not args.lfw_root:
            print("error: --lfw-pairs needs --lfw-root", file=sys.stderr)
            return None
        return load_lfw_target(args.lfw_pairs, args.lfw_root, size, ext=args.lfw_ext)
    print("error: give --folder, --bin or --lfw-pairs (or the ijb protocol)", file=sys.stderr)
    return None
