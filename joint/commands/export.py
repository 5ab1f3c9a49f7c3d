"""`lh2face export (--coeffs FILE | --synthetic N | PHOTOS...) --out DIR`: canonical face, depth, meshes.

Per face a folder DIR/<name>/ with canonical.png, depth.png (16-bit), depth.npy (float32), mesh.obj and
mesh.ply (vertex colours) and coeffs.json (see recon.export). Photos (files or folders) are detected,
aligned and reconstructed first (fitted per photo, or with `--model RUN` one forward pass of a trained
run's regressor, `--refine N` fitting steps from there); unreadable files and images without a face are
listed with the reason in DIR/report.json and skipped. The summary line gives faces per second of the
reconstruction itself (detection excluded) and of the whole command. Existing face folders are never replaced without --overwrite.
Exit code 0 when at least one face was exported, 1 when none could be, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time

from ._common import USER_ERRORS, add_threads_argument, user_error
from ._run_regressor import add_model_arguments, add_source_arguments, check_source_arguments, photo_options

NAME = "export"
HELP = "export canonical render, 16-bit depth, OBJ/PLY mesh and coefficients per face"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "export", synthetic_help="export N random synthetic identities",
                         seed_help="seed of the identities", out_help="output folder (one sub-folder per face)")
    parser.add_argument("--neutral-mesh", action="store_true",
                        help="export the neutral (identity-only) mesh instead of identity + expression")
    parser.add_argument("--detector", default="dlib", choices=["dlib", "face_alignment"],
                        help="photos: landmark backend")
    parser.add_argument("--fit-steps", type=int, default=None, help="photos: fitting iterations per image")
    add_model_arguments(parser)
    parser.add_argument("--backend", default="auto", help="renderer backend (auto, torch, pytorch3d)")
    parser.add_argument("--batch-size", type=int, default=16, help="faces rendered per call")
    parser.add_argument("--overwrite", action="store_true", help="replace existing face folders")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from recon.export import export_coefficients, export_photos, load_coeffs, \
        synthetic_identities
    from recon.morphable import MorphableModel

    bad = check_source_arguments(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        if args.photos:
            report = export_photos(args.photos, args.out, overwrite=args.overwrite, detector=args.detector,
                                   backend=args.backend, progress=not args.quiet, **photo_options(args))
            n_ok, n_bad = len(report["processed"]), len(report["skipped"])
            dt = time.perf_counter() - t0
            print(f"exported {n_ok} face(s), skipped {n_bad} (see {args.out}/report.json) in {dt:.1f} s; "
                  + reconstruction_rate(report.get("seconds", {}), n_ok, dt))
            return 0 if n_ok > 0 else 1
        model = MorphableModel()
        if args.synthetic is not None:
            coeffs = synthetic_identities(model, args.synthetic, seed=args.seed, identity_offset=args.identity_offset)
            names = [f"synth_{args.identity_offset + i:06d}" for i in range(args.synthetic)]
            sources = [f"synthetic seed={args.seed} identity={args.identity_offset + i}" for i in range(args.synthetic)]
        else:
            from recon.coeffs import CoeffLayout

            coeffs, names = load_coeffs(args.coeffs, size=CoeffLayout.from_model(model).size)
            sources = [str(args.coeffs)] * len(names)
        folders = export_coefficients(coeffs, args.out, names=names, overwrite=args.overwrite, model=model,
                                      backend=args.backend, batch_size=args.batch_size, sources=sources,
                                      neutral_mesh=args.neutral_mesh, progress=not args.quiet)
    except USER_ERRORS as exc:
        return user_error(exc)
    dt = time.perf_counter() - t0
    print(f"exported {len(folders)} face(s) to {args.out} in {dt:.2f} s ({len(folders) / dt:.1f} faces/s)")
    return 0 if folders else 1


def reconstruction_rate(seconds: dict, n_faces: int, total: float) -> str:
    """'<path>: X faces/s (Y ms/face), Z faces/s overall' from summed per-step seconds."""
    rec = float(seconds.get("regress", 0.0)) + float(seconds.get("fit", 0.0))
    path = "+".join(k for k in ("regress", "fit") if k in seconds) or "none"
    if n_faces <= 0 or rec <= 0:
        return f"reconstruction ({path}): no face"
    return (f"reconstruction ({path}): {n_faces / rec:.2f} faces/s ({1000 * rec / n_faces:.1f} ms/face), "
            f"{n_faces / total:.2f} faces/s overall")
