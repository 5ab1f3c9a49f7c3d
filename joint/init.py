"""Start a joint model from existing weights (config key ``model.init_from``).

Sources:
- a run folder of this project (its newest good checkpoint) or an lh2face checkpoint file (``ckpt_*.pt``):
  the trunk (backbone, and the regressor when both models have one) is loaded; the classifier head is
  not (it belongs to the old run's identities);
- a plain PyTorch state dict (``torch.save(model.state_dict())``, e.g. an insightface ``backbone.pth``):
  keys in insightface's IResNet layout (``conv1.weight``, ``bn1.*``, ``layer1.0.*``, ``fc.weight``,
  ``features.*``; this project's IResNet uses the same names) load into the backbone; keys of a saved
  JointModel (``trunk.backbone.*``) or trunk (``backbone.*``, ``regressor.*``) load where they belong.
  A ``module.`` prefix (DDP) and a ``{"state_dict": ...}`` wrapper are accepted.

A stem convolution trained on fewer input channels (3-channel RGB into a 7-channel rgb+canonical+depth
model) is widened as ``recognition.backbones.load_pretrained`` does: pretrained filters on the first
channels, zeros on the extra ones, so the model starts out computing what the pretrained one did on RGB.
Keys whose shapes differ otherwise (e.g. ``fc`` at another input size) are reported and left as built.

Note on inputs: insightface normalises images to [-1, 1] outside its network; this project's backbones
take [0, 1] and normalise inside, so the same weights compute the same function on the same photo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

import torch

from lh2face.config import ConfigError

log = logging.getLogger("lh2face.train")

_HEAD_PREFIX = "head."


class InitError(ConfigError):
    """model.init_from cannot be used: missing / unreadable file, or nothing in it fits the model."""


@dataclass
class InitReport:
    """Outcome of init_from. Keys are relative to the model's trunk (``backbone.conv1.weight``).

    matched: loaded (widened included); widened: stem keys whose input channels were zero-padded;
    missing: trunk keys the source lacks (left as built); unexpected: source keys with no place in the
    model; mismatched: (key, source shape, model shape) not loaded; ignored: source keys skipped on
    purpose (the old run's classifier head).
    """

    source: str
    kind: str
    matched: List[str] = field(default_factory=list)
    widened: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts of every category."""
        return (f"model.init_from {self.source} ({self.kind}): {len(self.matched)} tensors loaded "
                f"({len(self.widened)} stem widened), {len(self.missing)} missing, {len(self.unexpected)} "
                f"unexpected, {len(self.mismatched)} shape-mismatched, {len(self.ignored)} ignored (head)")

    def details(self) -> List[str]:
        """One line per non-matched key (and per widened one)."""
        lines = [f"  widened {k}" for k in self.widened]
        missing = list(self.missing)
        for top in sorted({k.split(".", 1)[0] for k in missing}):
            n = sum(1 for k in missing if k.startswith(top + "."))
            if n and not any(k.startswith(top + ".") for k in self.matched):  # a whole module: one line
                lines.append(f"  missing (kept as built) {top}.* ({n} tensors)")
                missing = [k for k in missing if not k.startswith(top + ".")]
        lines += [f"  missing (kept as built) {k}" for k in missing]
        lines += [f"  unexpected (not loaded) {k}" for k in self.unexpected]
        lines += [f"  shape mismatch (not loaded) {k}: source {tuple(a)} vs model {tuple(b)}"
                  for k, a, b in self.mismatched]
        return lines


def _strip(prefix: str, key: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _is_lh2face_checkpoint(path: Path) -> bool:
    from lh2face.io import _CKPT_MAGIC

    with open(path, "rb") as fh:
        return fh.read(len(_CKPT_MAGIC)) == _CKPT_MAGIC


def read_source(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """(trunk-relative state dict, kind, ignored keys) from a run folder, lh2face checkpoint or state dict."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InitError(f"model.init_from: '{path}' does not exist; give a run folder, an lh2face checkpoint "
                        "or a .pth state dict")
    if p.is_dir() or _is_lh2face_checkpoint(p):
        from lh2face.io import CheckpointError

        from joint.runs import load_run

        try:
            src_model, _, ckpt = load_run(str(p), "cpu")
        except (CheckpointError, ValueError, KeyError) as exc:
            raise InitError(f"model.init_from: cannot load the run / checkpoint '{path}': {exc}") from None
        return dict(src_model.trunk.state_dict()), f"lh2face checkpoint {ckpt.name}", []
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling / format error is the same user error
        raise InitError(f"model.init_from: cannot read '{path}' as a PyTorch state dict "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise InitError(f"model.init_from: '{path}' is not a state dict (a mapping of names to tensors)")
    state: Dict[str, torch.Tensor] = {}
    ignored: List[str] = []
    for key, value in obj.items():
        k = _strip("trunk.", _strip("module.", str(key)))
        if k.startswith(_HEAD_PREFIX):
            ignored.append(k)
            continue
        if not k.startswith(("backbone.", "regressor.")):
            k = "backbone." + k  # a bare backbone state dict (insightface layout)
        state[k] = value
    return state, "state dict", ignored


def _widenable(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    """The stem rule of recognition.backbones.load_pretrained (fewer input channels, same otherwise)."""
    return (key.startswith("backbone.conv1.") and value.dim() == 4 and target.dim() == 4
            and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]
            and value.shape[1] < target.shape[1])


def init_from(model: Any, path: Union[str, Path]) -> InitReport:
    """Load weights from `path` into `model` (a joint.JointModel) in place; returns the InitReport.

    Logs the summary line (INFO) and one line per missing / unexpected / mismatched key (INFO, so it
    lands in train.log). Raises InitError when the file is missing or unreadable, no tensor matches, or
    the source has backbone tensors and none of them fits (a different architecture).
    """
    from recognition.backbones import load_pretrained

    state, kind, ignored = read_source(path)
    own = model.trunk.state_dict()
    report = InitReport(source=str(path), kind=kind, ignored=ignored)
    load: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            report.unexpected.append(key)
        elif value.shape == target.shape:
            load[key] = value
        elif _widenable(key, value, target):
            load[key] = value
            report.widened.append(key)
        else:
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
    report.matched = list(load)
    report.missing = [k for k in own if k not in state]
    if not load:
        sample = ", ".join(list(state)[:4])
        raise InitError(f"model.init_from: no tensor of '{path}' fits the model ({len(state)} keys, e.g. {sample}; "
                        f"{len(report.mismatched)} with other shapes); is it a {model.backbone.__class__.__name__} "
                        "backbone or a run of this project with the same backbone?")
    if any(k.startswith("backbone.") for k in state) and not any(k.startswith("backbone.") for k in load):
        raise InitError(f"model.init_from: none of the {sum(k.startswith('backbone.') for k in state)} backbone "
                        f"tensors of '{path}' fits the model's {model.backbone.__class__.__name__} backbone "
                        "(another architecture?); nothing was loaded")
    backbone_part = {_strip("backbone.", k): v for k, v in load.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in load.items() if not k.startswith("backbone.")}
    if backbone_part:
        load_pretrained(model.backbone, backbone_part, strict=False)
    if rest:
        model.trunk.load_state_dict(rest, strict=False)
    log.info("%s", report.summary())
    for line in report.details():
        log.info("%s", line)
    return report
