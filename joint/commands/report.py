"""`lh2face report PHOTOS... --out DIR`: detect, align and fit each photo, then write one static HTML page
(inputs with landmarks, fitted overlays, canonical faces, depth, per-image NME and loss curves, and a list
of skipped files with the reason; the page is recon.report.write_report's). A progress bar counts the
photos; files that fail are named as they fail. Exit code 0 when any photo worked, 1 when none did, 2 for
bad input (no such path, no landmark detector).
"""

from __future__ import annotations

import argparse
import sys

NAME = "report"
HELP = "reconstruct photos (files or folders) and write an HTML report (index.html + images/)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", nargs="+", help="image files and/or folders")
    parser.add_argument("--out", required=True, help="report folder (index.html + images/)")
    parser.add_argument("--detector", default="dlib", help="landmark backend: dlib or face_alignment")
    parser.add_argument("--fit-steps", type=int, default=None, help="Adam steps per fitting stage (0: detect only)")
    parser.add_argument("--image-size", type=int, default=112, help="aligned crop size the model is fitted to")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from recon.photos import list_images, reconstruct_photos
    from recon.report import write_report

    try:
        files = list_images(args.photos)
        results = []
        with tqdm(total=len(files), desc="report", unit="photo", disable=args.quiet, file=sys.stderr) as bar:
            for r in reconstruct_photos(files, detector=args.detector, fit_steps=args.fit_steps,
                                        image_size=args.image_size):
                if not r.ok:
                    bar.write(f"  skipped {r.path}: {r.reason}", file=sys.stderr)
                results.append(r)
                bar.update(1)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    index = write_report(results, args.out)
    n_ok = sum(r.ok for r in results)
    print(f"{n_ok}/{len(results)} photos reconstructed; report: {index}")
    return 0 if n_ok else 1
