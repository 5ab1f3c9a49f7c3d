"""`lh2face embed --model RUN PHOTOS... --out FILE`: face embeddings of photos with a trained model.

    lh2face embed --model runs/demo photos/ --out emb.npz              # raw photos or aligned crops (auto)
    lh2face embed --model runs/demo crops/ --aligned --flip --out emb.npz
    lh2face embed --model runs/demo a.jpg b.jpg --format npy --out emb  # emb.npy + emb.txt (+ emb.norms.npy)

PHOTOS are files and/or folders (searched recursively for images). Aligned crops (ArcFace template)
are resized to the run's input size; raw photos are detected and aligned to the template first
(landmark detector --detector, dlib by default). Without --aligned / --raw, square images of side 112
or of the run's input size count as aligned crops and all others as raw photos. A 7-channel model
computes the canonical face and depth with the run's regressor.

Output: embeddings (N,d) float32, L2-normalised rows; norms (N,) their norms before normalisation
(a quality signal); paths (N,) in input order. `.npz` (keys embeddings, norms, paths, failed,
failed_reasons, flip, model) or with --format npy: FILE.npy (embeddings), FILE.txt (one path a line),
FILE.norms.npy, FILE.failed.txt (path<TAB>reason). Photos that cannot be used (unreadable, no face)
are listed in the output and on stderr and skipped.
Exit codes: 0 written, 1 no photo could be embedded, 2 bad arguments / model / existing output.
"""

from __future__ import annotations

import argparse
import sys

from ._common import add_threads_argument
from ._run_regressor import add_run_argument, load_run_argument

NAME = "embed"
HELP = "compute face embeddings (and norms) of photos or aligned crops with a trained model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("photos", nargs="+", help="image files and/or folders")
    add_run_argument(parser)
    parser.add_argument("--out", "-o", required=True, help="output file (.npz, or the stem for --format npy)")
    parser.add_argument("--format", choices=["npz", "npy"], default=None,
                        help="npz (default) or npy (.npy + .txt + .norms.npy + .failed.txt); "
                             "default: npy when --out ends with .npy, else npz")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--aligned", action="store_true", help="every image is an aligned crop (no detection)")
    mode.add_argument("--raw", action="store_true", help="every image is a raw photo (detect + align)")
    parser.add_argument("--detector", default="dlib", choices=["dlib", "face_alignment"],
                        help="landmark detector for raw photos")
    parser.add_argument("--flip", action="store_true", help="flip-test: e(x) + e(mirror(x))")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from joint.embed import NoUsablePhotos, embed_photos, output_paths, save_embeddings
    from recon.landmarks import DetectorUnavailable
    from recon.photos import list_images

    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    fmt = args.format or ("npy" if str(args.out).lower().endswith(".npy") else "npz")
    targets = output_paths(args.out, fmt)
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(existing)} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if any(p.is_dir() for p in targets):
        print(f"error: --out {args.out} is a folder; give a file name such as emb.npz", file=sys.stderr)
        return 2
    files = list_images(args.photos, missing="keep")
    if not files:
        print(f"error: no images found in {' '.join(args.photos)}", file=sys.stderr)
        return 2
    loaded = load_run_argument(args.model, args.device)
    if loaded is None:
        return 2
    model, cfg, ckpt, device = loaded
    aligned = True if args.aligned else (False if args.raw else None)
    try:
        result = embed_photos(model, files, cfg.data.image_size, aligned=aligned, flip=args.flip,
                              batch_size=args.batch_size, device=device, detector=args.detector,
                              progress=not args.quiet)
    except DetectorUnavailable as exc:
        print(f"error: raw photos need a landmark detector: {exc} (or pass --aligned for aligned crops)",
              file=sys.stderr)
        return 2
    except NoUsablePhotos as exc:
        for path, reason in exc.failed:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path, reason in result.failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    written = save_embeddings(result, args.out, fmt, source=str(ckpt))
    n, d = result.embeddings.shape
    print(f"embedded {n} of {n + len(result.failed)} photos (d={d}, flip={'on' if args.flip else 'off'}, "
          f"model {ckpt}); {len(result.failed)} skipped -> {', '.join(map(str, written))}")
    return 0
