"""L_train = L_FR + lambda_reco L_reco + lambda_canon L_FR^canon + lambda_view L_view (DESIGN.md section 4).

- L_FR: the FR head (recognition.heads) on the embedding of the (multi-channel) input.
- L_FR^canon: the same head on the embedding of the canonical renders alone (see joint.model).
- L_view: mean (1 - cos(z, z_view)) between the embedding of the input and of a re-rendered novel view.
- Both auxiliary terms are means over the rows ``out["aux_index"]`` when the trunk used a subset of the
  batch for them (loss.aux_fraction < 1, joint.model.aux_rows); L_FR and L_reco always use every row.
- L_reco: photometric (masked) + landmark + coefficient priors (+ ground-truth coefficients / shape),
  composed by recon.losses.reconstruction_loss with the weights of the `recon.weights` config section.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import LossConfig, ReconConfig


def view_loss(z: torch.Tensor, z_view: torch.Tensor) -> torch.Tensor:
    """Mean cosine disagreement 1 - cos(z_i, z_view_i), in [0, 2]."""
    return (1.0 - F.cosine_similarity(z, z_view, dim=1, eps=1e-8)).mean()


def reconstruction_terms(rendered: Dict[str, torch.Tensor], images: torch.Tensor, coeffs: torch.Tensor,
                         batch: Dict[str, Any], cfg: ReconConfig, mm: Any = None, layout: Any = None) -> Dict[str, torch.Tensor]:
    """Weighted L_reco terms (recon.losses.reconstruction_loss with the ``recon.weights`` section):
    ``photometric`` (masked by the render's coverage), ``landmark`` (when the batch has 68 landmarks in
    pixels of `images`), ``prior`` and, when the batch has ground-truth ``coeffs``, ``gt_coeffs`` /
    ``gt_shape`` (weights > 0)."""
    from recon.coeffs import CoeffLayout
    from recon.losses import reconstruction_loss

    batch = batch or {}
    _, terms = reconstruction_loss(rendered, images, coeffs, layout or CoeffLayout(), cfg.weights,
                                   landmarks=batch.get("landmarks"), gt_coeffs=batch.get("coeffs"), model=mm)
    return terms


def joint_loss(out: Dict[str, Any], labels: torch.Tensor, head: torch.nn.Module,
               lambdas: Optional[LossConfig] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Combine trunk outputs into L_train; logs every term (detached 0-d tensors) by name.

    out: joint.model.JointTrunk's outputs (``z`` (B,d); ``z_canon`` / ``z_view`` (k,d) of the rows
    ``aux_index`` (k,) when present, else (B,d)). Log keys: ``loss`` (L_train), ``l_fr`` and the head's own terms (``fr/<name>``), ``l_canon``,
    ``l_view``, ``l_reco`` and ``reco/<term>``, ``mean_norm``, ``margin``.
    """
    lam = lambdas or LossConfig()
    l_fr, head_logs = head(out["z"], labels)
    logs: Dict[str, torch.Tensor] = {"l_fr": l_fr.detach()}
    for k, v in head_logs.items():
        if k == "loss":
            continue
        if k in ("mean_norm", "margin"):
            logs[k] = v.detach() if torch.is_tensor(v) else torch.tensor(float(v))
        else:
            logs[f"fr/{k}"] = v.detach() if torch.is_tensor(v) else torch.tensor(float(v))
    total = l_fr
    rows = out.get("aux_index")  # the rows z_canon / z_view were computed for (None: every row)
    if rows is not None:
        rows = rows.to(labels.device)
    if "z_canon" in out and lam.canon > 0:
        l_canon, _ = head(out["z_canon"], labels if rows is None else labels.index_select(0, rows))
        logs["l_canon"] = l_canon.detach()
        total = total + lam.canon * l_canon
    if "z_view" in out and lam.view > 0:
        z = out["z"] if rows is None else out["z"].index_select(0, rows.to(out["z"].device))
        l_view = view_loss(z, out["z_view"])
        logs["l_view"] = l_view.detach()
        total = total + lam.view * l_view
    if "reco" in out and lam.reco > 0 and out["reco"]:
        l_reco = sum(out["reco"].values())
        for k, v in out["reco"].items():
            logs[f"reco/{k}"] = v.detach()
        logs["l_reco"] = l_reco.detach()
        total = total + lam.reco * l_reco
    logs["loss"] = total.detach()
    return total, logs
