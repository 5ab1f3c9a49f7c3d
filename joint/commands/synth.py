"""`lh2face synth --identities N --images K --out DIR`: render synthetic identities into an ImageFolder.

Writes DIR/id<identity>/<k>.png, DIR/annotations.npz (labels, identities, ground-truth coefficients,
68 landmarks in pixels) and DIR/meta.json. Resumable: running the same command again renders only
what is missing. Use --identity-offset to make a disjoint split (e.g. verification identities after the
training ones). Exit code 0 on success, 2 for bad arguments or a folder that holds something else.
"""

from __future__ import annotations

import argparse
import sys
import time

from ._common import add_threads_argument

NAME = "synth"
HELP = "render synthetic 3DMM identities (images + ground-truth coefficients/landmarks) into an ImageFolder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--identities", type=int, required=True, help="number of identities N")
    parser.add_argument("--images", type=int, required=True, help="images per identity K")
    parser.add_argument("--out", required=True, help="output folder (ImageFolder layout)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--identity-offset", type=int, default=0,
                        help="first global identity (splits by identity: train 0..N-1, eval N..)")
    parser.add_argument("--image-size", type=int, default=112, help="crop size in pixels (default 112)")
    parser.add_argument("--backgrounds", nargs="*", default=None,
                        help="image files / folders whose random crops are used as backgrounds")
    parser.add_argument("--backend", default="auto", help="renderer backend (auto, torch, pytorch3d)")
    parser.add_argument("--chunk-size", type=int, default=16, help="images rendered per renderer call")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="re-render a folder holding another data set")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from recon.synth import SyntheticFaces, cache_to_folder

    backgrounds = None
    if args.backgrounds:
        from recon.photos import list_images

        try:
            backgrounds = list_images(args.backgrounds)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not backgrounds:
            print(f"error: no images found in {' '.join(args.backgrounds)}", file=sys.stderr)
            return 2
    try:
        ds = SyntheticFaces(args.identities, args.images, seed=args.seed, identity_offset=args.identity_offset,
                            image_size=args.image_size, background_images=backgrounds, backend=args.backend)
        t0 = time.perf_counter()
        out = cache_to_folder(ds, args.out, chunk_size=args.chunk_size, num_workers=args.workers,
                              overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(f"{len(ds)} images of {ds.num_identities} identities in {out} ({dt:.1f} s)")
    return 0
