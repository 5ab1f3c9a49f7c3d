"""CosFace, ArcFace and AdaFace: pure margin functions and their heads.

References (formulas only): CosFace, Wang et al. CVPR 2018 (s (cos - m) on the target);
ArcFace, Deng et al. CVPR 2019 (s cos(theta + m) on the target, and the insightface fallback
cos - m sin(m) where theta + m > pi); AdaFace, Kim et al. CVPR 2022 (norm_hat = clip((|z| - mu) h / std,
-1, 1) with EMA batch statistics, g_angle = -m norm_hat, g_add = m norm_hat + m).
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn

from .base import Logs, MarginHead, check_positive, replace_target, target_values

__all__ = [
    "cosface_logits",
    "arcface_logits",
    "adaface_logits",
    "adaface_norm_hat",
    "CosFaceHead",
    "ArcFaceHead",
    "AdaFaceHead",
]


def cosface_logits(cos: torch.Tensor, target_col: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s * (cos - m [j = y]); cos (B, C), target_col (B,) (-1: no target here) -> (B, C)."""
    t = target_values(cos, target_col)
    return s * replace_target(cos, target_col, t - m)


def arcface_logits(
    cos: torch.Tensor, target_col: torch.Tensor, s: float, m: float, easy_margin: bool = False
) -> torch.Tensor:
    """s * cos(theta + m) on the target, s * cos elsewhere.

    easy_margin=False: where theta + m > pi (cos < cos(pi - m)) the target becomes cos - m sin(m),
    keeping the target logit monotone in theta. easy_margin=True: the margin only where cos > 0.
    """
    t = target_values(cos, target_col).clamp(-1.0, 1.0)
    sin = torch.sqrt((1.0 - t * t).clamp_min(1e-12))
    with_margin = t * math.cos(m) - sin * math.sin(m)
    if easy_margin:
        new_t = torch.where(t > 0, with_margin, t)
    else:
        new_t = torch.where(t > math.cos(math.pi - m), with_margin, t - m * math.sin(m))
    return s * replace_target(cos, target_col, new_t)


def adaface_norm_hat(norms: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, h: float, eps: float = 1e-3):
    """clip((clip(|z|, 1e-3, 100) - mean) / (std + eps) * h, -1, 1), detached. norms (B,) -> (B,)."""
    safe = norms.detach().clamp(1e-3, 100.0)
    return ((safe - mean) / (std + eps) * h).clamp(-1.0, 1.0)


def adaface_logits(
    cos: torch.Tensor, target_col: torch.Tensor, norm_hat: torch.Tensor, s: float, m: float, eps: float = 1e-3
) -> torch.Tensor:
    """AdaFace target logit s * (cos(clip(theta + g_angle, eps, pi - eps)) - g_add), others s * cos.

    g_angle = -m * norm_hat, g_add = m * norm_hat + m; norm_hat (B,) in [-1, 1] (detached).
    """
    t = target_values(cos, target_col)
    theta = torch.acos(t.clamp(-1.0 + eps, 1.0 - eps))
    g_angle = -m * norm_hat
    g_add = m * norm_hat + m
    new_t = torch.cos((theta + g_angle).clamp(eps, math.pi - eps)) - g_add
    return s * replace_target(cos, target_col, new_t)


class CosFaceHead(MarginHead):
    """CosFace (large margin cosine loss): s (cos - m) on the target column. Options s=64, m=0.35."""

    name = "cosface"

    def __init__(self, num_classes: int, embedding_size: int = 512, s: float = 64.0, m: float = 0.35,
                 weight_init_std: float = 0.01) -> None:
        super().__init__(num_classes, embedding_size, weight_init_std)
        check_positive(self.name, s=s)
        self.s, self.m = float(s), float(m)

    def margin_logits(self, cos, norms, target_col, stats):
        return cosface_logits(cos, target_col, self.s, self.m)

    def margin_logs(self, norms, stats) -> Logs:
        return {"margin": torch.full((), self.m, device=norms.device)}

    def log_name(self, name: str) -> str:
        return "l_cosface" if name == "l_ce" else name


class ArcFaceHead(MarginHead):
    """ArcFace (additive angular margin): s cos(theta + m). Options s=64, m=0.5, easy_margin=False."""

    name = "arcface"

    def __init__(self, num_classes: int, embedding_size: int = 512, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False, weight_init_std: float = 0.01) -> None:
        super().__init__(num_classes, embedding_size, weight_init_std)
        check_positive(self.name, s=s)
        if not 0.0 <= m < math.pi / 2:
            raise ValueError(f"head 'arcface': option m must be in [0, pi/2) radians, got {m}")
        self.s, self.m, self.easy_margin = float(s), float(m), bool(easy_margin)

    def margin_logits(self, cos, norms, target_col, stats):
        return arcface_logits(cos, target_col, self.s, self.m, self.easy_margin)

    def margin_logs(self, norms, stats) -> Logs:
        return {"margin": torch.full((), self.m, device=norms.device)}

    def log_name(self, name: str) -> str:
        return "l_arcface" if name == "l_ce" else name


class AdaFaceHead(MarginHead):
    """AdaFace: feature-norm adaptive margin. Options m=0.4, h=0.333, s=64, t_alpha=0.01 (EMA momentum
    of the batch norm mean/std), eps=1e-3. Buffers batch_mean (init 20) and batch_std (init 100) are
    updated in training mode before use, as published; norms are detached.
    """

    name = "adaface"

    def __init__(self, num_classes: int, embedding_size: int = 512, m: float = 0.4, h: float = 0.333,
                 s: float = 64.0, t_alpha: float = 0.01, eps: float = 1e-3, weight_init_std: float = 0.01) -> None:
        super().__init__(num_classes, embedding_size, weight_init_std)
        check_positive(self.name, s=s, h=h, eps=eps)
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(f"head 'adaface': option t_alpha must be in [0, 1], got {t_alpha}")
        self.m, self.h, self.s, self.t_alpha, self.eps = float(m), float(h), float(s), float(t_alpha), float(eps)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def batch_statistics(self, norms: torch.Tensor, ctx=None) -> Dict[str, torch.Tensor]:
        if self.training:
            safe = norms.detach().clamp(1e-3, 100.0).to(self.batch_mean.dtype)
            b = safe.shape[0]
            mean = safe.mean()
            std = torch.sqrt(((safe - mean) ** 2).sum() / max(b - 1, 1))  # unbiased, as torch.std
            with torch.no_grad():
                self.batch_mean.mul_(1.0 - self.t_alpha).add_(self.t_alpha * mean)
                self.batch_std.mul_(1.0 - self.t_alpha).add_(self.t_alpha * std)
        norm_hat = adaface_norm_hat(norms, self.batch_mean, self.batch_std, self.h, self.eps)
        return {"norm_hat": norm_hat, "batch_mean": self.batch_mean.clone(), "batch_std": self.batch_std.clone()}

    def margin_logits(self, cos, norms, target_col, stats):
        return adaface_logits(cos, target_col, stats["norm_hat"], self.s, self.m, self.eps)

    def margin_logs(self, norms, stats) -> Logs:
        nh = stats["norm_hat"]
        return {
            "margin": (self.m * nh + self.m).mean(),  # mean additive margin g_add
            "margin_angle": (-self.m * nh).mean(),  # mean angular margin g_angle
            "norm_ema_mean": stats["batch_mean"],
            "norm_ema_std": stats["batch_std"],
        }

    def log_name(self, name: str) -> str:
        return "l_adaface" if name == "l_ce" else name
