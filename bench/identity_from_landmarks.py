"""How much identity shape the 68 landmarks carry: a linear (ridge) read-out of the identity coefficients
from ground-truth 2D landmarks of synthetic faces, scored by the held-out vertex error (mm) against the
mean face. The upper bound that motivated the regressor's landmark trunk (docs/RECON.md).

    python bench/identity_from_landmarks.py --identities 4000 --threads 2

Synthetic faces: recon.synth, one image per identity, 64 px, pose +-40/20/12 degrees (the regressor's
training range); the last 20 % of the identities are held out. Landmarks are centred and divided by their
RMS radius (recon.regressor.normalised_landmarks), so the read-out sees shape, not position or size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ridges", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from recon.coeffs import CoeffLayout
    from recon.losses import vertex_error_mm
    from recon.morphable import MorphableModel
    from recon.pretrain import synth_options, synthetic_arrays
    from recon.regressor import normalised_landmarks
    from recon.synth import SyntheticFaces

    model = MorphableModel()
    layout = CoeffLayout.from_model(model)
    ds = SyntheticFaces(args.identities, 1, seed=args.seed, image_size=64, options=synth_options((40, 20, 12)))
    arr = synthetic_arrays(ds, None, progress=True, workers=args.threads)
    X = normalised_landmarks(torch.from_numpy(arr["landmarks"]).double() / 64.0)[:, :136]
    X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    Y = torch.from_numpy(arr["coeffs"]).double()[:, layout.slices["id"]]
    n_train = int(0.8 * len(X))
    gt = Y[n_train:].float()
    mean_face = float(vertex_error_mm(model.shape(torch.zeros_like(gt), None), model.shape(gt, None)).mean())
    print(f"{args.identities} synthetic identities, {len(X) - n_train} held out; mean face {mean_face:.3f} mm")
    for lam in args.ridges:
        A = X[:n_train]
        W = torch.linalg.solve(A.T @ A + lam * torch.eye(A.shape[1], dtype=A.dtype), A.T @ Y[:n_train])
        pred = (X[n_train:] @ W).float()
        err = float(vertex_error_mm(model.shape(pred, None), model.shape(gt, None)).mean())
        print(f"ridge {lam:g}: identity from ground-truth landmarks {err:.3f} mm (mean face {mean_face:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
