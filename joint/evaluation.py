"""Evaluation of a model: verification targets (held-out identities, insightface `.bin`, LFW pairs), the
verification summary, the reconstruction error, the best value per target, and the one-line result.

`eval.targets` entries (joint.config.EvalConfig): ``heldout`` (the run's held-out set: held-out
identities, data.eval_root or data.eval_bin), a path to a `.bin`, or ``lfw:<pairs.txt>:<root>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from lh2face.config import ConfigError

from .config import TrainConfig, parse_eval_target, resolve_path

log = logging.getLogger("lh2face.train")

BEST_METRIC = "accuracy"  # the value whose best is kept per target (10-fold verification accuracy)


@dataclass
class EvalTarget:
    """One verification set: images (N, 3, S, S) float [0, 1] and pairs (i1, i2, issame), each (P,)."""

    name: str
    images: torch.Tensor
    pairs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    coeffs: Optional[torch.Tensor] = None  # ground-truth coefficients (N, P) for the reconstruction error


@dataclass
class BestValues:
    """Best `BEST_METRIC` per target name and the step it was reached."""

    values: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def update(self, step: int, results: Dict[str, Dict[str, Any]]) -> List[str]:
        """Record the step's results; returns the names of the targets that improved."""
        better = []
        for name, res in results.items():
            v = float(res.get(BEST_METRIC, float("nan")))
            old = self.values.get(name)
            if np.isfinite(v) and (old is None or v > old[BEST_METRIC]):
                self.values[name] = {BEST_METRIC: v, "step": step}
                better.append(name)
        return better


# -------------------------------------------------------------------------------------------- targets


def check_targets(cfg: TrainConfig) -> None:
    """ConfigError naming the first eval target whose files do not exist (before any work starts)."""
    for spec in cfg.eval.targets:
        kind, args = parse_eval_target(spec)
        for p in args:
            if not resolve_path(p).exists():
                raise ConfigError(f"eval.targets: '{spec}': {p} does not exist")


def images_tensor(paths: List[Path], size: int) -> torch.Tensor:
    """Read images (raising on a bad file, naming it) into (N, 3, size, size) float [0, 1]."""
    from recognition.data import ImageListDataset

    ds = ImageListDataset([(p, 0) for p in paths], image_size=size, on_error="raise")
    return torch.stack([ds[i][0] for i in range(len(ds))])


def load_bin_target(path: str, size: int) -> EvalTarget:
    from recognition.data import load_verification_bin

    from .data import _load_bin

    images, issame = _load_bin(load_verification_bin(str(resolve_path(path))), size)
    n = len(issame)
    return EvalTarget(Path(path).stem, images, (torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2),
                                                torch.as_tensor(issame)))


def load_lfw_target(pairs_txt: str, root: str, size: int, ext: str = "jpg") -> EvalTarget:
    from recognition.data import read_lfw_pairs

    pairs = read_lfw_pairs(resolve_path(pairs_txt), resolve_path(root), ext=ext)
    paths, idx1, idx2 = pairs.unique_paths()
    return EvalTarget("lfw", images_tensor(paths, size),
                      (torch.as_tensor(idx1), torch.as_tensor(idx2), torch.as_tensor(pairs.issame)))


def build_targets(cfg: TrainConfig, bundle: Any) -> List[EvalTarget]:
    """The eval targets of a run, in eval.targets order; `heldout` is skipped (with a log line) when the
    run has no held-out set."""
    out: List[EvalTarget] = []
    for spec in cfg.eval.targets:
        kind, args = parse_eval_target(spec)
        if kind == "heldout":
            if bundle.eval_images is None:
                log.info("eval target 'heldout': this run has no held-out set; skipped")
                continue
            coeffs = (bundle.extra or {}).get("coeffs")
            out.append(EvalTarget(bundle.eval_name, bundle.eval_images, bundle.eval_pairs, coeffs))
        elif kind == "bin":
            out.append(load_bin_target(args[0], cfg.data.image_size))
        else:
            out.append(load_lfw_target(args[0], args[1], cfg.data.image_size))
    names = [t.name for t in out]
    for i, t in enumerate(out):  # two .bin files with one stem: keep both, distinctly named
        if names.count(t.name) > 1:
            t.name = f"{t.name}_{i}"
    return out


# ----------------------------------------------------------------------------------------- evaluation


def verification_summary(emb: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor, same: torch.Tensor,
                         res: Dict[str, Any], n_folds: int) -> Dict[str, Any]:
    """TAR@FAR from all pairs (`res` of evaluate_pairs); accuracy (10-fold) on the balanced subset (every
    genuine pair and as many impostors) unless the pairs are balanced already, as in LFW / .bin sets."""
    from recognition.eval.verification import evaluate_pairs

    from .data import balanced_subset

    n_pos = int(same.sum())
    acc, std, label = res["accuracy"], res["accuracy_std"], "pairs"
    if 0 < n_pos and n_pos * 2 != len(same):
        b = balanced_subset(same)
        if len(b) >= 2 * n_folds:
            rb = evaluate_pairs(emb[i1[b]], emb[i2[b]], same[b].numpy().astype(bool), n_folds=n_folds)
            acc, std, label = rb["accuracy"], rb["accuracy_std"], "balanced"
    out: Dict[str, Any] = {"accuracy": float(acc), "accuracy_std": float(std), "accuracy_on": label,
                           "pairs": int(len(same)), "genuine": n_pos}
    for far, tar in res["tar_at_far"].items():
        out[f"tar@far={float(far):.0e}"] = float(tar)
    out["auc"] = float(res.get("auc", float("nan")))
    return out


@torch.no_grad()
def reconstruction_error(model: torch.nn.Module, images: torch.Tensor, coeffs: torch.Tensor, batch_size: int,
                         device: torch.device) -> float:
    """Mean vertex distance (mm, after similarity alignment; recon.losses.vertex_error_mm) between the
    neutral-expression identity shape of the regressed and of the ground-truth coefficients (N, P)."""
    from recon.losses import vertex_error_mm

    from .model import resize

    trunk = model.trunk
    mm, _, layout = trunk._assets(device)
    errs = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(device)
        pred = layout.split(trunk.regressor(resize(x, trunk.regressor_size)))["id"]
        gt = layout.split(coeffs[s : s + batch_size].to(device, pred.dtype))["id"]
        errs.append(vertex_error_mm(mm.shape(pred, None), mm.shape(gt, None)).double().cpu())
    return float(torch.cat(errs).mean())


@torch.no_grad()
def evaluate_target(model: torch.nn.Module, target: EvalTarget, cfg: TrainConfig, device: torch.device,
                    roc_path: Optional[Path] = None, label: str = "model", progress: bool = False) -> Dict[str, Any]:
    """Verification on a target (accuracy 10-fold, TAR@FAR, AUC) and, with ground-truth coefficients and
    a regressor, the reconstruction error in mm. The model's train / eval mode is restored."""
    from recognition.eval.features import extract_embeddings
    from recognition.eval.verification import evaluate_pairs

    was = model.training
    model.eval()
    try:
        emb = torch.as_tensor(extract_embeddings(lambda x: model.embed(x.to(device)).float(), target.images,
                                                 batch_size=cfg.eval.batch_size, flip=cfg.eval.flip,
                                                 progress=progress, desc=f"embed {target.name}"))
        i1, i2, same = target.pairs
        res = evaluate_pairs(emb[i1], emb[i2], same.numpy().astype(bool), n_folds=cfg.eval.n_folds)
        out = verification_summary(emb, i1, i2, same, res, cfg.eval.n_folds)
        if target.coeffs is not None and getattr(model.trunk, "regressor", None) is not None:
            out["vertex_error_mm"] = reconstruction_error(model, target.images, target.coeffs,
                                                          cfg.eval.batch_size, device)
        if roc_path is not None and cfg.run.plots:
            _plot_roc(roc_path, label, res)
        return out
    finally:
        model.train(was)


def _plot_roc(path: Path, label: str, res: Dict[str, Any]) -> None:
    try:
        from recognition.eval.plots import plot_roc

        plot_roc(path, {label: (np.asarray(res["fpr"]), np.asarray(res["tpr"]))})
    except Exception as exc:  # noqa: BLE001 - a plot must not stop training
        log.warning("ROC plot failed: %s", exc)


def format_result(res: Dict[str, Any]) -> str:
    """One human line with accuracy, TAR@FAR 1e-3 / 1e-2 and reconstruction error when present."""
    bal = " (balanced: every genuine pair + as many impostors)" if res.get("accuracy_on") == "balanced" else ""
    parts = [f"accuracy {res['accuracy']:.4f} +- {res['accuracy_std']:.4f}{bal}",
             f"{res['pairs']} pairs, {res['genuine']} genuine"]
    for far in ("1e-03", "1e-02"):
        k = f"tar@far={far}"
        if k in res and res[k] is not None:
            parts.append(f"TAR@FAR={far.replace('e-0', 'e-')} {res[k]:.4f}")
    if res.get("vertex_error_mm") is not None:
        parts.append(f"reconstruction error {res['vertex_error_mm']:.2f} mm")
    return ", ".join(parts)
