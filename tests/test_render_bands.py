"""The numba rasteriser computes each triangle's pixel range inside its row-band loop (no (B,F,4) range
buffer): any split into row bands (thread count) gives the same ids and depths, equal to the vectorised
torch rasteriser's on a face mesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.render import project_vertices
from recon.render.rasterize import rasterize

ICT_NPZ = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets/ict-face/ict_face_mesh.npz"


def test_row_bands_do_not_change_the_raster(monkeypatch):
    pytest.importorskip("numba")
    from recon.render import _numba_kernels as nk

    d = np.load(ICT_NPZ)
    v = torch.tensor(d["mean"], dtype=torch.float64) * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    tris = torch.tensor(d["triangles"].astype(np.int64))
    b, s = 3, 40
    V = v[None].repeat(b, 1, 1)
    V[:, :, 2] += torch.tensor([50.0, 45.0, 60.0], dtype=torch.float64)[:, None]
    V[1, :, 0] += 2.0
    V[2, :7, :] = float("nan")  # triangles touching non-finite vertices are dropped, not drawn
    K = torch.tensor([[2.0 * s, 0, s / 2], [0, 2.0 * s, s / 2], [0, 0, 1]], dtype=torch.float64)
    scr = project_vertices(V, K[None].expand(b, 3, 3))
    monkeypatch.setattr(nk, "_band_rows", lambda nb, h: h)  # one band per face
    f1, z1 = rasterize(scr, tris, (s, s), impl="numba")
    for band in (3, 7):  # bands of 3 / 7 rows (the last one shorter), as the thread pool splits them
        monkeypatch.setattr(nk, "_band_rows", lambda nb, h, band=band: band)
        fb, zb = rasterize(scr, tris, (s, s), impl="numba")
        assert torch.equal(f1, fb) and torch.equal(z1, zb)
    ft, zt = rasterize(scr, tris, (s, s), impl="torch")
    assert (f1 >= 0).float().mean() > 0.2
    assert (f1 == ft).float().mean() > 0.999 and torch.allclose(z1[f1 >= 0], zt[f1 >= 0])
