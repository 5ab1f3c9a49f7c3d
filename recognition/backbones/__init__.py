"""Face-recognition backbones behind one registry.

    build_backbone(name, in_channels=3, embedding_size=512, **options) -> nn.Module

Names: iresnet18, iresnet34, iresnet50, iresnet100, mobilefacenet. Every backbone takes (B, C, S, S)
images with channels in [0, 1] (it maps them to [-1, 1] as its first op) and returns (B, d)
un-normalised embeddings. Common options: input_size (default 112), grad_checkpoint (default False);
IResNet also takes dropout and zero_init_residual.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn

from lh2face.registry import Registry

from .iresnet import IRESNET_LAYERS, IBasicBlock, IResNet, iresnet
from .mobilefacenet import MobileFaceNet

BACKBONES: Registry[nn.Module] = Registry("backbone")


def _register_iresnet(name: str) -> None:
    layers = IRESNET_LAYERS[name]

    def build(in_channels: int = 3, embedding_size: int = 512, **options: Any) -> IResNet:
        return IResNet(layers, in_channels=in_channels, embedding_size=embedding_size, **options)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"{name}: IResNet with blocks per stage {layers}."
    BACKBONES.register(name)(build)


for _name in IRESNET_LAYERS:
    _register_iresnet(_name)


@BACKBONES.register("mobilefacenet")
def build_mobilefacenet(in_channels: int = 3, embedding_size: int = 512, **options: Any) -> MobileFaceNet:
    """MobileFaceNet (Chen et al. 2018)."""
    return MobileFaceNet(in_channels=in_channels, embedding_size=embedding_size, **options)


def build_backbone(name: str, in_channels: int = 3, embedding_size: int = 512, **options: Any) -> nn.Module:
    """Build a backbone by registry name; unknown names or options raise an error naming them."""
    builder = BACKBONES.get(name)
    try:
        return builder(in_channels=in_channels, embedding_size=embedding_size, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise TypeError(f"backbone '{name}': {exc}; see recognition.backbones for its options") from None
        raise


def load_pretrained(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> nn.Module:
    """Load weights trained with fewer input channels (e.g. an RGB insightface IResNet) into `model`.

    The stem conv `conv1` (IResNet: conv1.weight; MobileFaceNet: conv1.0.weight) keeps the pretrained
    filters for the first channels and gets zeros for the extra ones (canonical face, depth), so the
    model initially computes exactly what the pretrained one does on the RGB channels. IResNet parameter
    names follow insightface's `iresnet.py`, so its checkpoints load directly; note that this backbone
    maps [0, 1] inputs to [-1, 1] itself (insightface normalises outside the model).
    Returns the model.
    """
    own = model.state_dict()
    adapted: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        target = own.get(key)
        if (
            target is not None
            and key.startswith("conv1.")
            and value.dim() == 4
            and target.dim() == 4
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
            and value.shape[1] < target.shape[1]
        ):
            grown = torch.zeros_like(target)
            grown[:, : value.shape[1]] = value.to(target.dtype)
            value = grown
        adapted[key] = value
    model.load_state_dict(adapted, strict=strict)
    return model


def backbone_names() -> list:
    """Registered backbone names."""
    return list(BACKBONES.names())


__all__ = [
    "BACKBONES",
    "build_backbone",
    "backbone_names",
    "load_pretrained",
    "IResNet",
    "IBasicBlock",
    "iresnet",
    "MobileFaceNet",
    "IRESNET_LAYERS",
]
