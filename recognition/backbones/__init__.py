"""Face-recognition backbones behind one registry.

    build_backbone(name, in_channels=3, embedding_size=512, **options) -> nn.Module

Names: iresnet18, iresnet34, iresnet50, iresnet100, mobilefacenet. Every backbone takes (B, C, S, S)
images with channels in [0, 1] (it maps them to [-1, 1] as its first op) and returns (B, d)
un-normalised embeddings. Common options: input_size (default 112), grad_checkpoint (default False);
IResNet also takes dropout and zero_init_residual.
"""

from __future__ import annotations

from typing import Any

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


def backbone_names() -> list:
    """Registered backbone names."""
    return list(BACKBONES.names())


__all__ = [
    "BACKBONES",
    "build_backbone",
    "backbone_names",
    "IResNet",
    "IBasicBlock",
    "iresnet",
    "MobileFaceNet",
    "IRESNET_LAYERS",
]
