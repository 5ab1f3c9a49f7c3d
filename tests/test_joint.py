"""Joint model: FR gradients reach the reconstruction regressor; L_train composition; input modes."""

from __future__ import annotations

import pytest
import torch

from recon.losses import ReconLossWeights

from joint.config import LossConfig, ReconConfig
from joint.losses import joint_loss, view_loss
from joint.model import JointModel, mode_channels

SIZE = 32


@pytest.fixture(scope="module")
def synth_batch():
    from recon.synth import SyntheticFaces

    ds = SyntheticFaces(4, 2, seed=1, image_size=SIZE)
    items = [ds[i] for i in range(len(ds))]
    return {
        "image": torch.stack([torch.as_tensor(it["image"]) for it in items]).float(),
        "label": torch.as_tensor([int(it["label"]) for it in items]),
        "coeffs": torch.stack([torch.as_tensor(it["coeffs"]) for it in items]).float(),
        "landmarks": torch.stack([torch.as_tensor(it["landmarks"]) for it in items]).float(),
    }


def _model(mode: str, lambdas: LossConfig, head: str = "lh2face") -> JointModel:
    torch.manual_seed(0)
    return JointModel(4, backbone="mobilefacenet", embedding_size=32, head=head, input_mode=mode,
                      image_size=SIZE, recon=ReconConfig(weights=ReconLossWeights(gt_coeffs=1.0), regressor_options={"width": 8, "hidden": 32}),
                      lambdas=lambdas)


def test_mode_channels():
    assert [mode_channels(m) for m in ("rgb", "rgb+canonical", "rgb+depth", "rgb+canonical+depth")] == [3, 6, 4, 7]
    with pytest.raises(ValueError, match="input_mode"):
        mode_channels("depth")


def test_view_loss_hand_values():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    zv = torch.tensor([[0.0, 3.0], [0.0, 5.0]])  # orthogonal (1 - 0), parallel (1 - 1)
    assert view_loss(z, zv).item() == pytest.approx(0.5)


def test_one_step_every_loss_on_reaches_every_parameter(synth_batch):
    lam = LossConfig(reco=1.0, canon=0.5, view=0.5, aux_fraction=1.0)  # subsets: tests/test_joint_aux.py
    model = _model("rgb+canonical+depth", lam)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # The regressor's output layer starts at zero (mean frontal face), which blocks the gradient to the
    # layers below it for exactly the first step; so check the gradients of the second step.
    # On that first step every face is the same mean face, so the canonical renders are identical across
    # the batch and BatchNorm in the L_canon pass divides by sqrt(eps): clip as training does (optim.grad_clip).
    loss, _ = model(synth_batch["image"], synth_batch["label"], synth_batch)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    loss, logs = model(synth_batch["image"], synth_batch["label"], synth_batch)
    for key in ("l_fr", "l_canon", "l_view", "l_reco", "reco/photometric", "reco/landmark", "reco/prior",
                "reco/gt_coeffs"):
        assert key in logs and torch.isfinite(logs[key]), key
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not missing, f"no/zero/non-finite gradient: {missing[:10]}"
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert any(n.startswith("trunk.regressor.") for n, _ in model.named_parameters())


def test_fr_loss_alone_reaches_regressor_through_canonical_renders(synth_batch):
    """With every reconstruction/auxiliary lambda 0 the regressor still learns from L_FR (renders are inputs)."""
    model = _model("rgb+canonical+depth", LossConfig(reco=0.0, canon=0.0, view=0.0))
    assert model.regressor is not None
    loss, logs = model(synth_batch["image"], synth_batch["label"], synth_batch)
    assert set(k for k in logs if k.startswith(("l_", "reco/"))) == {"l_fr"}
    loss.backward()
    g = sum(p.grad.abs().sum() for p in model.regressor.parameters() if p.grad is not None)
    assert g > 0


def test_joint_loss_is_the_weighted_sum(synth_batch):
    lam = LossConfig(reco=0.3, canon=0.7, view=2.0, aux_fraction=1.0)  # every row: z_canon, z_view (B,d)
    model = _model("rgb+depth", lam, head="cosface")
    model.eval()  # fixed BN statistics so the trunk outputs can be recomputed
    torch.manual_seed(5)
    out = model.trunk(synth_batch["image"], synth_batch)
    total, logs = joint_loss(out, synth_batch["label"], model.head, lam)
    l_fr, _ = model.head(out["z"], synth_batch["label"])
    l_canon, _ = model.head(out["z_canon"], synth_batch["label"])
    l_view = (1 - torch.nn.functional.cosine_similarity(out["z"], out["z_view"])).mean()
    l_reco = sum(out["reco"].values())
    expect = l_fr + 0.7 * l_canon + 2.0 * l_view + 0.3 * l_reco
    assert total.item() == pytest.approx(expect.item(), rel=1e-5)
    assert logs["loss"].item() == pytest.approx(expect.item(), rel=1e-5)


def test_rgb_mode_without_recon_is_plain_fr():
    model = JointModel(3, backbone="mobilefacenet", embedding_size=16, head="arcface", input_mode="rgb", image_size=SIZE)
    assert model.regressor is None
    x = torch.rand(2, 3, SIZE, SIZE)
    model.eval()
    assert torch.allclose(model.embed(x), model.backbone(x))


@pytest.mark.parametrize("mode", ["rgb+canonical", "rgb+depth"])
def test_embed_uses_the_render_channels(mode, synth_batch):
    model = _model(mode, LossConfig())
    model.eval()
    with torch.no_grad():
        z = model.embed(synth_batch["image"][:2])
        coeffs, canon, depth = model.trunk.canonical(synth_batch["image"][:2])
        x = model.trunk.fr_input(synth_batch["image"][:2], canon, depth)
    assert x.shape[1] == mode_channels(mode)
    assert torch.allclose(z, model.backbone(x), atol=1e-6)
