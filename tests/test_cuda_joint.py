"""Joint training on CUDA under bf16 / fp16 autocast (skipped without a CUDA device).

Checked against float32 on the same device: the renderer's output under autocast equals its float32
output (the renders are computed in float32 whatever the autocast state), the first autocast loss is
close to the float32 loss of the same weights and batch, and a few `joint.step.train_step` steps with every
loss term but L_canon on (`make demo`'s loss + L_view; fp16 through a GradScaler) stay finite, move every
parameter group and lower the loss. L_canon is left out: from a fresh regressor (output layer at zero) every
face gets nearly the same canonical render, z_canon is then close to 0 and the 1/|z| gradient of the
normalisation overflows float16 (the GradScaler skips every step; measured on CPU fp16 autocast).
`_autocast_training` takes the device so the same checks can be run by hand on CPU autocast.
"""

from __future__ import annotations

import math
from typing import Dict

import pytest
import torch

from recon.losses import ReconLossWeights
from joint.config import LossConfig, ReconConfig
from joint.model import JointModel
from joint.step import autocast, train_step

SIZE = 48
STEPS = 6  # fp16: the GradScaler may skip the first step(s) while it finds its scale
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _batch(device: torch.device) -> Dict[str, torch.Tensor]:
    from recon.synth import SyntheticFaces

    ds = SyntheticFaces(4, 4, seed=3, image_size=SIZE)
    items = [ds[i] for i in range(len(ds))]
    out = {
        "image": torch.stack([torch.as_tensor(it["image"]) for it in items]).float(),
        "label": torch.as_tensor([int(it["label"]) for it in items]),
        "coeffs": torch.stack([torch.as_tensor(it["coeffs"]) for it in items]).float(),
        "landmarks": torch.stack([torch.as_tensor(it["landmarks"]) for it in items]).float(),
    }
    return {k: v.to(device) for k, v in out.items()}


def _model(device: torch.device) -> JointModel:
    torch.manual_seed(0)
    m = JointModel(4, backbone="mobilefacenet", embedding_size=32, head="lh2face", input_mode="rgb+canonical+depth",
                   image_size=SIZE, recon=ReconConfig(weights=ReconLossWeights(gt_coeffs=1.0), regressor_options={"width": 8, "hidden": 32}),
                   lambdas=LossConfig(reco=1.0, canon=0.0, view=0.25))
    return m.to(device).train()


def _loss(model: JointModel, batch: Dict[str, torch.Tensor], precision: str) -> float:
    """L_train of one forward pass (no update); the L_view pose draw is seeded so both passes share it."""
    from joint.losses import joint_loss
    from joint.step import BATCH_KEYS, _as_float

    torch.manual_seed(1)
    extras = {k: v for k, v in batch.items() if k not in BATCH_KEYS}
    with torch.no_grad():
        with autocast(batch["image"].device, precision):
            outs = model.trunk(batch["image"], extras)
        loss, _ = joint_loss(_as_float(outs), batch["label"], model.head, model.lambdas)
    return float(loss)


def _autocast_training(device: torch.device, precision: str) -> None:
    batch = _batch(device)
    model = _model(device)
    mm, renderer, layout = model.trunk._assets(device)

    # 1. the renders under autocast are float32 and equal the float32 renders of the same coefficients
    from recon.canonical import render_canonical

    coeffs = torch.randn(4, layout.size, device=device) * 0.3
    ref = render_canonical(mm, renderer, coeffs, image_size=SIZE, layout=layout)
    with autocast(device, precision):
        mixed = render_canonical(mm, renderer, coeffs, image_size=SIZE, layout=layout)
    for r, m in zip(ref, mixed):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, r, rtol=0, atol=1e-5)

    # 2. the autocast loss is close to the float32 loss (same weights, batch and L_view draw)
    l32, lmix = _loss(model, batch, "fp32"), _loss(model, batch, precision)
    assert math.isfinite(lmix) and abs(lmix - l32) <= 0.05 * abs(l32), (precision, lmix, l32)

    # 3. a few training steps: finite terms, every parameter group moves, the loss goes down
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # init_scale 2**8 (default 2**16): the default halves for ~7 overflowing (skipped) steps before the first
    # update on this tiny model, longer than the test's budget; the skip path is still checked below
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**8, enabled=precision == "fp16")
    losses, skipped = [], 0
    for _ in range(STEPS):
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        logs = train_step(model, batch, opt, scaler=scaler, precision=precision, grad_clip=5.0)
        bad = {k: float(v) for k, v in logs.items() if not bool(torch.isfinite(v).all())}
        if precision == "fp16" and set(bad) == {"grad_norm"}:
            # an overflowing scaled gradient: the GradScaler skips the step and halves its scale
            assert scaler.get_scale() < scale, (scale, scaler.get_scale())
            skipped += 1
        else:
            assert not bad, bad
        losses.append(float(logs["loss"]))
    assert skipped <= STEPS - 3, f"{skipped} of {STEPS} fp16 steps skipped by the GradScaler"
    for key in ("l_fr", "l_view", "l_reco"):
        assert key in logs, key
    if precision == "fp16":
        assert math.isfinite(scaler.get_scale()) and scaler.get_scale() > 0
    for prefix in ("trunk.backbone.", "trunk.regressor.", "head."):
        moved = [n for n, p in model.named_parameters() if n.startswith(prefix) and not torch.equal(p, before[n])]
        assert moved, f"no parameter under {prefix} changed in {STEPS} {precision} steps"
    assert losses[-1] < losses[0], (precision, losses)


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_joint_steps_under_autocast_on_cuda(precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bf16")
    _autocast_training(torch.device("cuda"), precision)
