"""`lh2face landmarks PHOTOS... --out cache.npz`: detect faces and 68 landmarks once, into a cache file.

The cache (format: recon.landmarks.cache) feeds regressor training on real photos
(recon.fitting.train_regressor) and per-image fitting. Exit code 0 when at least one face was
found, 1 when none was (or no image was given), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "landmarks"
HELP = "detect faces + 68 iBUG landmarks in photos (files or folders) into a .npz cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="cache file to write (.npz)")
    parser.add_argument("--detector", default="dlib", choices=["dlib", "face_alignment"],
                        help="landmark backend (dlib works offline; face_alignment needs its weights)")
    parser.add_argument("--upsample", type=int, default=1, help="dlib: times the image is doubled before detection")
    parser.add_argument("--device", default="cpu", help="face_alignment: torch device")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache file")
    parser.add_argument("--quiet", action="store_true", help="only print the summary")


def run(args: argparse.Namespace) -> int:
    from recon.landmarks import DetectorUnavailable, build_detector
    from recon.landmarks.cache import build_cache
    from recon.photos import list_images

    out = Path(args.out)
    if out.suffix != ".npz":
        print(f"error: --out {out}: the cache is a numpy archive, give a .npz file name", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        paths = list_images(args.photos)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print(f"error: no images found in {' '.join(args.photos)}", file=sys.stderr)
        return 1
    options = {"upsample": args.upsample} if args.detector == "dlib" else {"device": args.device}
    try:
        detector = build_detector(args.detector, **options)
    except DetectorUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(k: int, path: Path, status: str) -> None:
        if not args.quiet and status != "ok":
            print(f"  skipped {path}: {status}", file=sys.stderr)

    cache = build_cache(paths, detector, detector_name=args.detector, progress=progress)
    cache.save(out)
    found = int(cache.ok.sum())
    print(f"{found}/{len(cache)} images with a face (rate {cache.detection_rate:.3f}), "
          f"{cache.seconds_per_image * 1000:.1f} ms per image, wrote {out}")
    return 0 if found > 0 else 1
