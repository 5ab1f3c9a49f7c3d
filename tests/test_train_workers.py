"""DataLoader workers with the joint model (renderer used in the main process, workers forked before it):
steps run through several epochs with the same workers and stay finite."""

import math

import yaml

from joint.config import load_train_config
from joint.train import train


def test_joint_run_with_loader_workers_crosses_epochs(tmp_path):
    cfg = {
        "data": {"kind": "synthetic", "image_size": 32, "synth_identities": 4, "synth_images": 2,
                 "synth_eval_identities": 3, "synth_eval_images": 2, "num_workers": 1, "flip": False},
        "model": {"backbone": "mobilefacenet", "embedding_size": 32, "head": "cosface",
                  "head_options": {"s": 16.0}, "input_mode": "rgb+canonical+depth"},
        "recon": {"weights": {"gt_coeffs": 1.0}},
        "loss": {"reco": 1.0, "canon": 0.5, "view": 0.0},
        "optim": {"name": "adamw", "lr": 0.001},
        "schedule": {"steps": 5, "batch_size": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 0},
        "eval": {"n_folds": 2, "batch_size": 8},
        "run": {"seed": 0, "device": "cpu", "threads": 1, "progress": False, "tensorboard": False, "plots": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train(load_train_config(path), out=str(tmp_path / "run"))
    rows = [yaml.safe_load(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    # 8 images / batch 4 = 2 batches an epoch: 5 steps run through 3 epochs of the same workers
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
