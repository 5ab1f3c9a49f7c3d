"""The experiment driver: heads x input modes x seeds under one budget, plus ablation variants.

    lh2face study --config configs/study_synthetic.yaml [--out DIR] [--jobs 2] [--report-only]
    lh2face study --config configs/study_modes.yaml      # the four input modes at the demo budget

A study config has two sections (both strict: unknown keys are errors):

    study:   which heads / input modes / seeds to train, the ablation variants, norm bins, plot folder
    train:   one ordinary training config (joint.config.TrainConfig); every run of the study is this
             config with model.head, model.head_options, model.input_mode and run.seed replaced

Every run trains on the same data bundle (same training images, same held-out identities and pairs), with
the same steps / batch / optimizer, and differs only in head, input mode and seed.

Input modes (joint.config.INPUT_MODES) have one meaning, here as in `lh2face train`: which channels the
backbone sees. ``rgb`` the image; ``rgb+canonical`` the image and the canonical-pose render of the
regressed face; ``rgb+depth`` the image and the depth render; ``rgb+canonical+depth`` all three (7
channels). Whether the reconstruction branch trains is decided by the loss lambdas (``train.loss``),
in every mode alike: with ``loss.reco > 0`` an ``rgb`` run still trains the regressor through L_reco.
``study.loss_by_mode`` replaces lambdas for the runs of one mode, e.g. ``{rgb: {reco: 0.0}}`` makes the
rgb runs the plain recognition model (no regressor at all; configs/study_synthetic.yaml does this).

After training, the final checkpoint embeds the held-out images (flip-test: e(x) + e(flip x),
un-normalised so the norm is kept) and the run's metrics are computed from those embeddings:

- verification accuracy (10-fold, on the balanced pair subset as `lh2face train` reports it), TAR at
  FAR 1e-3 / 1e-2 over all held-out pairs, AUC;
- TAR per feature-norm bin: pairs are ranked by min(|z1|, |z2|) and split into ``norm_bins`` equal-count
  (quantile) bins (bin 1 = lowest norms); the threshold is the global one for the FAR (one operating point for the whole set, as a
  deployed system has) and TAR is the fraction of the bin's genuine pairs accepted; the bin's own FAR is
  stored too.

Layout of the output folder::

    runs/grid/<head>/<mode>/seed<k>/        a training run (config.yaml, metrics, checkpoints, results.json)
        study_run.json, embeddings.npz      the study's metrics for the run and the held-out embeddings
    runs/ablation/<variant>/<mode>/seed<k>/ the same for the ablation variants
    study.json, study.md                    aggregated table (mean +- std over seeds; reconstruction error
                                            in mm when the runs measured it) and per-run values
    <plots_dir>/<prefix>roc_<mode>.png, <prefix>normbins_<mode>.png

Resumable: a run with study_run.json is skipped; a run with checkpoints but no study_run.json resumes from
its last checkpoint. ``--jobs N`` starts N worker processes that claim runs one at a time (a claim file
holds the worker's pid; a claim whose process is gone is taken over), then writes the report.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lh2face.config import ConfigError, from_dict, load_yaml, merge_overrides, to_dict

from .config import INPUT_MODES

HEADS = ("lh2face", "arcface", "cosface", "adaface")
STUDY_MODES = (INPUT_MODES[0], INPUT_MODES[-1])  # rgb and rgb+canonical+depth


# ----------------------------------------------------------------------------------------- config


@dataclass
class AblationVariant:
    """One ablation row: a head (by default lh2face) with options, in one input mode."""

    name: str = ""
    head: str = "lh2face"
    head_options: Dict[str, Any] = field(default_factory=dict)
    input_mode: str = "rgb"
    note: str = ""


@dataclass
class StudySection:
    name: str = "study"
    out: str = "runs/study"
    heads: List[str] = field(default_factory=lambda: list(HEADS))
    input_modes: List[str] = field(default_factory=lambda: list(STUDY_MODES))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    head_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per head name
    loss_by_mode: Dict[str, Dict[str, float]] = field(default_factory=dict)  # mode -> loss lambdas replaced
    ablation: List[AblationVariant] = field(default_factory=list)
    ablation_seeds: List[int] = field(default_factory=lambda: [0])
    norm_bins: int = 4
    fars: List[float] = field(default_factory=lambda: [1e-3, 1e-2])
    bin_far: float = 1e-2  # the FAR whose per-bin TAR is plotted
    plots_dir: str = ""  # default <out>/plots
    plot_prefix: str = ""  # file-name prefix of the plots (e.g. study_synthetic_)


@dataclass
class StudyConfig:
    study: StudySection = field(default_factory=StudySection)
    train: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSpec:
    group: str  # grid | ablation
    variant: str  # head name (grid) or ablation variant name
    head: str
    head_options: Dict[str, Any]
    mode: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.group}/{self.variant}/{mode_tag(self.mode)}/seed{self.seed}"


def mode_tag(mode: str) -> str:
    return mode.replace("+", "_")


def load_study_config(path: str, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and check a study YAML (strict); the `train` section is checked as a TrainConfig too."""
    raw = merge_overrides(load_yaml(path), overrides)
    cfg = from_dict(StudyConfig, raw)
    per_run = {"head": "study.heads", "head_options": "study.head_options", "input_mode": "study.input_modes"}
    for k, where in per_run.items():
        if k in ((raw.get("train") or {}).get("model") or {}):
            raise ConfigError(f"train.model.{k}: the study sets it per run; use {where} instead")
    if "seed" in ((raw.get("train") or {}).get("run") or {}) and "seeds" not in (raw.get("study") or {}):
        pass  # run.seed only seeds the shared data split / pairs; study.seeds seed the runs
    s = cfg.study
    if not s.seeds:
        raise ConfigError("study.seeds: at least one seed is needed")
    for m in list(s.input_modes) + [v.input_mode for v in s.ablation]:
        if m not in INPUT_MODES:
            raise ConfigError(f"study input mode '{m}' is not one of {list(INPUT_MODES)}")
    names = [v.name for v in s.ablation]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError("study.ablation: every variant needs a unique, non-empty name")
    if s.norm_bins < 1:
        raise ConfigError("study.norm_bins must be >= 1")
    for f in list(s.fars) + [s.bin_far]:
        if not 0 < f < 1:
            raise ConfigError(f"study.fars / bin_far: {f} is not in (0, 1)")
    for m in s.loss_by_mode:
        if m not in INPUT_MODES:
            raise ConfigError(f"study.loss_by_mode: '{m}' is not one of {list(INPUT_MODES)}")
    for h in s.head_options:
        if h not in s.heads:
            raise ConfigError(f"study.head_options: '{h}' is not one of study.heads {s.heads}")
    for spec in plan_runs(cfg):  # every run's training config must be valid before any work
        run_config(cfg, spec)
    return cfg


def plan_runs(cfg: StudyConfig) -> List[RunSpec]:
    """Every run of the study: the grid (mode-major, so a worker pool mixes cheap and costly runs) then
    the ablation."""
    s = cfg.study
    runs = []
    for seed in s.seeds:
        for mode in s.input_modes:
            for head in s.heads:
                runs.append(RunSpec("grid", head, head, dict(s.head_options.get(head, {})), mode, seed))
    for seed in s.ablation_seeds:
        for v in s.ablation:
            runs.append(RunSpec("ablation", v.name, v.head, dict(v.head_options), v.input_mode, seed))
    return runs


def run_config(cfg: StudyConfig, spec: RunSpec, out_dir: Optional[Path] = None) -> Any:
    """The TrainConfig of one run."""
    from .config import LossConfig, TrainConfig, validate

    data = copy.deepcopy(cfg.train)
    tc = from_dict(TrainConfig, data, prefix="train")
    tc.model.head = spec.head
    tc.model.head_options = dict(spec.head_options)
    tc.model.input_mode = spec.mode
    tc.run.seed = int(spec.seed)
    if spec.mode in cfg.study.loss_by_mode:
        lam = dict(to_dict(tc.loss), **cfg.study.loss_by_mode[spec.mode])
        tc.loss = from_dict(LossConfig, lam, prefix=f"study.loss_by_mode.{spec.mode}")
    if out_dir is not None:
        tc.run.out = str(out_dir)
    try:
        return validate(tc)
    except ConfigError as exc:
        raise ConfigError(f"run {spec.key}: {exc}") from None


# ------------------------------------------------------------------------------------------ metrics


def pair_metrics(emb: np.ndarray, i1: np.ndarray, i2: np.ndarray, same: np.ndarray, fars: Sequence[float],
                 norm_bins: int = 4, n_folds: int = 10) -> Dict[str, Any]:
    """Verification metrics of un-normalised embeddings on pairs, plus TAR per min-norm quantile bin.

    emb (N, d); i1, i2 (P,) indices; same (P,) bool. Returns accuracy (balanced pairs), accuracy_std,
    tar@far=<f>, auc, roc (FAR grid + TAR), mean_norm and `norm_bins`: a list of bins (lowest norms first)
    with edges, pair counts and per FAR the TAR at the global threshold and the bin's own FAR."""
    import torch

    from recognition.eval.metrics import tar_at_far_details
    from recognition.eval.verification import cosine_similarity, evaluate_pairs

    from .evaluation import verification_summary

    emb = np.asarray(emb, dtype=np.float64)
    i1, i2, same = np.asarray(i1), np.asarray(i2), np.asarray(same).astype(bool)
    all_fars = sorted(set([1e-4, 1e-3, 1e-2, 1e-1] + [float(f) for f in fars]))
    res = evaluate_pairs(emb[i1], emb[i2], same, n_folds=n_folds)
    out = verification_summary(torch.as_tensor(emb), torch.as_tensor(i1), torch.as_tensor(i2), torch.as_tensor(same),
                               res, n_folds)
    scores = cosine_similarity(emb[i1], emb[i2])
    details = tar_at_far_details(scores, same, all_fars)
    for f, d in details.items():
        out[f"tar@far={f:.0e}"] = d["tar"]
    grid = np.logspace(-4, 0, 41)
    fpr, tpr = np.asarray(res["fpr"]), np.asarray(res["tpr"])
    out["roc"] = {"far": grid.tolist(), "tar": [float(tpr[max(0, np.searchsorted(fpr, g, side="right") - 1)]) for g in grid]}
    norms = np.linalg.norm(emb, axis=1)
    out["mean_norm"] = float(norms.mean())
    pmin = np.minimum(norms[i1], norms[i2])
    # equal-count bins by rank (ties in the norm cannot empty a bin or pile into the last one)
    which = np.empty(len(pmin), dtype=np.int64)
    which[np.argsort(pmin, kind="stable")] = np.arange(len(pmin)) * norm_bins // max(1, len(pmin))
    bins = []
    for b in range(norm_bins):
        inb = which == b
        g, n = inb & same, inb & ~same
        lo, hi = (float(pmin[inb].min()), float(pmin[inb].max())) if inb.any() else (float("nan"), float("nan"))
        entry: Dict[str, Any] = {"bin": b + 1, "lo": lo, "hi": hi,
                                 "genuine": int(g.sum()), "impostor": int(n.sum())}
        for f in fars:
            thr = details[float(f)]["threshold"]
            entry[f"tar@far={f:.0e}"] = float((scores[g] >= thr).mean()) if g.any() and details[float(f)]["reliable"] else float("nan")
            entry[f"far_in_bin@far={f:.0e}"] = float((scores[n] >= thr).mean()) if n.any() else float("nan")
        bins.append(entry)
    out["norm_bins"] = bins
    return out


# --------------------------------------------------------------------------------------- one run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run_dir: Path) -> bool:
    """Claim a run for this process (O_EXCL claim file holding the pid); a dead owner's claim is taken."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".claim"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():
                return True
            if pid > 0 and _pid_alive(pid):
                return False
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def release(run_dir: Path) -> None:
    try:
        (run_dir / ".claim").unlink()
    except FileNotFoundError:
        pass


def embed_final(cfg: Any, result_path: Path, data: Any) -> np.ndarray:
    """Held-out embeddings (flip-test sum, un-normalised) of the run's final checkpoint."""
    import torch

    from lh2face.io import load_checkpoint
    from recognition.eval.features import extract_embeddings

    from .model import JointModel

    state = load_checkpoint(result_path, map_location="cpu")
    model = JointModel.from_config(cfg, int(state.get("num_classes", data.num_classes)))
    model.load_state_dict(state["model"])
    model.eval()
    with torch.no_grad():
        emb = extract_embeddings(lambda x: model.embed(x).float(), data.eval_images, batch_size=cfg.eval.batch_size,
                                 flip=cfg.eval.flip, progress=False)
    return np.asarray(emb, dtype=np.float32)


def run_one(cfg: StudyConfig, spec: RunSpec, out: Path, data: Any) -> Dict[str, Any]:
    """Train (or resume) one run, embed the held-out set with its final checkpoint, write study_run.json."""
    import json

    from lh2face.io import atomic_write, write_json_atomic

    from .train import train

    run_dir = out / "runs" / spec.key
    tc = run_config(cfg, spec, run_dir)
    t0 = time.perf_counter()
    train(tc, out=str(run_dir), resume=True, data=data)
    train_s = time.perf_counter() - t0
    final = json.loads((run_dir / "results.json").read_text())
    emb = embed_final(tc, Path(final["checkpoint"]), data)
    i1, i2, same = (t.numpy() for t in data.eval_pairs)
    with atomic_write(run_dir / "embeddings.npz") as fh:
        np.savez_compressed(fh, emb=emb, labels=data.eval_labels.numpy() if data.eval_labels is not None else np.zeros(0),
                            i1=i1, i2=i2, same=same)
    m = pair_metrics(emb, i1, i2, same, cfg.study.fars, cfg.study.norm_bins, tc.eval.n_folds)
    rec = {"key": spec.key, "group": spec.group, "variant": spec.variant, "head": spec.head,
           "head_options": spec.head_options, "mode": spec.mode, "seed": spec.seed, "steps": tc.schedule.steps,
           "batch_size": tc.schedule.batch_size, "train_s": train_s, "metrics": m,
           "vertex_error_mm": (final.get("eval") or {}).get("vertex_error_mm")}
    write_json_atomic(run_dir / "study_run.json", rec)
    return rec


def worker(cfg: StudyConfig, out: Path, only: Optional[str] = None) -> int:
    """Claim and run unfinished runs until none is left; returns the number of runs done here."""
    import logging

    from .data import build_data
    from .config import TrainConfig

    done_here = 0
    data = None
    logging.basicConfig(level=logging.WARNING)
    for spec in plan_runs(cfg):
        if only and only not in spec.key:
            continue
        run_dir = out / "runs" / spec.key
        if (run_dir / "study_run.json").exists():
            continue
        if not claim(run_dir):
            continue
        try:
            if (run_dir / "study_run.json").exists():
                continue
            if data is None:
                base = from_dict(TrainConfig, copy.deepcopy(cfg.train), prefix="train")
                data = build_data(base.data, base.eval, seed=base.run.seed)
                if data.eval_images is None:
                    raise ConfigError("the study needs held-out identities (data.eval_identities / "
                                      "synth_eval_identities or data.eval_root)")
            t0 = time.perf_counter()
            rec = run_one(cfg, spec, out, data)
            m = rec["metrics"]
            print(f"[study pid {os.getpid()}] {spec.key}: accuracy {m['accuracy']:.4f}, "
                  f"TAR@FAR=1e-3 {m['tar@far=1e-03']:.4f}, TAR@FAR=1e-2 {m['tar@far=1e-02']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            done_here += 1
        finally:
            release(run_dir)
    return done_here


# ----------------------------------------------------------------------------------------- report


def _mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def collect(cfg: StudyConfig, out: Path) -> List[Dict[str, Any]]:
    import json

    recs = []
    for spec in plan_runs(cfg):
        p = out / "runs" / spec.key / "study_run.json"
        if not p.exists():
            continue
        rec = json.loads(p.read_text())
        e = p.parent / "embeddings.npz"
        if e.exists():  # metrics from the stored embeddings with this code and the current bins / FARs
            with np.load(e) as z:
                rec["metrics"] = pair_metrics(z["emb"], z["i1"], z["i2"], z["same"], cfg.study.fars,
                                              cfg.study.norm_bins, int(((cfg.train.get("eval") or {}).get("n_folds", 10))))
        recs.append(rec)
    return recs


def aggregate(recs: List[Dict[str, Any]], fars: Sequence[float], norm_bins: int) -> List[Dict[str, Any]]:
    """Mean +- std over seeds for each (group, variant, mode)."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["group"], r["variant"], r["mode"]), []).append(r)
    rows = []
    for (group, variant, mode), rs in groups.items():
        row: Dict[str, Any] = {"group": group, "variant": variant, "mode": mode, "head": rs[0]["head"],
                               "head_options": rs[0]["head_options"], "seeds": sorted(r["seed"] for r in rs)}
        keys = ["accuracy", "auc", "mean_norm"] + [f"tar@far={f:.0e}" for f in fars]
        for k in keys:
            row[k] = _mean_std([r["metrics"].get(k) for r in rs])[:2]
        row["train_s"] = _mean_std([r["train_s"] for r in rs])[:2]
        row["vertex_error_mm"] = _mean_std([r.get("vertex_error_mm") for r in rs])[:2]
        row["norm_bins"] = []
        for b in range(norm_bins):
            e: Dict[str, Any] = {"bin": b + 1}
            for f in fars:
                k = f"tar@far={f:.0e}"
                e[k] = _mean_std([r["metrics"]["norm_bins"][b][k] for r in rs if len(r["metrics"]["norm_bins"]) > b])[:2]
            row["norm_bins"].append(e)
        grid = np.asarray(rs[0]["metrics"]["roc"]["far"])
        row["roc"] = {"far": grid.tolist(), "tar": np.mean([r["metrics"]["roc"]["tar"] for r in rs], axis=0).tolist()}
        rows.append(row)
    return rows


def _pm(v: Tuple[float, float], digits: int = 3) -> str:
    m, s = v
    if m is None or math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} +- {s:.{digits}f}"


def markdown(cfg: StudyConfig, rows: List[Dict[str, Any]], plots: Dict[str, str], n_runs: int, n_planned: int) -> str:
    s = cfg.study
    fars = list(s.fars)
    lines = [f"# Study `{s.name}`", "",
             f"{n_runs} of {n_planned} planned runs finished. Mean +- sample std over seeds; accuracy on the balanced "
             f"held-out pairs (10-fold), TAR@FAR over all held-out pairs; low / high norm = TAR@FAR={s.bin_far:.0e} "
             f"(global threshold) on the pairs in the lowest / highest of {s.norm_bins} min(|z1|,|z2|) quantile bins.", ""]
    err = any(not math.isnan(r["vertex_error_mm"][0]) for r in rows)  # a column only when measured
    head = ("| mode | head | seeds | accuracy | " + " | ".join(f"TAR@FAR={f:.0e}" for f in fars)
            + " | low norm TAR | high norm TAR | mean norm |" + (" recon error (mm) |" if err else ""))
    sep = "|" + "---|" * (7 + len(fars) + int(err))
    bk = f"tar@far={s.bin_far:.0e}"
    for group, title in (("grid", "## Heads x input modes"), ("ablation", "## LH2Face ablation")):
        sel = [r for r in rows if r["group"] == group]
        if not sel:
            continue
        lines += [title, "", head.replace("| head |", "| variant |") if group == "ablation" else head, sep]
        order = {h: i for i, h in enumerate(s.heads + ["lh2face (reference: grid run)"] + [v.name for v in s.ablation])}
        sel.sort(key=lambda r: (s.input_modes.index(r["mode"]) if r["mode"] in s.input_modes else 99,
                                order.get(r["variant"], 99)))
        for r in sel:
            nb = r["norm_bins"]
            lo = _pm(nb[0][bk]) if nb and bk in nb[0] else "n/a"
            hi = _pm(nb[-1][bk]) if nb and bk in nb[-1] else "n/a"
            lines.append(f"| {r['mode']} | {r['variant']} | {len(r['seeds'])} | {_pm(r['accuracy'])} | "
                         + " | ".join(_pm(r[f"tar@far={f:.0e}"]) for f in fars)
                         + f" | {lo} | {hi} | {r['mean_norm'][0]:.1f} |"
                         + (f" {_pm(r['vertex_error_mm'], 2)} |" if err else ""))
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    return "\n".join(lines)


def plot_norm_bins(path: Path, rows: List[Dict[str, Any]], key: str, n_bins: int, title: str) -> None:
    """TAR per min-norm quantile bin, one line per head (mean over seeds, error bars = std), to a PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lh2face.io import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    k = len(rows)
    for j, r in enumerate(rows):
        xs = np.asarray([b["bin"] for b in r["norm_bins"]], dtype=float) + (j - (k - 1) / 2) * 0.06
        ys = [b[key][0] for b in r["norm_bins"]]
        es = [b[key][1] for b in r["norm_bins"]]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{r['variant']} ({len(r['seeds'])} seeds)")
    ax.set_xticks(range(1, n_bins + 1))
    ax.set_xticklabels([f"{i}" + (" (low)" if i == 1 else " (high)" if i == n_bins else "") for i in range(1, n_bins + 1)])
    ax.set_xlabel("min(|z1|, |z2|) quantile bin of the pair")
    ax.set_ylabel(key.replace("tar@far=", "TAR@FAR=") + " (global threshold)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, linestyle=":", linewidth=0.6)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def make_plots(cfg: StudyConfig, rows: List[Dict[str, Any]], plots_dir: Path) -> Dict[str, Path]:
    """ROC per head (one figure per input mode; TAR averaged over seeds on a FAR grid) and TAR@bin_far
    per norm bin per head."""
    from recognition.eval.plots import plot_roc

    s = cfg.study
    made: Dict[str, Path] = {}
    bk = f"tar@far={s.bin_far:.0e}"
    for mode in s.input_modes:
        sel = [r for r in rows if r["group"] == "grid" and r["mode"] == mode]
        if not sel:
            continue
        curves = {f"{r['variant']} ({len(r['seeds'])} seeds)": (np.asarray(r["roc"]["far"]), np.asarray(r["roc"]["tar"]))
                  for r in sel}
        p = plots_dir / f"{s.plot_prefix}roc_{mode_tag(mode)}.png"
        plot_roc(p, curves, title=f"{s.name}, {mode}: ROC (TAR mean over seeds)", far_range=(1e-4, 1.0),
                 marks=(1e-4, 1e-3, 1e-2, 1e-1, 1.0))
        made[f"ROC {mode}"] = p
        p = plots_dir / f"{s.plot_prefix}normbins_{mode_tag(mode)}.png"
        plot_norm_bins(p, sel, bk, s.norm_bins, title=f"{s.name}, {mode}: TAR@FAR={s.bin_far:.0e} per norm bin")
        made[f"norm bins {mode}"] = p
    return made


def report(cfg: StudyConfig, out: Path) -> str:
    from lh2face.io import write_json_atomic, write_text_atomic

    recs = collect(cfg, out)
    rows = aggregate(recs, cfg.study.fars, cfg.study.norm_bins)
    # the ablation's reference: the full LH2Face head of the grid, same modes and seeds as the ablation
    s = cfg.study
    ab_modes = {v.input_mode for v in s.ablation}
    ref = [dict(r, group="ablation", variant="lh2face (reference: grid run)") for r in recs
           if r["group"] == "grid" and r["head"] == "lh2face" and not r["head_options"] and r["mode"] in ab_modes
           and r["seed"] in s.ablation_seeds]
    if s.ablation and ref:
        rows += aggregate(ref, s.fars, s.norm_bins)
    plots_dir = Path(cfg.study.plots_dir) if cfg.study.plots_dir else out / "plots"
    plots: Dict[str, str] = {}
    if rows:
        made = make_plots(cfg, rows, plots_dir)
        for k, p in made.items():
            plots[k] = os.path.relpath(p, out)
    n_planned = len(plan_runs(cfg))
    summary = {"name": cfg.study.name, "study": to_dict(cfg.study), "train": cfg.train, "finished": len(recs),
               "planned": n_planned,
               "rows": [{k: v for k, v in r.items() if k != "roc"} for r in rows],
               "runs": [{k: v for k, v in r.items() if k != "metrics"} | {"metrics": {k: v for k, v in r["metrics"].items() if k not in ("roc",)}}
                        for r in recs]}
    write_json_atomic(out / "study.json", summary)
    md = markdown(cfg, rows, plots, len(recs), n_planned)
    write_text_atomic(out / "study.md", md)
    return md
