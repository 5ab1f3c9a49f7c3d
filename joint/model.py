"""The joint model: reconstruction regressor -> canonical renders -> multi-channel FR backbone -> head.

Data flow (DESIGN.md section 1)::

    image -> CoeffRegressor -> coeffs -> render_canonical -> canonical (B,3,S,S), depth (B,1,S,S)
    FR input = concat(image, [canonical], [depth])  per input_mode  -> backbone -> z (B,d) -> head -> L_FR

`JointModel` = `trunk` (everything with parameters shared across ranks: backbone, regressor) + `head`
(the classifier, replaced by a sharded one under DDP). `trunk(images, batch)` returns a dict of
embeddings and reconstruction terms; `joint.losses.joint_loss` combines them into L_train.

Auxiliary inputs:

- L_FR^canon uses the *same* backbone and the same channel layout with the photo channels replaced by
  the canonical render itself (the canonical/depth channels stay): the network sees the pose-, expression-
  and light-free face only. In `rgb` mode that is simply the canonical render as an RGB image.
- L_view re-renders the fitted face (`recon.face.render_face`) with a perturbed pose (yaw +-view_yaw_deg,
  pitch +-view_pitch_deg), composited over the original image; the canonical/depth channels are those of
  the original (the canonical render does not depend on pose). Its embedding must agree with z (cosine).

With input_mode 'rgb' and every recon lambda 0 the reconstruction branch is not built at all and the model
is a plain FR network.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import INPUT_MODES, LossConfig, ReconConfig, TrainConfig

CANONICAL_SIZE = 112


def mode_channels(input_mode: str) -> int:
    """Number of backbone input channels for an input mode."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"unknown input_mode '{input_mode}'; use one of {', '.join(INPUT_MODES)}")
    return 3 + (3 if "canonical" in input_mode else 0) + (1 if "depth" in input_mode else 0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (B,C,H,W) to (B,C,size,size); no-op if equal."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    shrink = x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class JointTrunk(nn.Module):
    """Backbone (+ regressor and renderer when the reconstruction branch is on)."""

    def __init__(self, backbone: nn.Module, input_mode: str, image_size: int, use_recon: bool,
                 recon_cfg: Optional[ReconConfig] = None, lambdas: Optional[LossConfig] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_mode = input_mode
        self.image_size = int(image_size)
        self.use_recon = bool(use_recon)
        self.recon_cfg = recon_cfg or ReconConfig()
        self.lambdas = lambdas or LossConfig()
        self.regressor: Optional[nn.Module] = None
        self._mm: list = []  # morphable model and renderer kept out of state_dict (fixed assets)
        self.regressor_size = int(self.recon_cfg.regressor_size or image_size)
        if self.use_recon:  # recon.regressor_init: the bundled pretrained regressor, none, or a path
            from recon.regressor import build_regressor

            self.regressor = build_regressor(self.recon_cfg.regressor_init, self.recon_cfg.regressor_options,
                                             image_size=self.regressor_size)
            self.regressor_size = int(self.recon_cfg.regressor_size or self.regressor.image_size)

    # --------------------------------------------------------------------------------- recon assets
    def _assets(self, device: torch.device):
        """(MorphableModel, renderer, CoeffLayout), built on first use and kept on `device`."""
        if not self._mm:
            from recon import CoeffLayout, MorphableModel
            from recon.render import build_renderer

            mm = MorphableModel()
            layout = CoeffLayout.from_model(mm)
            if self.regressor is not None and layout.size != self.regressor.layout.size:
                raise ValueError(f"the morphable model's coefficient layout ({layout}) differs from the "
                                 f"regressor's ({self.regressor.layout})")
            self._mm = [mm, build_renderer(backend=self.recon_cfg.renderer), layout, None]
        if self._mm[3] != device:
            self._mm[0] = self._mm[0].to(device) or self._mm[0]
            self._mm[3] = device
        return self._mm[0], self._mm[1], self._mm[2]

    def fr_input(self, image: torch.Tensor, canonical: Optional[torch.Tensor], depth: Optional[torch.Tensor]) -> torch.Tensor:
        parts = [resize(image, self.image_size)]
        if "canonical" in self.input_mode:
            parts.append(canonical)
        if "depth" in self.input_mode:
            parts.append(depth)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def regress(self, images: torch.Tensor) -> torch.Tensor:
        """Coefficients (B,P) of images (B,3,H,W) in [0,1], resized to the regressor's input size first."""
        return self.regressor(resize(images, self.regressor_size))

    def canonical(self, images: torch.Tensor):
        """Regress coefficients and render (canonical, depth) resized to the FR input size."""
        coeffs = self.regress(images)
        canon, depth, _ = self._canonical_renders(coeffs)
        return coeffs, canon, depth

    def _canonical_renders(self, coeffs: torch.Tensor):
        """(canonical (B,3,S,S), depth (B,1,S,S), neutral FaceGeometry) at the FR input size S: one
        rasterisation of the neutral face; its geometry (neutral shape, albedo) is shared with the other renders."""
        from recon import face as rface
        from recon.canonical import render_canonical

        mm, renderer, layout = self._assets(coeffs.device)
        p = layout.split(coeffs)
        geo = rface.face_geometry(mm, p["id"], None, p["albedo"], impl=rface._impl(renderer))
        canon, depth = render_canonical(mm, renderer, coeffs, image_size=self.image_size, layout=layout,
                                        geometry=geo)
        return canon, depth, geo

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of images (B,3,H,W) in [0,1] (what evaluation calls)."""
        if not self.use_recon or self.input_mode == "rgb":
            return self.backbone(resize(images, self.image_size))
        _, canon, depth = self.canonical(images)
        return self.backbone(self.fr_input(images, canon, depth))

    def forward(self, images: torch.Tensor, batch: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Everything but the head: ``z`` and, when enabled, ``z_canon``, ``z_view``, ``reco`` terms, ``coeffs``.

        Work whose lambda is 0 is skipped. ``z_canon`` / ``z_view`` are of the rows ``aux_index`` (k,) only
        when loss.aux_fraction < 1 (`aux_rows`; absent = every row): only those rows' canonical inputs and
        novel views are rendered and go through the backbone. The renders of one step share what does not
        depend on pose: the neutral shape and per-vertex albedo (canonical and posed faces), and the posed
        shape and its normals (the input view for L_reco and the novel view for L_view differ by rotation only).
        """
        batch = batch or {}
        if not self.use_recon:
            return {"z": self.backbone(resize(images, self.image_size))}
        coeffs = self.regress(images)
        canon, depth, neutral = self._canonical_renders(coeffs)
        out: Dict[str, Any] = {"coeffs": coeffs}
        out["z"] = self.backbone(self.fr_input(images, canon, depth))
        lam = self.lambdas
        rows = aux_rows(images.shape[0], lam.aux_fraction) if lam.canon > 0 or lam.view > 0 else None
        if rows is not None:
            out["aux_index"] = rows
        sub = (lambda t: t) if rows is None else (lambda t: t.index_select(0, rows.to(t.device)))
        if lam.canon > 0:
            c, d = sub(canon), sub(depth)
            out["z_canon"] = self.backbone(self.fr_input(c, c, d))
        if lam.reco > 0 or lam.view > 0:
            from recon import face as rface

            mm, renderer, layout = self._assets(images.device)
            size = images.shape[-1]
            p = layout.split(coeffs)
            impl = rface._impl(renderer)
            geo = None
            if lam.reco > 0:
                geo = rface.face_geometry(mm, p["id"], p["expr"], albedo=neutral.albedo, impl=impl, neutral=neutral.shape)
                rendered = rface.render_face(mm, renderer, coeffs, image_size=size, layout=layout, geometry=geo)
                from .losses import reconstruction_terms

                out["reco"] = reconstruction_terms(rendered, images, coeffs, batch, self.recon_cfg, mm, layout)
            if lam.view > 0:
                if geo is None:  # no L_reco render: the posed geometry of the subset rows only
                    geo = rface.face_geometry(mm, sub(p["id"]), sub(p["expr"]), albedo=_rows(neutral.albedo, sub),
                                              impl=impl, neutral=sub(neutral.shape))
                else:
                    geo = rface.FaceGeometry(sub(geo.shape), sub(geo.normals), _rows(geo.albedo, sub))
                coeffs_v = perturb_pose(sub(coeffs), layout, self.recon_cfg.view_yaw_deg, self.recon_cfg.view_pitch_deg)
                view = rface.render_face(mm, renderer, coeffs_v, image_size=size, layout=layout, geometry=geo)
                mask = view["mask"]
                novel = view["image"] * mask + sub(images) * (1 - mask)
                out["z_view"] = self.backbone(self.fr_input(novel, sub(canon), sub(depth)))
        return out


def aux_rows(batch_size: int, fraction: float) -> Optional[torch.Tensor]:
    """The rows (k,) int64, sorted, of a batch of `batch_size` that L_FR^canon and L_view use, or None for
    every row. k = min(B, max(2, ceil(fraction x B))) (two rows at least: the backbone's BatchNorm needs
    them); the rows are the first k of torch.randperm(B) on torch's default (CPU) generator, so a run's
    per-step seeding / saved RNG state makes them reproducible. Nothing is drawn when k == B."""
    k = min(batch_size, max(2, math.ceil(round(fraction * batch_size, 9))))  # round: 0.3 x 10 is 3, not 4
    if k >= batch_size:
        return None
    return torch.randperm(batch_size)[:k].sort().values


def _rows(t: torch.Tensor, sub: Any) -> torch.Tensor:
    """`sub(t)` for a per-row tensor; a tensor broadcast over the batch (leading size 1) as is."""
    return t if t.shape[0] == 1 else sub(t)


def perturb_pose(coeffs: torch.Tensor, layout: Any, yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """Coefficients with rotation (pitch, yaw) offset by uniform draws in +-pitch_deg / +-yaw_deg."""
    parts = layout.split(coeffs)
    rot = parts["rotation"]
    b = rot.shape[0]
    scale = torch.tensor([pitch_deg, yaw_deg, 0.0], device=rot.device, dtype=rot.dtype) * (math.pi / 180.0)
    delta = (torch.rand(b, 3, device=rot.device, dtype=rot.dtype) * 2 - 1) * scale
    parts = dict(parts)
    parts["rotation"] = rot + delta
    return layout.join(parts)


class JointModel(nn.Module):
    """Trunk (backbone [+ regressor]) and head; ``model(images, labels, batch) -> (loss, logs)``."""

    def __init__(self, num_classes: int, backbone: str = "mobilefacenet", backbone_options: Optional[dict] = None,
                 embedding_size: int = 512, head: str = "lh2face", head_options: Optional[dict] = None,
                 input_mode: str = "rgb", image_size: int = 112, recon: Optional[ReconConfig] = None,
                 lambdas: Optional[LossConfig] = None, use_recon: Optional[bool] = None) -> None:
        super().__init__()
        from recognition.backbones import build_backbone
        from recognition.heads import build_head

        lambdas = lambdas or LossConfig()
        in_ch = mode_channels(input_mode)
        if use_recon is None:
            use_recon = input_mode != "rgb" or lambdas.reco > 0 or lambdas.canon > 0 or lambdas.view > 0
        opts = dict(backbone_options or {})
        opts.setdefault("input_size", int(image_size))
        bb = build_backbone(backbone, in_channels=in_ch, embedding_size=embedding_size, **opts)
        self.trunk = JointTrunk(bb, input_mode, image_size, use_recon, recon, lambdas)
        self.head = build_head(head, num_classes, embedding_size=embedding_size, **(head_options or {}))
        self.lambdas = lambdas
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.input_mode = input_mode

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> "JointModel":
        m = cfg.model
        return cls(num_classes, backbone=m.backbone, backbone_options=m.backbone_options,
                   embedding_size=m.embedding_size, head=m.head, head_options=m.head_options,
                   input_mode=m.input_mode, image_size=cfg.data.image_size, recon=cfg.recon,
                   lambdas=cfg.loss, use_recon=cfg.uses_recon)

    @property
    def backbone(self) -> nn.Module:
        return self.trunk.backbone

    @property
    def regressor(self) -> Optional[nn.Module]:
        return self.trunk.regressor

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) [0,1] -> (B,d) embeddings; pluggable into recognition.eval.extract_embeddings."""
        return self.trunk.embed(images)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, batch: Optional[Dict[str, Any]] = None,
                trunk: Optional[nn.Module] = None):
        """L_train and logged terms. `trunk` lets the training loop pass a DDP-wrapped trunk."""
        from .losses import joint_loss

        out = (trunk or self.trunk)(images, batch)
        return joint_loss(out, labels, self.head, self.lambdas)
