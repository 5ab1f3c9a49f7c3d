"""`lh2face align PHOTOS... --out DIR`: an aligned ImageFolder with a landmark sidecar, from raw photos.

Detects faces and 68 landmarks (dlib by default, or face_alignment; or reads an `lh2face landmarks`
cache with --landmarks), warps each face to the ArcFace template (--size px, default 112) and writes
DIR/<identity>/<stem>.png, DIR/landmarks.npz (read by `lh2face train` on DIR: the landmark term of
L_reco) and DIR/report.json (failures with the reason). A rerun skips photos already done.
Format and rules: recon.align_photos and lh2face.landmark_sidecar.
Exit code 0 when DIR holds at least one crop, 1 when none could be made, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from ._common import USER_ERRORS, add_threads_argument, user_error

NAME = "align"
HELP = "detect + align photos to the ArcFace template into an ImageFolder with a landmark sidecar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", nargs="*",
                        help="image files and/or folders (DIR/<person>/<file> keeps <person> as identity)")
    parser.add_argument("--out", required=True, help="output folder (the aligned ImageFolder)")
    parser.add_argument("--size", type=int, default=112, help="crop side in pixels (default 112)")
    parser.add_argument("--faces", default="largest", choices=["largest", "all"],
                        help="largest face per photo, or all (crops named <stem>_<k>.png)")
    parser.add_argument("--detector", default="dlib", choices=["dlib", "face_alignment"],
                        help="landmark backend (dlib works offline; face_alignment needs its weights)")
    parser.add_argument("--upsample", type=int, default=1, help="dlib: times the image is doubled before detection")
    parser.add_argument("--device", default="cpu", help="face_alignment: torch device")
    parser.add_argument("--landmarks", metavar="CACHE.npz",
                        help="use this `lh2face landmarks` cache instead of detecting (PHOTOS may then be omitted)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from lh2face.landmark_sidecar import SidecarError
    from recon.align_photos import align_photos

    options = {"upsample": args.upsample} if args.detector == "dlib" else {"device": args.device}
    try:
        report = align_photos(args.photos, args.out, detector=args.detector, size=args.size, faces=args.faces,
                              cache=args.landmarks, detector_options=options, progress=not args.quiet)
    except SidecarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        return user_error(exc)
    for f in report.failed[:20]:
        print(f"  skipped {f['path']}: {f['reason']}", file=sys.stderr)
    if len(report.failed) > 20:
        print(f"  ... and {len(report.failed) - 20} more (all in {args.out}/report.json)", file=sys.stderr)
    print(report.summary_line(args.out))
    return 0 if report.rows_total > 0 else 1
