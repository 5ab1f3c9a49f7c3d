"""Backbones: shapes, parameter counts against the published architectures, stem-only channel
dependence, gradients, determinism, checkpointing equivalence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recognition.backbones import BACKBONES, build_backbone, load_pretrained

SMALL = 32  # fast on CPU (last map 2x2); the 112 path is covered by the parameter counts and one forward


def _count(name: str, **kw) -> int:
    with torch.device("meta"):  # no memory, no init cost
        model = build_backbone(name, **kw)
    return sum(p.numel() for p in model.parameters())


def _iresnet_params_by_hand(layers, cin=3, d=512, s=7) -> int:
    """Parameter count written out from the architecture description (independent of the code)."""
    bn = lambda c: 2 * c  # noqa: E731  (weight + bias; running stats are buffers)
    prelu = lambda c: c  # noqa: E731
    total = cin * 64 * 9 + bn(64) + prelu(64)  # stem
    c_prev = 64
    for c, n in zip((64, 128, 256, 512), layers):
        for i in range(n):
            ci = c_prev if i == 0 else c
            total += bn(ci) + ci * c * 9 + bn(c) + prelu(c) + c * c * 9 + bn(c)
            if i == 0:  # projection shortcut (stride 2)
                total += ci * c + bn(c)
        c_prev = c
    total += bn(512) + (512 * s * s * d + d) + bn(d)
    return total


@pytest.mark.parametrize(
    "name,layers,published",
    [
        # Published sizes at d=512 (insightface model zoo / ArcFace-family papers): r18 24.0M, r34 34.1M,
        # r50 43.6M, r100 65.2M. They are quoted to 3 significant figures, so 0.2% covers the rounding.
        ("iresnet18", (2, 2, 2, 2), 24.0e6),
        ("iresnet34", (3, 4, 6, 3), 34.1e6),
        ("iresnet50", (3, 4, 14, 3), 43.6e6),
        ("iresnet100", (3, 13, 30, 3), 65.2e6),
    ],
)
def test_iresnet_parameter_counts(name, layers, published):
    n = _count(name)
    assert n == _iresnet_params_by_hand(layers)
    assert abs(n - published) / published < 2e-3
    # 7 input channels add exactly 4 * 64 * 3 * 3 stem weights and nothing else
    assert _count(name, in_channels=7) - n == 4 * 64 * 9


def test_mobilefacenet_parameter_count():
    # The paper reports 0.99M parameters at its 128-d embedding. The table leaves the BN/PReLU details
    # of the head unstated (we use BN after GDC and a BN1d on the embedding, ~3k parameters), so allow 2%.
    n128 = _count("mobilefacenet", embedding_size=128)
    assert abs(n128 - 0.99e6) / 0.99e6 < 0.02
    # 512-d changes only the last linear 1x1 conv (512 x d) and the embedding BN (2 d)
    assert _count("mobilefacenet") - n128 == 512 * (512 - 128) + 2 * (512 - 128)
    assert _count("mobilefacenet", in_channels=7) - _count("mobilefacenet") == 4 * 64 * 9


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
@pytest.mark.parametrize("cin", [3, 7])
def test_output_shape_and_unnormalised(name, cin):
    torch.manual_seed(0)
    model = build_backbone(name, in_channels=cin, embedding_size=64, input_size=SMALL).eval()
    out = model(torch.rand(3, cin, SMALL, SMALL))
    assert out.shape == (3, 64)
    assert torch.isfinite(out).all()
    norms = out.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)  # not L2-normalised


def test_default_112_forward():
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet").eval()
    assert model.feature_size == 7
    assert model(torch.rand(1, 3, 112, 112)).shape == (1, 512)
    assert build_backbone("iresnet18", input_size=112).fc.in_features == 512 * 7 * 7


@pytest.mark.parametrize("name", ["iresnet34", "mobilefacenet"])
def test_in_channels_changes_only_the_stem(name):
    a = build_backbone(name, in_channels=3, input_size=SMALL).state_dict()
    b = build_backbone(name, in_channels=7, input_size=SMALL).state_dict()
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k].shape != b[k].shape]
    assert len(differing) == 1 and differing[0].startswith("conv1.")
    assert a[differing[0]].shape[1] == 3 and b[differing[0]].shape[1] == 7


def test_input_is_mapped_to_minus_one_one():
    """The first op is (x - 0.5) / 0.5: feeding x or its pre-normalised form to the stem agrees."""
    torch.manual_seed(0)
    model = build_backbone("iresnet18", input_size=SMALL).eval()
    x = torch.rand(2, 3, SMALL, SMALL)
    seen = {}

    def hook(module, inputs, output) -> None:
        seen["x"] = inputs[0]

    model.conv1.register_forward_hook(hook)
    model(x)
    torch.testing.assert_close(seen["x"], 2 * x - 1)
    assert seen["x"].min() >= -1 and seen["x"].max() <= 1


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_gradients_reach_every_trainable_parameter_and_input(name):
    torch.manual_seed(0)
    model = build_backbone(name, in_channels=7, embedding_size=32, input_size=SMALL).train()
    x = torch.rand(4, 7, SMALL, SMALL, requires_grad=True)
    model(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad[:, 3:].abs().sum() > 0  # the extra channels matter
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_eval_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = build_backbone("iresnet18", embedding_size=32, input_size=SMALL, dropout=0.4)
    model.train()
    model(torch.rand(8, 3, SMALL, SMALL))  # move the BN running statistics away from init
    model.eval()
    x = torch.rand(4, 3, SMALL, SMALL)
    a, b = model(x), model(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(model(x[:1]), a[:1], rtol=1e-4, atol=1e-5)  # eval BN: no cross-sample mixing


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_grad_checkpoint_matches_plain(name):
    torch.manual_seed(0)
    plain = build_backbone(name, embedding_size=16, input_size=SMALL).train()
    ckpt = build_backbone(name, embedding_size=16, input_size=SMALL, grad_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, SMALL, SMALL)
    out_p, out_c = plain(x), ckpt(x)
    torch.testing.assert_close(out_c, out_p)
    out_p.square().sum().backward()
    out_c.square().sum().backward()
    for (n1, p1), (_, p2) in zip(plain.named_parameters(), ckpt.named_parameters()):
        if p1.grad is not None:
            torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-5, msg=n1)
    # BN running statistics are updated once per forward, not again during recomputation
    for (n1, b1), (_, b2) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(b2, b1, msg=n1)


def test_registry_and_errors():
    assert set(BACKBONES.names()) == {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"}
    with pytest.raises(KeyError, match="resnet9000"):
        build_backbone("resnet9000")
    with pytest.raises(TypeError, match="mobilefacenet"):
        build_backbone("mobilefacenet", not_an_option=1)
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("iresnet18", in_channels=0)
    model = build_backbone("mobilefacenet", input_size=SMALL)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model(torch.rand(1, 7, SMALL, SMALL))
    assert isinstance(model, nn.Module)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_load_rgb_weights_into_seven_channel_model(name):
    """Zero-initialised extra stem channels: the 7-channel model reproduces the RGB model exactly."""
    torch.manual_seed(0)
    rgb = build_backbone(name, embedding_size=16, input_size=SMALL).eval()
    seven = load_pretrained(build_backbone(name, in_channels=7, embedding_size=16, input_size=SMALL), rgb.state_dict())
    seven.eval()
    x = torch.rand(2, 7, SMALL, SMALL)  # the extra channels are random and must not matter
    torch.testing.assert_close(seven(x), rgb(x[:, :3]))
    with pytest.raises(RuntimeError):
        load_pretrained(build_backbone(name, embedding_size=32, input_size=SMALL), rgb.state_dict())
