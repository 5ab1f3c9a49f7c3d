"""Build the compact bundled ICT face asset (assets/ict-face/) from the shared source npz.

Usage:
    python tools/make_ict_asset.py [--src ../shared/assets/ict-face/ict_face_region.npz]
                                   [--out assets/ict-face] [--albedo-modes 40]

What it writes (each file < 5 MB):
- ict_face_mesh.npz: mean (V,3) float32 cm, triangles, uv, uv_triangles, lm68, jaw contour ids,
  rigid/fitting vertex sets, expr_names, base_albedo (V,3) float32 in [0,1] and
  albedo_basis (K,V) float32: the first K eigenvectors of the cotangent Laplacian
  (generalised problem L phi = lambda M phi with the lumped mass matrix M), scaled to unit RMS over
  vertices, sign fixed so the largest-magnitude entry is positive; eigenvalues in albedo_eigenvalues.
- ict_face_id.npz / ict_face_expr.npz: the identity (100) and expression (53) bases as float16
  after dividing each mode by its max |offset| (per-mode float32 scale kept), stored byte-shuffled
  (high and low bytes as separate uint8 planes) so that zip compression bites.
It prints the measured compaction error in millimetres (used in assets/ict-face/README.md).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

ROOT = Path(__file__).resolve().parents[1]


def quantize_basis(basis: np.ndarray) -> dict[str, np.ndarray]:
    """(M,V,3) float32 -> dict(hi, lo uint8 planes of float16 values, scale (M,) float32)."""
    scale = np.abs(basis).reshape(len(basis), -1).max(axis=1).astype(np.float32)
    scale[scale == 0] = 1.0
    half = (basis / scale[:, None, None]).astype(np.float16)
    bits = half.view(np.uint16)
    return {"hi": (bits >> 8).astype(np.uint8), "lo": (bits & 0xFF).astype(np.uint8), "scale": scale}


def dequantize_basis(hi: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of quantize_basis -> (M,V,3) float32."""
    bits = (hi.astype(np.uint16) << 8) | lo.astype(np.uint16)
    return bits.view(np.float16).astype(np.float32) * scale[:, None, None]


def cotangent_laplacian(verts: np.ndarray, tris: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Positive semi-definite cotangent stiffness matrix L (V,V) and lumped (barycentric) mass (V,)."""
    v = verts.astype(np.float64)
    n = len(v)
    rows, cols, vals = [], [], []
    mass = np.zeros(n)
    for k in range(3):
        i, j, o = tris[:, k], tris[:, (k + 1) % 3], tris[:, (k + 2) % 3]
        a, b = v[i] - v[o], v[j] - v[o]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        cot = (a * b).sum(1) / np.maximum(cross, 1e-12)
        w = 0.5 * cot
        rows += [i, j, i, j]
        cols += [j, i, i, j]
        vals += [-w, -w, w, w]
    e1, e2 = v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]]
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1)
    for k in range(3):
        np.add.at(mass, tris[:, k], area / 3.0)
    lap = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return lap, mass


def laplacian_basis(verts: np.ndarray, tris: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """First k generalised eigenpairs (smoothest first) -> basis (k,V) unit RMS, eigenvalues (k,)."""
    lap, mass = cotangent_laplacian(verts, tris)
    m = sp.diags(mass)
    v0 = np.random.default_rng(0).standard_normal(lap.shape[0])  # fixed ARPACK start: reproducible bytes
    vals, vecs = spla.eigsh(lap, k=k, M=m, sigma=-1e-3, which="LM", v0=v0)
    order = np.argsort(vals)
    vals, vecs = vals[order], vecs[:, order].T
    vecs = vecs / np.sqrt((vecs**2).mean(axis=1, keepdims=True))
    for row in vecs:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    return vecs.astype(np.float32), vals.astype(np.float32)


def base_albedo(verts: np.ndarray, lm68: np.ndarray) -> np.ndarray:
    """Plain skin colour with redder lips and darker brows, smooth falloff (V,3) in [0,1].

    A hand-made prior (no albedo data is bundled): weights fall off with Euclidean distance (cm)
    from the lip and brow landmark polylines of the mean mesh.
    """
    skin = np.array([0.78, 0.58, 0.48])
    lips = np.array([0.70, 0.38, 0.36])
    brow = np.array([0.40, 0.28, 0.22])

    def weight(points: np.ndarray, radius: float) -> np.ndarray:
        seg_a, seg_b = points, np.roll(points, -1, axis=0)
        # distance to a dense resampling of the closed polyline
        t = np.linspace(0, 1, 8, endpoint=False)[None, :, None]
        dense = (seg_a[:, None] * (1 - t) + seg_b[:, None] * t).reshape(-1, 3)
        d = np.sqrt(((verts[:, None, :] - dense[None]) ** 2).sum(-1)).min(1)
        return np.clip(1.0 - d / radius, 0.0, 1.0) ** 2

    mouth = verts[lm68[48:60]]
    inner = verts[lm68[60:68]]
    w_lip = np.maximum(weight(mouth, 0.35), weight(inner, 0.35))
    w_brow = np.maximum(weight(verts[lm68[17:22]], 0.45), weight(verts[lm68[22:27]], 0.45))
    out = skin[None] * (1 - w_lip[:, None]) + lips[None] * w_lip[:, None]
    out = out * (1 - w_brow[:, None]) + brow[None] * w_brow[:, None]
    return np.clip(out, 0, 1).astype(np.float32)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT.parent / "shared/assets/ict-face/ict_face_region.npz"))
    ap.add_argument("--out", default=str(ROOT / "assets/ict-face"))
    ap.add_argument("--albedo-modes", type=int, default=40)
    args = ap.parse_args(argv)
    src = np.load(args.src)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mean = src["mean"].astype(np.float32)
    tris = src["triangles"].astype(np.int32)

    alb, eig = laplacian_basis(mean, tris, args.albedo_modes)
    mesh = {k: src[k] for k in ("triangles", "uv", "uv_triangles", "lm68", "jaw_right", "jaw_left",
                                "jaw_right_ext", "jaw_left_ext", "rigid_verts", "fitting_verts", "expr_names")}
    mesh.update(mean=mean, albedo_basis=alb, albedo_eigenvalues=eig, base_albedo=base_albedo(mean, src["lm68"]))
    files = {"ict_face_mesh.npz": npz_bytes(**mesh)}
    report = {}
    rng = np.random.default_rng(0)
    for name, key in (("id", "id_basis"), ("expr", "expr_basis")):
        basis = src[key].astype(np.float32)
        q = quantize_basis(basis)
        files[f"ict_face_{name}.npz"] = npz_bytes(**q)
        back = dequantize_basis(q["hi"], q["lo"], q["scale"])
        diff = back - basis
        per_mode = np.linalg.norm(diff, axis=-1).max() * 10.0
        if name == "id":
            w = rng.standard_normal((256, len(basis))).astype(np.float32) * 3.0  # 3 sigma faces
        else:
            w = rng.uniform(0, 1, (256, len(basis))).astype(np.float32)
        faces = np.einsum("bm,mvc->bvc", w, diff)
        report[name] = (per_mode, np.linalg.norm(faces, axis=-1).max() * 10.0)
    for fname, data in files.items():
        if len(data) >= 5_000_000:
            raise SystemExit(f"{fname} would be {len(data)} bytes, over the 5 MB limit")
        (out / fname).write_bytes(data)
        print(f"wrote {out / fname} ({len(data) / 1e6:.2f} MB)")
    for name, (mode_err, face_err) in report.items():
        print(f"{name}: max vertex error of one unit mode {mode_err:.5f} mm; "
              f"max over 256 random faces ({'3-sigma normal' if name == 'id' else 'uniform [0,1]'} weights) {face_err:.5f} mm")
    print("albedo eigenvalues:", np.round(eig[:6], 4), "...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
