"""loss.aux_fraction: L_FR^canon and L_view on a random subset of the batch (joint.model.aux_rows).

The truth is a hand computation through the same backbone and head in training mode: BatchNorm couples the
rows of one backbone call, so the values match only if exactly the subset rows (and no others) went
through the backbone together.
"""

from __future__ import annotations

import math

import pytest
import torch

from lh2face.config import ConfigError
from recon.losses import ReconLossWeights

from joint.config import LossConfig, ReconConfig, load_train_config
from joint.losses import joint_loss, view_loss
from joint.model import JointModel, aux_rows, perturb_pose

SIZE = 32


@pytest.fixture(scope="module")
def batch():
    """8 synthetic faces of 4 identities with ground-truth coefficients and landmarks (a collated batch)."""
    from recon.synth import SyntheticFaces

    from joint.data import DictSamples, collate_samples

    ds = DictSamples(SyntheticFaces(4, 2, seed=3, image_size=SIZE))
    return collate_samples([ds[i] for i in range(len(ds))])


def _model(fraction: float, reco: float = 1.0) -> JointModel:
    torch.manual_seed(0)
    m = JointModel(4, backbone="mobilefacenet", embedding_size=32, head="lh2face", input_mode="rgb+canonical+depth",
                   image_size=SIZE, recon=ReconConfig(weights=ReconLossWeights(gt_coeffs=1.0),
                                                      regressor_options={"width": 8, "hidden": 32}),
                   lambdas=LossConfig(reco=reco, canon=0.5, view=0.25, aux_fraction=fraction))
    with torch.no_grad():  # the output layer starts at zero (every face the mean face): make the rows differ
        m.regressor.head.weight.normal_(0.0, 0.05)
    return m.train()


def _by_hand(model: JointModel, batch, seed: int, rows):
    """(l_canon, l_view) of `rows` (None = all) recomputed through the model's parts, with the same draws.

    The novel view is rendered by recon.face.render_face from the perturbed coefficients alone (its own
    geometry, not the shared one), so the sharing of geometry between renders is checked too."""
    from recon import face as rface

    t = model.trunk
    images, labels = batch["image"], batch["label"]
    torch.manual_seed(seed)
    coeffs = t.regress(images)
    canon, depth, _ = t._canonical_renders(coeffs)
    z = t.backbone(t.fr_input(images, canon, depth))
    drawn = aux_rows(images.shape[0], model.lambdas.aux_fraction)
    assert (drawn is None and rows is None) or torch.equal(drawn, rows)
    r = torch.arange(images.shape[0]) if rows is None else rows
    z_canon = t.backbone(t.fr_input(canon[r], canon[r], depth[r]))
    l_canon, _ = model.head(z_canon, labels[r])
    mm, renderer, layout = t._assets(images.device)
    cv = perturb_pose(coeffs[r], layout, t.recon_cfg.view_yaw_deg, t.recon_cfg.view_pitch_deg)
    view = rface.render_face(mm, renderer, cv, image_size=SIZE, layout=layout)
    novel = view["image"] * view["mask"] + images[r] * (1 - view["mask"])
    z_view = t.backbone(t.fr_input(novel, canon[r], depth[r]))
    return l_canon, view_loss(z[r], z_view)


def _spy_backbone(model: JointModel):
    sizes = []
    model.trunk.backbone.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    return sizes


def test_rows_count_and_no_draw_at_one():
    assert aux_rows(32, 0.25).shape == (8,)
    assert aux_rows(10, 0.3).shape == (3,)  # 0.3 x 10 rounds to 3 (not ceil(3.0000000000000004) = 4)
    assert aux_rows(10, 0.31).shape == (4,)
    assert aux_rows(8, 0.01).shape == (2,)  # at least two rows (BatchNorm)
    assert aux_rows(3, 0.9) is None and aux_rows(2, 0.1) is None
    state = torch.get_rng_state()
    assert aux_rows(8, 1.0) is None
    assert torch.equal(state, torch.get_rng_state())  # fraction 1 leaves the RNG stream as it was
    r = aux_rows(20, 0.5)
    assert torch.equal(r, torch.unique(r)) and 0 <= int(r.min()) and int(r.max()) < 20  # sorted, distinct


def test_rows_are_a_uniform_subset():
    """Every row is chosen with probability k / B (so the subset mean is unbiased for the batch mean)."""
    torch.manual_seed(0)
    n, b, k = 4000, 8, 2
    counts = torch.zeros(b)
    for _ in range(n):
        counts[aux_rows(b, 0.25)] += 1
    p = k / b
    sd = math.sqrt(n * p * (1 - p))
    assert (counts - n * p).abs().max() < 4 * sd, counts


def test_fraction_one_equals_the_full_batch_terms(batch):
    model = _model(1.0)
    sizes = _spy_backbone(model)
    torch.manual_seed(7)
    out = model.trunk(batch["image"], batch)
    assert "aux_index" not in out and sizes == [8, 8, 8]
    _, logs = joint_loss(out, batch["label"], model.head, model.lambdas)
    l_canon, l_view = _by_hand(model, batch, 7, None)
    assert logs["l_canon"].item() == pytest.approx(l_canon.item(), rel=1e-5, abs=1e-6)
    assert logs["l_view"].item() == pytest.approx(l_view.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("reco", [1.0, 0.0])  # with L_reco the novel view reuses its geometry; without, its own
def test_subset_terms_equal_the_hand_computation_on_those_rows(batch, reco):
    from recon import face as rface

    model = _model(0.25, reco=reco)
    sizes = _spy_backbone(model)
    rendered = []
    real = rface.render_face

    def spy(mm, renderer, coeffs, **kw):
        rendered.append(coeffs.shape[0])
        return real(mm, renderer, coeffs, **kw)

    rface.render_face = spy
    try:
        torch.manual_seed(11)
        out = model.trunk(batch["image"], batch)
    finally:
        rface.render_face = real
    rows = out["aux_index"]
    assert rows.shape == (2,) and out["z_canon"].shape[0] == 2 and out["z_view"].shape[0] == 2
    assert sizes == [8, 2, 2]  # z on every row; the canonical input and the novel view of the subset only
    assert rendered == ([8, 2] if reco else [2])  # the L_view render of the subset only
    total, logs = joint_loss(out, batch["label"], model.head, model.lambdas)
    l_canon, l_view = _by_hand(model, batch, 11, rows)
    assert logs["l_canon"].item() == pytest.approx(l_canon.item(), rel=1e-5, abs=1e-6)
    assert logs["l_view"].item() == pytest.approx(l_view.item(), rel=1e-5, abs=1e-6)
    l_fr, _ = model.head(out["z"], batch["label"])
    expect = l_fr + 0.5 * l_canon + 0.25 * l_view + reco * logs.get("l_reco", torch.tensor(0.0))
    assert total.item() == pytest.approx(expect.item(), rel=1e-5)
    total.backward()  # every parameter still learns (the regressor through the renders and L_reco)
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not dead, dead[:5]


def test_subset_is_reproducible_from_the_seed(batch):
    model = _model(0.5)
    with torch.no_grad():
        torch.manual_seed(3)
        a = model.trunk(batch["image"], batch)
        torch.manual_seed(3)
        b = model.trunk(batch["image"], batch)
    assert a["aux_index"].shape == (4,) and torch.equal(a["aux_index"], b["aux_index"])


def test_train_step_keeps_the_integer_row_index(batch):
    from joint.step import train_step

    model = _model(0.25)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    logs = train_step(model, batch, opt, grad_clip=5.0)
    assert torch.isfinite(logs["l_canon"]) and torch.isfinite(logs["l_view"])


def test_config_default_and_bad_values():
    assert load_train_config(None, []).loss.aux_fraction == 0.25
    assert load_train_config(None, ["loss.aux_fraction=1"]).loss.aux_fraction == 1.0
    for bad in ("0", "1.5", "-0.2", "nan"):
        with pytest.raises(ConfigError, match=r"loss\.aux_fraction must be in \(0, 1\]"):
            load_train_config(None, [f"loss.aux_fraction={bad}"])
    with pytest.raises(ConfigError, match="aux_fraction"):
        load_train_config(None, ["loss.aux_fraction=half"])
