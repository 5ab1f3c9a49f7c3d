"""`lh2face visualize (--synthetic N | --coeffs FILE | PHOTOS...) --out DIR`: pictures of reconstructions.

Writes DIR/grid.png (one row per face: render | overlay on the input | canonical | depth | normals, with
the 68 landmarks drawn: green = projected from the reconstruction, red = the input's own landmarks) and a
turntable GIF per face (yaw -60..60 degrees). --poses adds DIR/poses_<name>.png: the face in three poses
with its canonical and depth renders (the README pictures). Synthetic faces are shown on their rendered
input image (ground truth: overlay and landmarks must coincide). Photos are detected, aligned and
reconstructed first (fitted, or `--model RUN`: a trained run's regressor, `--refine N` fitting steps from
there), with a progress bar; failures are listed in DIR/report.json. Exit code 0 when at least one face was drawn,
1 when none could be, 2 for bad arguments or existing outputs without --overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ._common import USER_ERRORS, add_threads_argument, user_error
from ._run_regressor import add_model_arguments, add_source_arguments, check_source_arguments, photo_options

NAME = "visualize"
HELP = "grid PNG (render | overlay | canonical | depth | normals) and turntable GIF per face"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "draw", synthetic_help="draw N synthetic faces (one image each)",
                         seed_help="data set seed", out_help="output folder")
    parser.add_argument("--zoom", type=int, default=2, help="panels are 112 x zoom pixels (default 2)")
    parser.add_argument("--frames", type=int, default=24, help="turntable frames (default 24)")
    parser.add_argument("--gif-size", type=int, default=None, help="turntable frame size in pixels (default 112 x zoom)")
    parser.add_argument("--no-gif", action="store_true", help="skip the turntable GIFs")
    parser.add_argument("--poses", action="store_true", help="also write poses_<name>.png (3 poses + canonical + depth)")
    parser.add_argument("--detector", default="dlib", choices=["dlib", "face_alignment"], help="photos: landmarks")
    parser.add_argument("--fit-steps", type=int, default=None, help="photos: fitting iterations per image")
    add_model_arguments(parser)
    parser.add_argument("--backend", default="auto", help="renderer backend (auto, torch, pytorch3d)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing pictures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from lh2face.io import write_json_atomic
    from recon.export import load_coeffs
    from recon.morphable import MorphableModel
    from recon.render import build_renderer
    from recon.visualize import visualize_faces

    bad = check_source_arguments(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    if args.zoom < 1 or args.frames < 2 or (args.gif_size is not None and args.gif_size < 16):
        print("error: --zoom must be >= 1, --frames >= 2 and --gif-size >= 16", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    report = None
    try:
        model = MorphableModel()
        renderer = build_renderer(args.backend)
        inputs = landmarks = None
        if args.synthetic is not None:
            from recon.synth import SyntheticFaces

            ds = SyntheticFaces(args.synthetic, 1, seed=args.seed, identity_offset=args.identity_offset,
                                backend=args.backend)
            batch = ds.render_batch(range(len(ds)))
            coeffs, inputs, landmarks = batch["coeffs"], list(batch["image"]), None
            names = [f"synth_{int(i):06d}" for i in batch["identity"]]
        elif args.coeffs is not None:
            from recon.coeffs import CoeffLayout

            coeffs, names = load_coeffs(args.coeffs, size=CoeffLayout.from_model(model).size)
        else:
            got = _photo_faces(args, model, renderer)
            if isinstance(got, int):
                return got
            coeffs, inputs, landmarks, names, report = got
        paths = visualize_faces(coeffs, args.out, names=names, inputs=inputs, input_landmarks=landmarks,
                                zoom=args.zoom, gif=not args.no_gif, gif_frames=args.frames,
                                gif_size=args.gif_size, poses=args.poses,
                                overwrite=args.overwrite, model=model, renderer=renderer)
    except USER_ERRORS as exc:
        return user_error(exc)
    if report is not None:
        write_json_atomic(f"{args.out}/report.json", report)
    n = len(names)
    dt = time.perf_counter() - t0
    files = [str(p) for ps in paths.values() for p in ps]
    print(f"{n} face(s) drawn in {dt:.1f} s: " + ", ".join(files[:4]) + (" ..." if len(files) > 4 else ""))
    if report is not None:
        from .export import reconstruction_rate

        print(reconstruction_rate(report["seconds"], n, dt))
    return 0


def _photo_faces(args: argparse.Namespace, model: Any, renderer: Any):
    """Reconstruct the photos of args.photos: (coeffs (N,P), aligned crops, landmarks, names, report), or an
    exit code when --out holds a report without --overwrite (2) or no face could be reconstructed (1)."""
    import torch
    from tqdm import tqdm

    from lh2face.io import write_json_atomic
    from recon.photos import list_images, new_photo_report, reconstruct_photos, record_result

    if (Path(args.out) / "report.json").exists() and not args.overwrite:
        print(f"error: {args.out}/report.json exists; pass --overwrite or choose another --out", file=sys.stderr)
        return 2
    files = list_images(args.photos)
    if not files:
        print(f"error: no images found in {' '.join(args.photos)}", file=sys.stderr)
        return 1
    rows, inputs, landmarks, names = [], [], [], []
    report = new_photo_report()
    results = reconstruct_photos(files, detector=args.detector, model=model, renderer=renderer, **photo_options(args))
    for res in tqdm(results, total=len(files), unit="photo", desc="reconstruct", dynamic_ncols=True,
                    disable=args.quiet):
        reason = record_result(report, res)
        if reason:
            tqdm.write(f"  skipped {res.path}: {reason}", file=sys.stderr)
            continue
        rows.append(torch.as_tensor(res.coeffs, dtype=torch.float32).reshape(-1))
        inputs.append(res.aligned)
        landmarks.append(res.landmarks)  # detected landmarks, mapped into the aligned crop
        names.append(res.path.stem if hasattr(res.path, "stem") else str(res.path))
        report["processed"].append({"path": str(res.path)})
    if not rows:
        write_json_atomic(f"{args.out}/report.json", report)
        print(f"error: no face could be reconstructed (see {args.out}/report.json)", file=sys.stderr)
        return 1
    return torch.stack(rows), inputs, landmarks, names, report
