"""Reconstruction losses and the vertex-error metric.

All losses return a 0-d tensor averaged over the batch (per-sample values with reduction="none").
Shapes: images (B,3,H,W) in [0,1]; masks (B,1,H,W) in [0,1]; landmarks (B,68,2) pixels; vertices (B,V,3) cm.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from .coeffs import CoeffLayout
from .geometry import similarity_align

# iBUG indices of the outer eye corners (inter-ocular distance) and the 6-point eye contours.
OUTER_EYE_CORNERS = (36, 45)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     reduction: str = "mean", eps: float = 1e-6) -> torch.Tensor:
    """Masked photometric error: per sample sum_p mask_p |pred_p - target_p|_2 / sum_p mask_p.

    pred, target (B,C,H,W); mask (B,1,H,W) (e.g. the render's coverage times a skin/visibility mask).
    The per-pixel colour distance is the Euclidean norm over channels (robust to outliers compared with
    its square). Samples with an empty mask contribute 0.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred and target must both be (B,C,H,W), got {tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
        raise ValueError(f"mask must be (B,1,H,W) matching pred {tuple(pred.shape)}, got {tuple(mask.shape)}")
    diff = ((pred - target) ** 2).sum(1, keepdim=True).add(eps * eps).sqrt()  # smooth at 0
    per = (diff * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(eps)
    return _reduce(per, reduction)


def interocular_distance(landmarks: torch.Tensor) -> torch.Tensor:
    """(B,68,2) -> (B,) distance between the outer eye corners (iBUG 36 and 45)."""
    return (landmarks[:, OUTER_EYE_CORNERS[0]] - landmarks[:, OUTER_EYE_CORNERS[1]]).norm(dim=-1)


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                  normalize: bool = True, reduction: str = "mean") -> torch.Tensor:
    """68-landmark reprojection loss: per sample sum_i w_i |pred_i - target_i|^2 / sum_i w_i, divided by
    the squared inter-ocular distance of the target when normalize (scale-free; else pixels^2).

    pred, target (B,N,2); weights (N,) or (B,N) (e.g. 0 for missing points) or None.
    """
    if pred.shape != target.shape or pred.dim() != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred and target landmarks must both be (B,N,2), got {tuple(pred.shape)} and {tuple(target.shape)}")
    w = torch.ones(pred.shape[:2], dtype=pred.dtype, device=pred.device) if weights is None else weights.to(pred).expand(pred.shape[:2])
    per = (w * ((pred - target) ** 2).sum(-1)).sum(1) / w.sum(1).clamp_min(1e-12)
    if normalize:
        if pred.shape[1] != 68:
            raise ValueError("normalize=True needs the 68 iBUG landmarks (inter-ocular distance from points 36, 45)")
        per = per / interocular_distance(target).detach().clamp_min(1e-6) ** 2
    return _reduce(per, reduction)


def landmark_nme(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Normalised mean error (metric): mean_i |pred_i - target_i| / inter-ocular distance, (B,)."""
    return (pred - target).norm(dim=-1).mean(1) / interocular_distance(target).clamp_min(1e-6)


def coefficient_priors(coeffs: torch.Tensor, layout: CoeffLayout, weights: dict[str, float] | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gaussian priors and the expression range penalty.

    Terms (batch means): id = sum id^2, expr = sum expr^2, albedo = sum alb^2 (all coefficients are
    ~N(0,1) / activations), expr_range = sum relu(-e)^2 + relu(e-1)^2 (expression weights in [0,1]).
    Default weights id 1, expr 1, albedo 1, expr_range 10 (override any by name).
    Returns (weighted total, dict of unweighted detached terms).
    """
    w = {"id": 1.0, "expr": 1.0, "albedo": 1.0, "expr_range": 10.0}
    if weights:
        unknown = set(weights) - set(w)
        if unknown:
            raise ValueError(f"unknown prior weight(s) {sorted(unknown)}; known: {sorted(w)}")
        w.update(weights)
    p = layout.split(coeffs)
    e = p["expr"]
    terms = {
        "id": (p["id"] ** 2).sum(1).mean(),
        "expr": (e**2).sum(1).mean(),
        "albedo": (p["albedo"] ** 2).flatten(1).sum(1).mean(),
        "expr_range": (torch.relu(-e) ** 2 + torch.relu(e - 1.0) ** 2).sum(1).mean(),
    }
    total = sum(w[k] * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Angles (radians) wrapped to [-pi, pi)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def coefficient_loss(pred: torch.Tensor, target: torch.Tensor, layout: CoeffLayout,
                     weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Ground-truth coefficient loss: per slice mean squared error (rotation differences wrapped to
    [-pi,pi)), weighted sum. Default weights: every slice 1 except translation 0.01 (cm^2 is large).
    Returns (total, dict of unweighted detached per-slice terms)."""
    w = {"id": 1.0, "expr": 1.0, "albedo": 1.0, "rotation": 1.0, "translation": 0.01, "light": 1.0}
    if weights:
        unknown = set(weights) - set(w)
        if unknown:
            raise ValueError(f"unknown coefficient-loss weight(s) {sorted(unknown)}; known: {sorted(w)}")
        w.update(weights)
    a, b = layout.split(pred), layout.split(target.to(pred))
    terms = {}
    for name in w:
        d = a[name] - b[name]
        if name == "rotation":
            d = wrap_angle(d)
        terms[name] = (d**2).mean() if d.numel() else d.sum()
    total = sum(w[k] * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}


def vertex_error_mm(pred_verts: torch.Tensor, gt_verts: torch.Tensor, scale: bool = True,
                    vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-vertex distance in millimetres after aligning pred onto gt (cm in).

    pred_verts, gt_verts (B,V,3) or (V,3) in cm; alignment by least-squares similarity (Umeyama, with
    scale; scale=False: rigid) computed in float64; vertex_ids optionally restricts both the alignment
    and the error to a subset. Returns (B,) (or a 0-d tensor for unbatched input).
    """
    squeeze = pred_verts.dim() == 2
    if squeeze:
        pred_verts, gt_verts = pred_verts[None], gt_verts[None]
    if pred_verts.shape != gt_verts.shape or pred_verts.shape[-1] != 3:
        raise ValueError(f"pred and gt vertices must have the same (B,V,3) shape, got {tuple(pred_verts.shape)} "
                         f"and {tuple(gt_verts.shape)}")
    if vertex_ids is not None:
        pred_verts, gt_verts = pred_verts[:, vertex_ids], gt_verts[:, vertex_ids]
    p, g = pred_verts.double(), gt_verts.double()
    s, R, t = similarity_align(p, g, scale=scale)
    aligned = s[:, None, None] * p @ R.transpose(1, 2) + t[:, None]
    err = (aligned - g).norm(dim=-1).mean(1) * 10.0
    err = err.to(pred_verts.dtype)
    return err[0] if squeeze else err


def prior_loss(coeffs: torch.Tensor, layout: CoeffLayout | None = None,
               weights: dict[str, float] | None = None) -> torch.Tensor:
    """Weighted coefficient prior as one 0-d tensor (coefficient_priors without the logs). layout
    defaults to CoeffLayout() (the default MorphableModel's); pass it for other model sizes."""
    layout = layout or CoeffLayout()
    if coeffs.dim() != 2 or coeffs.shape[1] != layout.size:
        raise ValueError(f"coefficients (B,{layout.size}) expected for {layout}, got {tuple(coeffs.shape)}; "
                         "pass the matching CoeffLayout")
    return coefficient_priors(coeffs, layout, weights)[0]


# ------------------------------------------------------------------------------------------- L_reco


@dataclass
class ReconLossWeights:
    """Weights of every L_reco term (0 switches a term off). One set serves joint training
    (config section ``recon.weights``), the per-photo fit (recon.fitting.FitConfig.weights) and regressor
    training (recon.fitting.train_regressor).

    photometric: masked RGB distance of the re-render (needs rendered image + mask);
    landmark: 68-point loss on NME^2 (needs target landmarks); prior_id / prior_expr / prior_albedo: on
    sum(c^2) of those slices; prior_expr_range: keeps expressions in [0,1]; light: colour spread of the
    SH coefficients (keeps the light near white); gt_coeffs: ground-truth coefficient loss
    (coefficient_loss, needs gt); gt_shape: mean squared vertex distance (cm^2) of the neutral identity
    shapes of prediction and ground truth (needs gt and the morphable model).
    """

    photometric: float = 1.0
    landmark: float = 1.0
    prior_id: float = 1.0
    prior_expr: float = 1.0
    prior_albedo: float = 1.0
    prior_expr_range: float = 10.0
    light: float = 0.0
    gt_coeffs: float = 0.0
    gt_shape: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"reconstruction loss weight {name} must be a finite number >= 0, got {value!r}")

    def scaled(self, factor: float) -> "ReconLossWeights":
        """Every weight times `factor`."""
        return ReconLossWeights(**{k: v * factor for k, v in asdict(self).items()})


_GRAMS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def identity_gram(model: Any) -> torch.Tensor:
    """(n_id,n_id) Gram matrix B^T B / V of the model's identity basis (cm^2), cached per model: the mean
    squared vertex distance between two identity shapes is d^T G d for d the coefficient difference."""
    g = _GRAMS.get(model)
    if g is None or g.device != model.id_basis.device:
        b = model.id_basis.reshape(model.id_basis.shape[0], -1).double()
        g = (b @ b.T / model.n_vertices).float()
        _GRAMS[model] = g
    return g


def light_whiteness(light: torch.Tensor) -> torch.Tensor:
    """Colour spread of SH light (B,27) (3 channels x 9 bands): batch mean of the squared deviation of
    each band's R, G, B from their mean (0 for white light)."""
    l3 = light.reshape(light.shape[0], 3, 9)
    return ((l3 - l3.mean(1, keepdim=True)) ** 2).sum((1, 2)).mean()


def reconstruction_loss(rendered: Mapping[str, torch.Tensor] | None, images: torch.Tensor | None,
                        coeffs: torch.Tensor, layout: CoeffLayout, weights: ReconLossWeights,
                        landmarks: torch.Tensor | None = None, gt_coeffs: torch.Tensor | None = None,
                        model: Any = None, landmark_weights: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_reco: the weighted sum of the terms whose weight is > 0 and whose inputs are present.

    rendered: dict with ``image`` (B,3,H,W) and ``mask`` (B,1,H,W) (for photometric) and ``landmarks2d``
    (B,68,2) pixels (for landmark), e.g. recon.face.render_face's output; a dict with only landmarks2d
    when nothing is rendered. images (B,3,H,W) [0,1] the targets of the photometric term; coeffs (B,P)
    predicted; landmarks (B,68,2) targets in pixels; gt_coeffs (B,P); model: MorphableModel (gt_shape);
    landmark_weights (68,) per-point weights; mask (B,1,H,W) extra photometric mask.
    Returns (total 0-d tensor, dict of weighted terms: photometric, landmark, prior, light, gt_coeffs,
    gt_shape; `prior` sums the prior_* parts).
    """
    w = weights
    terms: dict[str, torch.Tensor] = {}
    if w.photometric > 0 and rendered is not None and "image" in rendered and images is not None:
        m = rendered["mask"] if mask is None else rendered["mask"] * mask
        terms["photometric"] = w.photometric * photometric_loss(rendered["image"], images, m)
    if w.landmark > 0 and landmarks is not None:
        if rendered is None or "landmarks2d" not in rendered:
            raise ValueError("the landmark term needs rendered['landmarks2d'] (B,68,2) pixels")
        terms["landmark"] = w.landmark * landmark_loss(rendered["landmarks2d"], landmarks.to(coeffs),
                                                       weights=landmark_weights)
    prior_w = {"id": w.prior_id, "expr": w.prior_expr, "albedo": w.prior_albedo, "expr_range": w.prior_expr_range}
    if any(v > 0 for v in prior_w.values()):
        terms["prior"] = prior_loss(coeffs, layout, prior_w)
    if w.light > 0:
        terms["light"] = w.light * light_whiteness(layout.split(coeffs)["light"])
    if gt_coeffs is not None and w.gt_coeffs > 0:
        terms["gt_coeffs"] = w.gt_coeffs * coefficient_loss(coeffs, gt_coeffs.to(coeffs), layout)[0]
    if gt_coeffs is not None and w.gt_shape > 0:
        if model is None:
            raise ValueError("the gt_shape term needs the MorphableModel (model=...)")
        d = layout.split(coeffs)["id"] - layout.split(gt_coeffs.to(coeffs))["id"]
        terms["gt_shape"] = w.gt_shape * ((d @ identity_gram(model).to(d)) * d).sum(1).mean()
    total = sum(terms.values()) if terms else coeffs.sum() * 0.0
    return total, terms
