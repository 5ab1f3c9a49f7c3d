"""Training configuration: YAML -> dataclasses, strict (unknown keys and wrong types are errors).

Sections: ``data``, ``model``, ``recon``, ``loss``, ``optim``, ``schedule``, ``eval``, ``run``.
`load_train_config` also checks what can be checked before any work starts (paths exist, head and
backbone names are registered, values in range) and raises `ConfigError` with one clear line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args

from lh2face.config import ConfigError, dump_yaml, from_dict, load_yaml, merge_overrides
from recon.losses import ReconLossWeights

# The input modes: which channels the backbone sees (nothing else). rgb = the image (3 channels);
# +canonical = the canonical-pose render of the regressed face (3 more); +depth = its depth (1 more).
# Whether the reconstruction branch trains is the `loss` section's business (uses_recon), not the mode's.
InputMode = Literal["rgb", "rgb+canonical", "rgb+depth", "rgb+canonical+depth"]
INPUT_MODES = get_args(InputMode)


@dataclass
class DataConfig:
    """Where the images come from and how identities are split into train / held-out eval."""

    kind: Literal["imagefolder", "recordio", "synthetic"] = "imagefolder"
    root: str = "assets/att_faces"  # ImageFolder root (one folder per identity)
    rec: Optional[str] = None  # RecordIO .rec (kind=recordio)
    idx: Optional[str] = None  # RecordIO .idx (default: beside .rec)
    # Identity split for one folder: the first `train_identities` identities (sorted folder names)
    # train, the next `eval_identities` are held out for verification (0 = all the rest).
    train_identities: int = 0  # 0 = all identities train (then eval_root / eval_bin is needed for eval)
    eval_identities: int = 0
    eval_root: Optional[str] = None  # separate ImageFolder of held-out identities
    eval_bin: Optional[str] = None  # insightface verification .bin
    image_size: int = 112
    flip: bool = True  # random horizontal flip while training
    num_workers: int = 0
    max_bad_fraction: float = 0.01  # stop when more than this fraction of samples fail to load
    # synthetic faces (kind=synthetic, recon.synth.SyntheticFaces)
    synth_identities: int = 64
    synth_images: int = 8
    synth_eval_identities: int = 16
    synth_eval_images: int = 6
    synth_seed: int = 0
    synth_options: Dict[str, Any] = field(default_factory=dict)  # recon.synth.SynthOptions fields (yaw, ...)


@dataclass
class ModelConfig:
    backbone: str = "mobilefacenet"
    backbone_options: Dict[str, Any] = field(default_factory=dict)
    embedding_size: int = 512
    head: str = "lh2face"
    head_options: Dict[str, Any] = field(default_factory=dict)
    input_mode: InputMode = "rgb"
    sharded_sample_rate: float = 1.0  # Partial-FC negative proxy sampling rate (world > 1)
    # Start from these weights (joint.init.init_from): a run folder / lh2face checkpoint, or an insightface-
    # style IResNet state dict (.pth); a 3-channel stem is widened to the input mode's channels. None = scratch.
    init_from: Optional[str] = None


@dataclass
class ReconConfig:
    """The reconstruction branch (used when input_mode is not 'rgb' or any recon lambda is > 0).

    `weights` holds every L_reco term weight (recon.losses.ReconLossWeights: photometric, landmark,
    prior_id, prior_expr, prior_albedo, prior_expr_range, light, gt_coeffs, gt_shape); `loss.reco` scales
    L_reco as a whole inside L_train. Ground-truth terms apply only when the data set has coefficients.
    """

    renderer: str = "auto"
    # where the regressor starts: "default" = the bundled pretrained regressor (assets/regressor/, or a
    # fresh one when regressor_options ask for another architecture), "none" = from scratch, or a path
    regressor_init: str = "default"
    regressor_options: Dict[str, Any] = field(default_factory=dict)
    # the regressor sees the image resized to this size (0 = the pretrained regressor's own size, or
    # data.image_size for a fresh regressor)
    regressor_size: int = 0
    weights: ReconLossWeights = field(default_factory=ReconLossWeights)
    view_yaw_deg: float = 30.0  # novel view for L_view: yaw perturbation drawn from +-this
    view_pitch_deg: float = 10.0


@dataclass
class LossConfig:
    """L_train = L_FR + reco L_reco + canon L_FR^canon + view L_view.

    aux_fraction: L_FR^canon and L_view are computed on a random subset of max(2, ceil(aux_fraction x B))
    rows of each batch of B (at most B; BatchNorm needs two rows), drawn from torch's RNG: only those rows'
    canonical-input / novel-view images go through the backbone, and the two terms are means over them
    (an unbiased but noisier estimate of the full-batch terms). 1.0 = every row (draws nothing). The
    default 0.25 keeps the step with every term on within 2.5x the FR-only step (docs/BENCH.md section 7).
    """

    reco: float = 0.0
    canon: float = 0.0
    view: float = 0.0
    aux_fraction: float = 0.25


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    head_lr_mult: float = 1.0
    regressor_lr_mult: float = 1.0  # lr x this for trunk.regressor.* (the pretrained reconstruction regressor)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 5.0  # max global grad norm; 0 = off


@dataclass
class ScheduleConfig:
    steps: int = 1000
    batch_size: int = 64  # per process
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 200
    keep_checkpoints: int = 2


def parse_eval_target(spec: str) -> Tuple[str, Tuple[str, ...]]:
    """('heldout', ()), ('bin', (path,)) or ('lfw', (pairs, root)); ValueError for anything else."""
    if spec == "heldout":
        return "heldout", ()
    if spec.startswith("lfw:"):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"eval.targets: '{spec}' must be lfw:<pairs.txt>:<image root>")
        return "lfw", (parts[1], parts[2])
    if spec.endswith(".bin"):
        return "bin", (spec,)
    raise ValueError(f"eval.targets: '{spec}' is not 'heldout', a .bin path or lfw:<pairs.txt>:<root>")


@dataclass
class EvalConfig:
    """Verification during and after training.

    targets: evaluated every schedule.eval_every steps and at the end, in order; each entry is
    ``heldout`` (the run's held-out set: held-out identities, data.eval_root or data.eval_bin), a path to
    an insightface ``.bin`` or ``lfw:<pairs.txt>:<image root>``. The best 10-fold verification *accuracy*
    per target (and its step) is kept in results.json; the checkpoint at the best accuracy of the first
    target is saved as ``best.pt`` in the run folder.
    """

    n_folds: int = 10
    flip: bool = True
    max_pairs: int = 20000  # cap on verification pairs built from held-out identities
    batch_size: int = 64
    targets: List[str] = field(default_factory=lambda: ["heldout"])

    def __post_init__(self) -> None:
        for spec in self.targets:
            parse_eval_target(spec)  # ValueError (-> ConfigError naming eval) for a malformed entry


@dataclass
class RunConfig:
    out: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True  # events in <run>/tb when the tensorboard package is installed (one log line says)
    plots: bool = True
    threads: int = 0  # torch.set_num_threads; 0 = leave as is
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | gloo | nccl


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def uses_recon(self) -> bool:
        """True when the reconstruction branch is needed."""
        return self.model.input_mode != "rgb" or any(
            v > 0 for v in (self.loss.reco, self.loss.canon, self.loss.view)
        )


def resolve_path(path: Union[str, Path]) -> Path:
    """A config path: absolute, relative to the working directory, or a bundled `assets/...` path."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    parts = p.parts
    if parts and parts[0] == "assets":
        from lh2face.paths import assets_dir

        q = assets_dir().joinpath(*parts[1:])
        if q.exists():
            return q
    return p


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: TrainConfig, check_names: bool = True, check_paths: bool = True) -> TrainConfig:
    """Check value ranges, data paths and registry names; raise ConfigError with one clear line."""
    d, s, o = cfg.data, cfg.schedule, cfg.optim
    _check(s.steps > 0, f"schedule.steps must be > 0, got {s.steps}")
    _check(s.batch_size > 0, f"schedule.batch_size must be > 0, got {s.batch_size}")
    _check(s.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}")
    _check(s.checkpoint_every >= 0, "schedule.checkpoint_every must be >= 0 (0 = only at the end)")
    _check(s.keep_checkpoints >= 2, "schedule.keep_checkpoints must be >= 2 (a fallback is kept)")
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(len(o.betas) == 2, f"optim.betas must have two values, got {o.betas}")
    _check(o.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {o.grad_clip}")
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction must be in [0, 1]")
    _check(d.image_size >= 16, f"data.image_size must be >= 16, got {d.image_size}")
    _check(cfg.model.embedding_size > 0, "model.embedding_size must be > 0")
    _check(0 < cfg.model.sharded_sample_rate <= 1, "model.sharded_sample_rate must be in (0, 1]")
    _check(cfg.eval.n_folds >= 2, "eval.n_folds must be >= 2")
    for name in ("reco", "canon", "view"):
        _check(getattr(cfg.loss, name) >= 0, f"loss.{name} must be >= 0")
    f = cfg.loss.aux_fraction
    _check(0 < f <= 1, f"loss.aux_fraction must be in (0, 1] (the share of each batch that L_FR^canon and "
                       f"L_view use; 1 = every row), got {f}")
    _check(cfg.recon.regressor_size >= 0, "recon.regressor_size must be >= 0 (0 = the regressor's own size)")
    init = cfg.recon.regressor_init
    if check_paths and init not in ("default", "none"):
        _check(resolve_path(init).is_file(), f"recon.regressor_init: file '{init}' does not exist; give a regressor "
                                             "written by `lh2face regressor`, 'default' (the bundled one) or 'none'")
    if check_paths:
        if d.kind == "imagefolder":
            root = resolve_path(d.root)
            _check(root.is_dir(), f"data.root: folder '{d.root}' does not exist; point it at an ImageFolder")
        elif d.kind == "recordio":
            _check(d.rec is not None, "data.rec: required for data.kind=recordio (path to the .rec file)")
            rec = resolve_path(d.rec)
            _check(rec.is_file(), f"data.rec: file '{d.rec}' does not exist")
            idx = resolve_path(d.idx) if d.idx else rec.with_suffix(".idx")
            _check(idx.is_file(), f"data.idx: index file '{idx}' does not exist (set data.idx)")
        if d.eval_root is not None:
            _check(resolve_path(d.eval_root).is_dir(), f"data.eval_root: folder '{d.eval_root}' does not exist")
        if d.eval_bin is not None:
            _check(resolve_path(d.eval_bin).is_file(), f"data.eval_bin: file '{d.eval_bin}' does not exist")
    if check_names:
        _check_registered("backbone", cfg.model.backbone, "recognition.backbones", ("BACKBONES",))
        _check_registered("head", cfg.model.head, "recognition.heads", ("HEADS",))
        try:  # a 2-class head is cheap: catches unknown / invalid head options up front
            from recognition.heads import build_head

            build_head(cfg.model.head, 2, embedding_size=cfg.model.embedding_size, **cfg.model.head_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.head_options: {exc}") from None
    return cfg


def _check_registered(kind: str, name: str, module: str, attrs: Sequence[str]) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - the module is part of the package
        raise ConfigError(f"model.{kind}: cannot import {module} ({exc})") from exc
    registry = next((getattr(mod, a) for a in attrs if hasattr(mod, a)), None)
    if registry is None or not hasattr(registry, "names"):
        return  # no registry to check against: the builder reports the error
    names = list(registry.names())
    if str(name).lower() not in names:
        raise ConfigError(f"model.{kind}: unknown {kind} '{name}'; known: {', '.join(names)}")


def load_train_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Sequence[str] = (),
    check_names: bool = True,
    check_paths: bool = True,
) -> TrainConfig:
    """Read a YAML config, apply 'a.b=value' overrides, build TrainConfig and validate it."""
    data = load_yaml(path) if path else {}
    cfg = from_dict(TrainConfig, merge_overrides(data, overrides))
    return validate(cfg, check_names=check_names, check_paths=check_paths)


def config_from_checkpoint(data: Dict[str, Any]) -> TrainConfig:
    """TrainConfig from a checkpoint's stored config, ignoring keys this version no longer has (a
    checkpoint written by an older or newer lh2face still loads for evaluation)."""
    import dataclasses
    import logging
    import typing

    def prune(cls: Any, d: Any, prefix: str) -> Any:
        if not isinstance(d, dict):
            return d
        hints = typing.get_type_hints(cls)
        out = {}
        for k, v in d.items():
            if k not in hints:
                logging.getLogger("lh2face.train").warning("checkpoint config: ignoring unknown key '%s%s'", prefix, k)
                continue
            out[k] = prune(hints[k], v, f"{prefix}{k}.") if dataclasses.is_dataclass(hints[k]) else v
        return out

    return from_dict(TrainConfig, prune(TrainConfig, data, ""))


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (what the run directory stores)."""
    return dump_yaml(cfg)


__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "INPUT_MODES",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ReconConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_from_checkpoint",
    "config_to_yaml",
    "load_train_config",
    "resolve_path",
    "validate",
]
