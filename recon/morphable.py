"""The bundled 3D morphable model (ICT face model, face region) as a torch module.

Units and axes (model space): centimetres; +x to the viewer's right, +y up, +z towards the viewer
(the face looks along +z). Origin: the ICT model's origin (inside the head, 13 cm behind the nose tip, about level with it).

    shape(id, expr)  = mean + sum_k id_k * id_basis_k + sum_j expr_j * expr_basis_j      (B,V,3) cm
    albedo(alb)      = clamp(base_albedo + sum_k alb[k, c] * sigma_k * albedo_basis_k, 0, 1)   (B,V,3)

Identity weights are ~N(0,1) (modes pre-scaled by their std), expression weights are ARKit blendshape
activations in [0,1], albedo weights ~N(0,1) per mode and colour channel with per-mode std sigma_k (below).
Channels are independent (R, G, B), so N(0,1) draws on mode 0 also vary the hue: samplers that want
natural skin should set mode 0 from a skin tone (mode 0 is the constant: it adds alb[0,c] * sigma_0 to
channel c everywhere) and keep the other modes small (recon.synth does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from lh2face.paths import asset

from .render.base import full_precision_call
from .render.vertex import vertex_normals

# Std of the smooth albedo modes for unit albedo weights: mode 0 (constant) changes the skin tone,
# higher (less smooth) modes get less amplitude (1/sqrt(1+k) decay).
ALBEDO_TONE_STD = 0.08
ALBEDO_DETAIL_STD = 0.025
# Colours of the closed openings (render only): eyes dark (iris/lashes at 112 px), mouth interior dark red.
EYE_COLOUR = (0.16, 0.12, 0.11)
MOUTH_COLOUR = (0.30, 0.10, 0.10)


def _load_basis(path: Path, n: int | None) -> np.ndarray:
    with np.load(path) as z:
        hi, lo, scale = z["hi"], z["lo"], z["scale"]
    if n is not None:
        hi, lo, scale = hi[:n], lo[:n], scale[:n]
    bits = (hi.astype(np.uint16) << 8) | lo.astype(np.uint16)
    return bits.view(np.float16).astype(np.float32) * scale[:, None, None]


class MorphableModel(nn.Module):
    """ICT face model (face region): 9,409 vertices, 18,460 triangles, buffers only (no parameters).

    Args:
        n_id: identity modes kept (<= 100, leading modes).
        n_expr: expression blendshapes kept (<= 53, in ARKit order of `expr_names`).
        n_albedo: smooth albedo modes per colour channel (<= 40).
        root: folder holding the ict_face_*.npz files (default: the bundled assets/ict-face).

    Attributes: n_id, n_expr, n_albedo, n_vertices, expr_names (list[str]); buffers mean (V,3),
    id_basis (n_id,V,3), expr_basis (n_expr,V,3), triangles (F,3) long, lm68 (68,) long,
    jaw_right (8,) / jaw_left (8,) long (alternative contour vertices for iBUG points 0-7 / 9-16),
    jaw_right_ext / jaw_left_ext (17,) long, base_albedo (V,3), albedo_basis (n_albedo,V) (already
    multiplied by the per-mode std), uv (U,2), uv_triangles (F,3) long; for rendering,
    fill_triangles / hole_weights / hole_colours (see fill_holes).
    """

    def __init__(self, n_id: int = 100, n_expr: int = 53, n_albedo: int = 20, root: str | Path | None = None):
        super().__init__()
        root = Path(root) if root is not None else asset("ict-face")
        mesh_path = root / "ict_face_mesh.npz"
        if not mesh_path.exists():
            raise FileNotFoundError(f"ICT mesh file {mesh_path} is missing; rebuild it with tools/make_ict_asset.py")
        with np.load(mesh_path) as z:
            mesh = {k: z[k] for k in z.files}
        max_alb = mesh["albedo_basis"].shape[0]
        for name, val, hi in (("n_id", n_id, 100), ("n_expr", n_expr, 53), ("n_albedo", n_albedo, max_alb)):
            if not isinstance(val, int) or not 0 <= val <= hi:
                raise ValueError(f"{name} must be an int in [0, {hi}], got {val!r}")
        self.n_id, self.n_expr, self.n_albedo = n_id, n_expr, n_albedo
        self.expr_names = [str(s) for s in mesh["expr_names"][:n_expr]]
        self.n_vertices = int(mesh["mean"].shape[0])
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        i64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        self.register_buffer("mean", f32(mesh["mean"]))
        self.register_buffer("id_basis", f32(_load_basis(root / "ict_face_id.npz", n_id)))
        self.register_buffer("expr_basis", f32(_load_basis(root / "ict_face_expr.npz", n_expr)))
        self.register_buffer("triangles", i64(mesh["triangles"]))
        self.register_buffer("uv", f32(mesh["uv"]))
        self.register_buffer("uv_triangles", i64(mesh["uv_triangles"]))
        for k in ("lm68", "jaw_right", "jaw_left", "jaw_right_ext", "jaw_left_ext", "rigid_verts", "fitting_verts"):
            self.register_buffer(k, i64(mesh[k]))
        self.register_buffer("base_albedo", f32(mesh["base_albedo"]))
        k = np.arange(n_albedo)
        std = np.where(k == 0, ALBEDO_TONE_STD, ALBEDO_DETAIL_STD / np.sqrt(1.0 + k))
        self.register_buffer("albedo_basis", f32(mesh["albedo_basis"][:n_albedo] * std[:, None]))
        self._init_hole_fill(mesh)
        self.register_buffer("contour_candidates", torch.from_numpy(self._contour_candidates(mesh)))

    @staticmethod
    def _contour_candidates(mesh: dict, band: float = 0.35, max_candidates: int = 48) -> np.ndarray:
        """(2,8,C) vertex ids: for each jaw landmark 0-7 (side 0) and 9-16 (side 1), the mean-mesh vertices
        of a horizontal band (|y - y_k| < band cm) on that side, outside the nose (|x| >= min(2 cm, |x_k|))
        and in front of the posterior contour (z >= its z - 0.5 cm): where the silhouette can be under yaw.
        Padded by repeating the landmark's own vertex (C = max_candidates, nearest in y kept first)."""
        v, lm = mesh["mean"], mesh["lm68"]
        out = np.zeros((2, 8, max_candidates), np.int64)
        for side, (ids, alt, sign) in enumerate(((range(0, 8), mesh["jaw_right"], -1.0), (range(9, 17), mesh["jaw_left"], 1.0))):
            for j, (k, a) in enumerate(zip(ids, alt)):
                xk, yk, zk = v[lm[k]]
                zmin = min(zk, v[a, 2]) - 0.5
                ok = (np.abs(v[:, 1] - yk) < band) & (sign * v[:, 0] >= min(2.0, abs(xk))) & (v[:, 2] >= zmin)
                cand = np.flatnonzero(ok)
                cand = cand[np.argsort(np.abs(v[cand, 1] - yk), kind="stable")][:max_candidates]
                row = np.full(max_candidates, lm[k], np.int64)
                row[: len(cand)] = cand
                out[side, j] = row
        return out

    # ------------------------------------------------------------------------------- hole filling
    def _init_hole_fill(self, mesh: dict) -> None:
        """Find the eye and mouth openings (boundary loops other than the outer border) and build a
        fan of triangles around one extra centre vertex per opening, for rendering only."""
        tris = mesh["triangles"].astype(np.int64)
        edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
        key = np.sort(edges, 1)
        _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        boundary = edges[counts[inv.reshape(-1)] == 1]
        nxt = dict(zip(boundary[:, 0].tolist(), boundary[:, 1].tolist()))
        loops, seen = [], set()
        for a in nxt:
            if a in seen:
                continue
            loop, b = [a], nxt[a]
            seen.add(a)
            while b != a:
                loop.append(b)
                seen.add(b)
                b = nxt[b]
            loops.append(loop)
        loops.sort(key=len)
        loops = loops[:-1]  # the longest loop is the outer border of the face region
        V = self.n_vertices
        weights = np.zeros((len(loops), V), np.float32)
        fill, colours = [], []
        mouth_centre = mesh["mean"][mesh["lm68"][60:68]].mean(0)
        for h, loop in enumerate(loops):
            weights[h, loop] = 1.0 / len(loop)
            # boundary edges run (a -> b) inside their triangle; the fan uses (b, a, centre)
            fill += [(b, a, V + h) for a, b in zip(loop, loop[1:] + loop[:1])]
            centre = mesh["mean"][loop].mean(0)
            is_mouth = np.linalg.norm(centre - mouth_centre) < 1.5
            colours.append(MOUTH_COLOUR if is_mouth else EYE_COLOUR)
        self.register_buffer("hole_weights", torch.from_numpy(weights))
        # the same weights as (opening, vertex, weight) triples: fill_holes gathers only these ~160 vertices
        h, v = np.nonzero(weights)
        self.register_buffer("_hole_ids", torch.from_numpy(h.astype(np.int64)), persistent=False)
        self.register_buffer("_hole_verts", torch.from_numpy(v.astype(np.int64)), persistent=False)
        self.register_buffer("_hole_vert_weights", torch.from_numpy(weights[h, v]), persistent=False)
        self.register_buffer("fill_triangles", torch.tensor(fill, dtype=torch.int64).reshape(-1, 3))
        self.register_buffer("hole_colours", torch.tensor(colours, dtype=torch.float32).reshape(-1, 3))

    @full_precision_call
    def fill_holes(self, verts: torch.Tensor, attributes: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Close the eye and mouth openings for rendering.

        verts (B,V,3) (any space), attributes (B,V,C) or None -> verts (B,V+H,3) with one centre vertex
        per opening (the mean of its boundary loop: hole_weights (H,V) @ verts, computed as a gather of the
        ~160 boundary vertices, 15x faster than the dense product on CPU), triangles (F+F_fill,3),
        attributes (B,V+H,C) where the centres get the fixed eye / mouth-interior colours when C = 3 and
        zeros otherwise. The landmarks, normals and the model's `triangles` are unaffected. Runs in
        float32 under autocast (recon.render.base.full_precision_call).
        """
        self._check_verts(verts)
        n_holes = self.hole_weights.shape[0]
        w = self._hole_vert_weights.to(verts)[:, None]
        gathered = verts[:, self._hole_verts] * w  # (B,N,3) boundary vertices times their weights
        centres = verts.new_zeros(verts.shape[0], n_holes, 3).index_add(1, self._hole_ids, gathered)
        v = torch.cat([verts, centres], 1)
        tris = torch.cat([self.triangles, self.fill_triangles], 0)
        if attributes is None:
            return v, tris, None
        if attributes.shape[-1] == 3:
            extra = self.hole_colours.to(attributes).expand(attributes.shape[0], -1, -1)
        else:
            extra = attributes.new_zeros(attributes.shape[0], n_holes, attributes.shape[-1])
        return v, tris, torch.cat([attributes, extra], 1)

    # ----------------------------------------------------------------------------------------- shape
    def shape(self, id: torch.Tensor | None = None, expr: torch.Tensor | None = None) -> torch.Tensor:
        """id (B,n_id) ~N(0,1), expr (B,n_expr) in [0,1] (either may be None = zeros) -> (B,V,3) cm, model space."""
        B = self._batch(id, expr)
        out = self.mean.expand(B, -1, -1)
        if id is not None and self.n_id:
            self._check(id, self.n_id, "id")
            out = out + torch.einsum("bk,kvc->bvc", id.to(self.mean), self.id_basis)
        if expr is not None and self.n_expr:
            self._check(expr, self.n_expr, "expr")
            out = out + torch.einsum("bk,kvc->bvc", expr.to(self.mean), self.expr_basis)
        return out

    def albedo(self, alb: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        """alb (B,n_albedo,3) or (B,3*n_albedo) (channel-minor: [k*3+c]) ~N(0,1) -> (B,V,3) albedo in [0,1]."""
        if alb is None:
            return self.base_albedo.expand(batch or 1, -1, -1)
        if alb.dim() == 2:
            if alb.shape[1] != 3 * self.n_albedo:
                raise ValueError(f"albedo coefficients must be (B,{self.n_albedo},3) or (B,{3 * self.n_albedo}), "
                                 f"got {tuple(alb.shape)}")
            alb = alb.reshape(alb.shape[0], self.n_albedo, 3)
        if alb.dim() != 3 or alb.shape[1:] != (self.n_albedo, 3):
            raise ValueError(f"albedo coefficients must be (B,{self.n_albedo},3), got {tuple(alb.shape)}")
        # one (3B,K) @ (K,V) product: the sum of einsum("bkc,kv->bvc") (bit-identical at B >= 8 here),
        # ~4x faster at B = 1 on CPU and no slower at larger B
        b, k = alb.shape[:2]
        mixed = alb.to(self.base_albedo).transpose(1, 2).reshape(b * 3, k) @ self.albedo_basis
        out = self.base_albedo + mixed.reshape(b, 3, -1).transpose(1, 2)
        return out.clamp(0.0, 1.0)

    def vertex_normals(self, verts: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """verts (B,V,3) (any space, proper rotations keep orientation) -> (B,V,3) unit outward area-weighted
        normals: recon.render.vertex.vertex_normals (impl 'auto' | 'numba' | 'torch') on the model's triangles."""
        self._check_verts(verts)
        return vertex_normals(verts, self.triangles, impl)

    # ------------------------------------------------------------------------------------ landmarks
    def landmark_indices(self, yaw: torch.Tensor | None = None, threshold: float = 0.35,
                         verts_cam: torch.Tensor | None = None) -> torch.Tensor:
        """68 landmark vertex ids, (68,) or (B,68) when yaw (B,) radians is given.

        With yaw, the jaw points on the side turning away from the camera (yaw > threshold: points 9-16,
        the face's left = image right; yaw < -threshold: points 0-7; yaw sign as in recon.geometry) follow
        the silhouette: without verts_cam they are swapped for the model's posterior contour variant
        (jaw_left / jaw_right); with verts_cam (B,V,3) camera space they are searched, per point, among
        the vertices of a horizontal band of the cheek (`contour_candidates`) for the one that projects
        outermost (largest / smallest x/z), i.e. the visible outline as iBUG annotators mark it.
        """
        if yaw is None:
            return self.lm68
        B = yaw.shape[0]
        base = self.lm68.expand(B, 68).clone()
        left, right = base.clone(), base.clone()
        if verts_cam is None:
            left[:, 9:17] = self.jaw_left
            right[:, 0:8] = self.jaw_right
        else:
            self._check_verts(verts_cam)
            with torch.no_grad():
                for side, sl, pick in ((0, slice(0, 8), torch.argmin), (1, slice(9, 17), torch.argmax)):
                    cand = self.contour_candidates[side]  # (8,C)
                    pts = verts_cam[:, cand.reshape(-1)].reshape(B, *cand.shape, 3)
                    u = pts[..., 0] / pts[..., 2].clamp_min(1e-6)
                    best = torch.gather(cand.expand(B, -1, -1), 2, pick(u, dim=2, keepdim=True))[..., 0]
                    (right if side == 0 else left)[:, sl] = best
        y = yaw.detach()[:, None]
        return torch.where(y > threshold, left, torch.where(y < -threshold, right, base))

    def landmarks(self, verts: torch.Tensor, yaw: torch.Tensor | None = None, silhouette: bool = False) -> torch.Tensor:
        """verts (B,V,3) -> (B,68,3) landmark positions in the same space (iBUG order). With yaw (B,), the
        far-side jaw points follow the silhouette (landmark_indices); silhouette=True searches it (verts
        must then be in camera space), else the fixed posterior contour variant is used."""
        self._check_verts(verts)
        idx = self.landmark_indices(yaw, verts_cam=verts if (silhouette and yaw is not None) else None)
        if idx.dim() == 1:
            return verts[:, idx]
        return torch.gather(verts, 1, idx[..., None].expand(-1, -1, 3))

    def alignment_points(self, verts: torch.Tensor) -> torch.Tensor:
        """verts (B,V,3) -> (B,5,3): eye centres (mean of the 6 eye landmarks each: 36-41 = the face's
        right eye, image left; 42-47), nose tip (30), mouth corners (48, 54) — the order of the ArcFace template."""
        lm = self.landmarks(verts)
        return torch.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1), lm[:, 30], lm[:, 48], lm[:, 54]], 1)

    # -------------------------------------------------------------------------------------- helpers
    def _batch(self, *xs: torch.Tensor | None) -> int:
        sizes = {x.shape[0] for x in xs if x is not None}
        if len(sizes) > 1:
            raise ValueError(f"id and expr batch sizes differ: {sorted(sizes)}")
        return sizes.pop() if sizes else 1

    @staticmethod
    def _check(x: torch.Tensor, n: int, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != n:
            raise ValueError(f"{name} coefficients must be (B,{n}), got {tuple(x.shape)}")

    def _check_verts(self, verts: torch.Tensor) -> None:
        if verts.dim() != 3 or verts.shape[1:] != (self.n_vertices, 3):
            raise ValueError(f"vertices must be (B,{self.n_vertices},3), got {tuple(verts.shape)}")

    def extra_repr(self) -> str:
        return f"n_id={self.n_id}, n_expr={self.n_expr}, n_albedo={self.n_albedo}, V={self.n_vertices}, F={len(self.triangles)}"
