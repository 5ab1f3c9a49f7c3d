"""`model.init_from` (joint.init.init_from): from a saved run, and from an insightface-layout IResNet-50 state
dict with the 3-channel stem widened to 7 channels (recognition.backbones.load_pretrained's rule: zeros)."""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch

from joint.init import InitError, init_from
from joint.model import JointModel
from helpers import SIZE

IRESNET50 = (3, 4, 14, 3)


def insightface_iresnet_keys(layers=IRESNET50) -> List[str]:
    """State-dict keys of insightface's arcface_torch `backbones/iresnet.py` IResNet (num_features=d), written
    out from that file's module names: stem conv1/bn1/prelu; layerN.i blocks with bn1, conv1, bn2, prelu,
    conv2, bn3 and, in each stage's first (stride-2) block, downsample.0 (conv1x1) + downsample.1 (BN);
    then bn2, dropout (no tensors), fc, features (BatchNorm1d)."""
    def bn(p: str) -> List[str]:
        return [f"{p}.weight", f"{p}.bias", f"{p}.running_mean", f"{p}.running_var", f"{p}.num_batches_tracked"]

    keys = ["conv1.weight", *bn("bn1"), "prelu.weight"]
    for stage, n in enumerate(layers, start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            keys += [*bn(f"{p}.bn1"), f"{p}.conv1.weight", *bn(f"{p}.bn2"), f"{p}.prelu.weight",
                     f"{p}.conv2.weight", *bn(f"{p}.bn3")]
            if i == 0:
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return keys + [*bn("bn2"), "fc.weight", "fc.bias", *bn("features")]


def _model(mode: str, backbone: str = "mobilefacenet", seed: int = 1) -> JointModel:
    torch.manual_seed(seed)
    return JointModel(3, backbone=backbone, embedding_size=64, head="arcface", input_mode=mode, image_size=SIZE).eval()


def _trained_like(net: torch.nn.Module, seed: int) -> Dict[str, torch.Tensor]:
    """Give `net` weights that differ from any fresh init and sane BatchNorm statistics: random BN scales /
    shifts and PReLU slopes, then running statistics measured on a random batch (as a trained net has)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.reset_running_stats()
                m.momentum = None
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(0.25 + 0.1 * torch.randn(m.weight.shape, generator=g))
        net.train()
        net(torch.rand(8, 3, SIZE, SIZE, generator=g))
    net.eval()
    return {k: v.clone() for k, v in net.state_dict().items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rgb_run(tiny_run_rgb):
    return tiny_run_rgb


def test_init_from_a_saved_run_folder_and_checkpoint(rgb_run):
    from joint.runs import load_run

    trained, _, ckpt = load_run(str(rgb_run))
    ref = trained.trunk.state_dict()
    for source in (rgb_run, ckpt):
        model = _model("rgb", seed=5)
        assert any(not torch.equal(v, ref[k]) for k, v in model.trunk.state_dict().items())
        report = init_from(model, source)
        got = model.trunk.state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
        assert sorted(report.matched) == sorted(ref) and not (report.missing or report.unexpected or report.mismatched)
        assert report.widened == [] and "lh2face checkpoint" in report.kind
        x = torch.rand(2, 3, SIZE, SIZE)
        with torch.no_grad():
            assert torch.equal(model.embed(x), trained.embed(x))


def test_rgb_run_into_a_seven_channel_model_widens_the_stem(rgb_run):
    from joint.runs import load_run

    trained, _, _ = load_run(str(rgb_run))
    src = trained.backbone.state_dict()
    model = _model("rgb+canonical+depth")
    regressor_before = {k: v.clone() for k, v in model.regressor.state_dict().items()}
    report = init_from(model, rgb_run)
    stem = model.backbone.state_dict()["conv1.0.weight"]
    assert stem.shape[1] == 7 and report.widened == ["backbone.conv1.0.weight"]
    assert torch.equal(stem[:, :3], src["conv1.0.weight"]) and torch.count_nonzero(stem[:, 3:]) == 0
    assert all(torch.equal(v, src[k]) for k, v in model.backbone.state_dict().items() if k != "conv1.0.weight")
    assert all(torch.equal(v, regressor_before[k]) for k, v in model.regressor.state_dict().items())
    assert sorted(report.missing) == sorted(f"regressor.{k}" for k in regressor_before)
    assert "1 stem widened" in report.summary() and "regressor.*" in "\n".join(report.details())


@pytest.fixture(scope="module")
def insightface_r50(tmp_path_factory):
    """An IResNet-50 state dict saved the way insightface's arcface_torch saves backbone.pth (bare keys)."""
    from recognition.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone("iresnet50", in_channels=3, embedding_size=64, input_size=SIZE)
    own = net.state_dict()
    keys = insightface_iresnet_keys()
    assert set(own) == set(keys)  # our IResNet already uses insightface's names: the renaming is 1:1
    state = _trained_like(net, seed=3)
    state = {k: state[k] for k in keys}  # insightface's key order
    path = tmp_path_factory.mktemp("r50") / "backbone.pth"
    torch.save(state, path)
    return path, state


def test_insightface_iresnet50_into_a_seven_channel_model(insightface_r50):
    from recognition.backbones import build_backbone

    path, state = insightface_r50
    model = _model("rgb+canonical+depth", backbone="iresnet50")
    regressor_before = {k: v.clone() for k, v in model.regressor.state_dict().items()}
    report = init_from(model, path)
    assert report.kind == "state dict" and report.widened == ["backbone.conv1.weight"]
    assert len(report.matched) == len(state) and not (report.unexpected or report.mismatched)
    assert sorted(report.missing) == sorted(f"regressor.{k}" for k in regressor_before)
    got = model.backbone.state_dict()
    assert torch.equal(got["conv1.weight"][:, :3], state["conv1.weight"])
    assert torch.count_nonzero(got["conv1.weight"][:, 3:]) == 0
    assert all(torch.equal(got[k], v) for k, v in state.items() if k != "conv1.weight")
    assert all(torch.equal(v, regressor_before[k]) for k, v in model.regressor.state_dict().items())
    # zero filters on the extra channels: the 7-channel network computes the RGB network's function
    rgb = build_backbone("iresnet50", in_channels=3, embedding_size=64, input_size=SIZE).eval()
    rgb.load_state_dict(state)
    x = torch.rand(2, 3, SIZE, SIZE)
    extra = torch.rand(2, 4, SIZE, SIZE)
    with torch.no_grad():
        ref = rgb(x)
        out = model.backbone(torch.cat([x, extra], 1))
    assert torch.isfinite(ref).all() and float((ref[0] - ref[1]).abs().max()) > 1e-2  # a live network
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_ddp_prefix_and_state_dict_wrapper(insightface_r50, tmp_path):
    _, state = insightface_r50
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = _model("rgb", backbone="iresnet50")
    report = init_from(model, path)
    assert len(report.matched) == len(state) and report.widened == [] and not report.unexpected
    assert torch.equal(model.backbone.state_dict()["layer3.13.conv2.weight"], state["layer3.13.conv2.weight"])


def test_mismatches_are_reported_and_bad_sources_refused(tmp_path):
    seven = _model("rgb+canonical+depth", seed=2)
    full = tmp_path / "joint.pth"
    torch.save(seven.state_dict(), full)  # a whole JointModel: trunk.* and head.*
    model = _model("rgb", seed=4)
    stem_before = model.backbone.state_dict()["conv1.0.weight"].clone()
    report = init_from(model, full)
    assert [m[0] for m in report.mismatched] == ["backbone.conv1.0.weight"]  # 7 -> 3 channels: not loaded
    assert torch.equal(model.backbone.state_dict()["conv1.0.weight"], stem_before)
    assert report.ignored and all(k.startswith("head.") for k in report.ignored)
    assert report.unexpected and all(k.startswith("regressor.") for k in report.unexpected)
    src = seven.backbone.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in model.backbone.state_dict().items() if k != "conv1.0.weight")

    with pytest.raises(InitError, match="does not exist"):
        init_from(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InitError, match="cannot read"):
        init_from(model, garbage)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(InitError, match="no tensor"):
        init_from(model, other)
    seven_model = _model("rgb+canonical+depth", seed=6)
    other_arch = tmp_path / "other_arch.pth"  # the regressor fits, the backbone (another architecture) does not
    torch.save({**{f"trunk.regressor.{k}": v for k, v in seven.regressor.state_dict().items()},
                "trunk.backbone.stem.weight": torch.zeros(8, 7, 3, 3)}, other_arch)
    with pytest.raises(InitError, match="none of the 1 backbone tensors"):
        init_from(seven_model, other_arch)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(InitError, match="not a state dict"):
        init_from(model, notdict)


def test_config_key(tmp_path):
    from joint.config import load_train_config
    from lh2face.config import ConfigError

    cfg = load_train_config(None, [f"model.init_from={tmp_path / 'backbone.pth'}"], check_paths=False)
    assert cfg.model.init_from == str(tmp_path / "backbone.pth")
    assert load_train_config(None, [], check_paths=False).model.init_from is None
    assert issubclass(InitError, ConfigError)  # train() reports it as one 'error: config:' line
