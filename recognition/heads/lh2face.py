"""The LH2Face head (DESIGN.md section 2): L_vMF with the Uncertainty-Aware Margin plus proxy losses.

kappa_i = |z_i|, x_i = z_i / kappa_i, mu_k = W_k / |W_k|, cos_ik = x_i . mu_k, S = the margin statistic
(batch mean of |z| over the whole, gathered batch, or its EMA; always detached), m = margin_const * S.

    L_vMF : cross-entropy over  kappa_i cos_ij + log C_n(kappa_i) - m [j = y_i]
            scale_normalised: the same logits times s / S  (= CosFace with per-sample scale
            s kappa_i / S and logit margin margin_const * s); log C_n is a per-row constant and cancels
            in the softmax (value and gradient), so it is only added when include_log_normalizer=True.
    L_pps : mean_i -(log C_n(kappa_i) - log C_n(0) + kappa_i cos_iy)  (vMF NLL of x_i under its proxy,
            relative to kappa -> 0); its kappa-gradient is A_n(kappa) - cos_iy.
            pps_detach_direction: cos_iy detached, so L_pps acts on the norm only.
    L_pns : mean over proxies p in the batch of log(1 + sum_{i: y_i != p} exp(alpha (cos(x_i, mu_p) + delta)))
    L_pp  : mean over ordered pairs of distinct proxies p != q in the batch of relu(cos(mu_p, mu_q)).

margin="fixed_cosine" (an ablation of UAM): every sample gets the cosine margin margin_const, i.e. the
target logit kappa_i (cos_iy - margin_const) instead of kappa_i cos_iy - margin_const S (UAM's effective
cosine margin margin_const S / kappa_i); everything else unchanged.

L_FR = w_vmf L_vMF + w_pps L_pps + w_pns L_pns + w_pp L_pp. The defaults scale_normalised=True and
pps_detach_direction=True come from measured toy runs (TOY_DEFAULTS_NOTE); the literal reading is
`scale_normalised=False, pps_detach_direction=False`.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist

from ..vmf import log_normalizer, log_normalizer_at_zero
from .base import Logs, MarginHead, ShardContext, check_positive, label_counts, replace_target, target_values

__all__ = ["lh2face_logits", "LH2FaceHead", "MARGINS", "TOY_DEFAULTS_NOTE"]

MARGINS = ("uam", "fixed_cosine")  # option `margin`: Uncertainty-Aware Margin, or the fixed cosine margin ablation


def _average_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Mean of a detached tensor over the default process group (identity without one; no host sync)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()

TOY_DEFAULTS_NOTE = (
    "Defaults measured with bench/toy_heads.py (bench/results/toy_heads.md: 100 Gaussian clusters in R^32, "
    "sigma 2, MLP -> 512-d, Adam 1e-3, 1200 steps, 2 seeds, held-out accuracy): CosFace 0.295; the literal "
    "reading with every proxy term collapses (norms 0.03, accuracy 0.013), also with kappa or the L_pps "
    "direction detached; scale-normalised with every term but the L_pps direction free blows the norms up "
    "(acc 0.013); scale_normalised=True with pps_detach_direction=True trains stably (0.315, norms ~72), "
    "so those two switches are the defaults and the proxy weights stay at DESIGN.md's 1. Same run: "
    "w_pns=0.1 gives 0.369 and w_pns=0 0.380; without proxy terms 0.386."
)


def lh2face_logits(
    cos: torch.Tensor,
    kappa: torch.Tensor,
    target_col: torch.Tensor,
    margin: torch.Tensor,
    scale: torch.Tensor,
    log_c: torch.Tensor | None = None,
) -> torch.Tensor:
    """(kappa_i cos_ij + log_c_i - margin [j = y_i]) * scale.

    cos (B, C); kappa (B,); target_col (B,) local target column or -1; margin and scale 0-d (or (B,));
    log_c (B,) or None (it is a per-row constant of the softmax). Returns (B, C).
    """
    logits = kappa.unsqueeze(1) * cos
    if log_c is not None:
        logits = logits + log_c.unsqueeze(1)
    t = target_values(logits, target_col)
    logits = replace_target(logits, target_col, t - margin)
    return logits * scale


class LH2FaceHead(MarginHead):
    """LH2Face head; every reading of the loss is an option (see the module docstring).

    Options: n=256 (vMF dimension), margin="uam"|"fixed_cosine" (the ablation without the
    Uncertainty-Aware Margin), margin_const=0.35, margin_stat="batch"|"ema", ema_momentum=0.01,
    detach_kappa=False (kappa inside L_vMF), scale_normalised=True, s=64, include_log_normalizer=False,
    w_vmf=1, w_pps=1, w_pns=1, w_pp=1, pps_detach_direction=True, pns_alpha=32, pns_delta=0.1,
    sync_batch_stats=True (a plain head under torch.distributed data parallelism averages the batch-mean
    norm over all ranks; the sharded classifier already sees the global batch).
    """

    name = "lh2face"

    def __init__(
        self,
        num_classes: int,
        embedding_size: int = 512,
        n: int = 256,
        margin_const: float = 0.35,
        margin: str = "uam",
        margin_stat: str = "batch",
        ema_momentum: float = 0.01,
        detach_kappa: bool = False,
        scale_normalised: bool = True,
        s: float = 64.0,
        include_log_normalizer: bool = False,
        w_vmf: float = 1.0,
        w_pps: float = 1.0,
        w_pns: float = 1.0,
        w_pp: float = 1.0,
        pps_detach_direction: bool = True,
        pns_alpha: float = 32.0,
        pns_delta: float = 0.1,
        sync_batch_stats: bool = True,
        weight_init_std: float = 0.01,
    ) -> None:
        super().__init__(num_classes, embedding_size, weight_init_std)
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"head 'lh2face': option n (vMF dimension) must be an int >= 2, got {n!r}")
        if margin not in MARGINS:
            raise ValueError(f"head 'lh2face': option margin must be one of {', '.join(MARGINS)}, got {margin!r}")
        if margin_stat not in ("batch", "ema"):
            raise ValueError(f"head 'lh2face': option margin_stat must be 'batch' or 'ema', got {margin_stat!r}")
        if not 0.0 < ema_momentum <= 1.0:
            raise ValueError(f"head 'lh2face': option ema_momentum must be in (0, 1], got {ema_momentum}")
        check_positive(self.name, s=s, pns_alpha=pns_alpha)
        for k, v in dict(w_vmf=w_vmf, w_pps=w_pps, w_pns=w_pns, w_pp=w_pp, margin_const=margin_const).items():
            if v < 0:
                raise ValueError(f"head 'lh2face': option {k} must be >= 0, got {v}")
        self.n = n
        self.margin_const = float(margin_const)
        self.margin = margin
        self.margin_stat = margin_stat
        self.ema_momentum = float(ema_momentum)
        self.detach_kappa = bool(detach_kappa)
        self.scale_normalised = bool(scale_normalised)
        self.s = float(s)
        self.include_log_normalizer = bool(include_log_normalizer)
        self.weights = {"l_ce": float(w_vmf), "l_pps": float(w_pps), "l_pns": float(w_pns), "l_pp": float(w_pp)}
        self.pps_detach_direction = bool(pps_detach_direction)
        self.pns_alpha = float(pns_alpha)
        self.pns_delta = float(pns_delta)
        self.sync_batch_stats = bool(sync_batch_stats)
        self.log_c0 = log_normalizer_at_zero(n)
        self.register_buffer("norm_ema", torch.tensor(0.0))
        self.register_buffer("norm_ema_initialised", torch.tensor(False))

    # --- statistics ------------------------------------------------------------------------------
    def batch_statistics(self, norms: torch.Tensor, ctx: ShardContext | None = None) -> Dict[str, torch.Tensor]:
        batch_mean = norms.detach().mean().to(self.norm_ema.dtype)
        if self.sync_batch_stats and not (ctx is not None and ctx.stats_are_global):
            batch_mean = _average_over_ranks(batch_mean)
        if self.training:
            with torch.no_grad():
                updated = (1.0 - self.ema_momentum) * self.norm_ema + self.ema_momentum * batch_mean
                self.norm_ema.copy_(torch.where(self.norm_ema_initialised, updated, batch_mean))
                self.norm_ema_initialised.fill_(True)
        if self.margin_stat == "ema":
            stat = torch.where(self.norm_ema_initialised, self.norm_ema, batch_mean)
        else:
            stat = batch_mean
        stat = stat.to(norms.dtype)
        return {"norm_stat": stat, "margin": self.margin_const * stat}

    # --- L_vMF -----------------------------------------------------------------------------------
    def margin_logits(self, cos, norms, target_col, stats):
        kappa = norms.detach() if self.detach_kappa else norms
        log_c = log_normalizer(kappa, self.n) if self.include_log_normalizer else None
        scale = self.s / stats["norm_stat"] if self.scale_normalised else torch.ones_like(stats["norm_stat"])
        return lh2face_logits(cos, kappa, target_col, self._logit_margin(kappa, stats), scale, log_c)

    def _logit_margin(self, kappa: torch.Tensor, stats: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The margin subtracted from the target logit: UAM's margin_const * S (0-d), or margin_const *
        kappa_i (B,) for a fixed cosine margin."""
        return self.margin_const * kappa if self.margin == "fixed_cosine" else stats["margin"]

    # --- proxy terms -----------------------------------------------------------------------------
    def extra_losses(self, cos, norms, target_col, labels, proxies, stats, ctx: ShardContext):
        out: Dict[str, torch.Tensor] = {}
        owned = target_col >= 0
        col = target_col.clamp_min(0)
        batch = cos.shape[0]
        need_counts = self.weights["l_pns"] > 0 or self.weights["l_pp"] > 0
        if need_counts:
            counts = label_counts(labels).to(cos.dtype)  # (B,) samples per label
            num_proxies = (1.0 / counts).sum()  # distinct labels in the batch
            same = labels.unsqueeze(0) == labels.unsqueeze(1)  # (B, B)
        if self.weights["l_pps"] > 0:
            cos_y = target_values(cos, target_col)
            if self.pps_detach_direction:
                cos_y = cos_y.detach()
            nll = -(log_normalizer(norms, self.n) - self.log_c0) - norms * cos_y
            out["l_pps"] = torch.where(owned, nll, torch.zeros_like(nll)).sum() / batch
        if self.weights["l_pns"] > 0:
            # column k: the proxy of sample k (owned here); row i: sample i
            a = self.pns_alpha * (cos.index_select(1, col) + self.pns_delta)  # (B_i, B_k)
            a = a.masked_fill(same, float("-inf"))
            a = torch.cat([torch.zeros_like(a[:1]), a], dim=0)
            per_proxy = torch.logsumexp(a, dim=0) / counts  # (B_k,)
            per_proxy = torch.where(owned, per_proxy, torch.zeros_like(per_proxy))
            out["l_pns"] = per_proxy.sum() / num_proxies
        if self.weights["l_pp"] > 0:
            mine = torch.where(owned.unsqueeze(1), proxies.index_select(0, col), torch.zeros_like(proxies[:1]))
            everyone = ctx.all_reduce_sum(mine)  # (B, d): the target proxy of every sample, gathered
            sims = torch.relu(mine @ everyone.t()).masked_fill(same, 0.0)  # (B_k, B_l)
            pairs = (sims / counts.unsqueeze(0) / counts.unsqueeze(1)).sum()
            out["l_pp"] = pairs / (num_proxies * (num_proxies - 1.0)).clamp_min(1.0)
        return out

    def term_weight(self, name: str) -> float:
        return self.weights[name]

    def log_name(self, name: str) -> str:
        return "l_vmf" if name == "l_ce" else name

    def margin_logs(self, norms, stats) -> Logs:
        m = self._logit_margin(norms.detach(), stats)
        return {
            "margin": (m / norms.clamp_min(1e-12)).mean(),  # mean effective cosine margin m / |z_i|
            "margin_logit": (m * self.s / stats["norm_stat"] if self.scale_normalised else m).mean(),
            "norm_stat": stats["norm_stat"],
        }
