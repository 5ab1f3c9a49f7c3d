"""`model.init_from` in a training run: `lh2face train` starts from another run's trunk weights."""

from __future__ import annotations

from pathlib import Path

import torch

from lh2face.io import load_checkpoint
from helpers import SIZE, write_faces as make_faces


def _cfg(faces: Path, extra):
    from joint.config import load_train_config

    return load_train_config(None, [
        f"data.root={faces}", "data.train_identities=3", f"data.image_size={SIZE}", "model.embedding_size=64",
        "model.backbone=mobilefacenet", "model.head=arcface", "schedule.steps=2", "schedule.batch_size=8",
        "schedule.warmup_steps=1", "schedule.checkpoint_every=0", "eval.n_folds=2", "run.progress=false",
        "run.tensorboard=false", "run.plots=false", "run.threads=1", "run.device=cpu", *extra])


def _last(run: Path):
    return load_checkpoint(sorted((run / "checkpoints").glob("ckpt_*.pt"))[-1])["model"]


def test_train_starts_from_init_from_weights(tmp_path):
    from joint.train import train

    faces = tmp_path / "faces"
    make_faces(faces, 5, 3, size=SIZE)
    train(_cfg(faces, ["run.seed=1"]), out=str(tmp_path / "a"))
    src = _last(tmp_path / "a")
    # lr 1e-12: the optimiser moves the weights by ~1e-12, so the run's conv weights are the source's;
    # a different seed would give different weights without init_from (checked below).
    train(_cfg(faces, ["run.seed=2", "optim.lr=1e-12", f"model.init_from={tmp_path / 'a'}"]), out=str(tmp_path / "b"))
    train(_cfg(faces, ["run.seed=2", "optim.lr=1e-12"]), out=str(tmp_path / "c"))
    got, fresh = _last(tmp_path / "b"), _last(tmp_path / "c")
    convs = [k for k in src if k.startswith("trunk.") and k.endswith("weight") and src[k].dim() == 4]
    assert convs
    for k in convs:
        torch.testing.assert_close(got[k], src[k], rtol=0, atol=1e-8)
    assert any(not torch.equal(fresh[k], src[k]) for k in convs)
