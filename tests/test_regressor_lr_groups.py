"""optim.regressor_lr_mult: joint.run_state.build_optimizer gives trunk.regressor.* its own parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from joint.config import load_train_config
from joint.run_state import build_optimizer, build_scheduler


class _Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.regressor = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = _Trunk()
        self.head = nn.Linear(4, 3, bias=False)


def _lr_and_decay_by_name(cfg, model):
    opt = build_optimizer(cfg, model)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert len(by_id) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    return {n: by_id[id(p)] for n, p in model.named_parameters()}, opt


def test_regressor_parameters_get_lr_times_mult_and_the_usual_decay():
    cfg = load_train_config(None, ["optim.lr=0.002", "optim.regressor_lr_mult=0.25", "optim.head_lr_mult=3.0",
                                   "optim.weight_decay=0.01"], check_names=False, check_paths=False)
    model = _Model()
    got, opt = _lr_and_decay_by_name(cfg, model)
    for name, p in model.named_parameters():
        lr = 0.002 * (0.25 if name.startswith("trunk.regressor.") else 3.0 if name.startswith("head.") else 1.0)
        wd = 0.01 if p.dim() > 1 else 0.0
        assert got[name][0] == lr and got[name][1] == wd, name
    assert got["trunk.regressor.2.weight"] == (0.0005, 0.01) and got["trunk.backbone.0.weight"] == (0.002, 0.01)
    # the warm-up / cosine schedule scales every group from its own base rate
    sched = build_scheduler(cfg, opt)
    opt.step()
    sched.step()
    lrs = {g["initial_lr"]: g["lr"] for g in opt.param_groups}
    ratios = {round(lr / base, 12) for base, lr in lrs.items()}
    assert len(ratios) == 1


def test_default_mult_is_one():
    cfg = load_train_config(None, [], check_names=False, check_paths=False)
    assert cfg.optim.regressor_lr_mult == 1.0
    got, _ = _lr_and_decay_by_name(cfg, _Model())
    assert got["trunk.regressor.0.weight"][0] == got["trunk.backbone.0.weight"][0] == cfg.optim.lr
