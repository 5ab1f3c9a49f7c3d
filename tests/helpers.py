"""Shared test material: a tiny face folder, tiny trained runs and independent pixel decoding.

The session-scoped fixtures in tests/conftest.py (`tiny_run_rgb`, `tiny_run_rgbcd`) train each run once per
test session with `train_tiny`; tests take SIZE, PHOTOS and `pixels` from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

PHOTOS = Path(__file__).resolve().parent / "fixtures" / "photos"
SIZE = 48  # input size of the tiny runs


def write_faces(root: Path, n_ids: int, per_id: int, size: int = 32, seed: int = 0) -> Path:
    """A tiny ImageFolder root/p<i>/<k>.png: each identity a fixed random pattern plus per-image noise."""
    rng = np.random.default_rng(seed)
    for i in range(n_ids):
        base = rng.uniform(0, 255, (size, size, 3))
        d = root / f"p{i}"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_id):
            Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(d / f"{k}.png")
    return root


def identity_tree(root: Path, bad: bool = True) -> Path:
    """root/<person>/{<photo>, <photo>_mirror}.png for every fixture photo (2 photos per person), plus a
    corrupt file and a flat grey (no face) image in the first person's folder when `bad`."""
    for src in sorted(PHOTOS.iterdir()):
        if src.suffix.lower() not in (".jpg", ".pgm"):
            continue
        person = root / src.stem.rsplit("_", 1)[0]
        person.mkdir(parents=True, exist_ok=True)
        img = Image.open(src).convert("RGB")
        img.save(person / f"{src.stem}.png")
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(person / f"{src.stem}_mirror.png")
    if bad:
        first = sorted(p for p in root.iterdir() if p.is_dir())[0]
        (first / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG")
        Image.new("RGB", (120, 120), (128, 128, 128)).save(first / "grey.png")
    return root


def pixels(path: Path, size: int = SIZE) -> torch.Tensor:
    """(3,size,size) float in [0,1] decoded by PIL (resized bilinear when needed): an independent reading."""
    img = Image.open(path).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def train_tiny(tmp: Path, mode: str = "rgb") -> Path:
    """Train a 3-step mobilefacenet (d=64, SIZE px, batch 8) run with `mode` inputs on tmp/faces (5 people x
    3, written when missing); returns the run folder, its BatchNorm statistics recalibrated (see below)."""
    from joint.config import load_train_config
    from joint.train import train

    faces = tmp / "faces"
    if not faces.is_dir():
        write_faces(faces, 5, 3, size=SIZE)
    cfg = load_train_config(None, [
        f"data.root={faces}", "data.train_identities=3", f"data.image_size={SIZE}", "model.embedding_size=64",
        "model.backbone=mobilefacenet", f"model.input_mode={mode}", "model.head=arcface", "schedule.steps=3",
        "schedule.batch_size=8", "schedule.warmup_steps=1", "schedule.checkpoint_every=0", "eval.n_folds=2",
        "run.progress=false", "run.tensorboard=false", "run.plots=false", "run.threads=1", "run.device=cpu",
    ])
    out = tmp / f"run_{mode.replace('+', '_')}"
    train(cfg, out=str(out))
    recalibrate_bn(out, sorted(faces.rglob("*.png")))
    return out


def recalibrate_bn(run: Path, files: Iterable[Path]) -> None:
    """After 3 steps the BatchNorm running statistics have seen little data and every face gets nearly the
    same embedding (spread ~1e-5), too flat to tell a wrong image order from numerical noise. Recompute
    them as exact averages over the faces (momentum None) and store them back in the checkpoint."""
    from lh2face.io import load_checkpoint, save_checkpoint

    from joint.runs import load_run

    model, _, ckpt = load_run(str(run))
    for m in model.trunk.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.trunk.train()
    with torch.no_grad():
        model.trunk.embed(torch.stack([pixels(p) for p in files]))
    state = load_checkpoint(ckpt)
    state["model"].update({f"trunk.{k}": v for k, v in model.trunk.state_dict().items()})
    save_checkpoint(ckpt, state)
