"""Improved ResNet (IResNet) for face recognition, the topology used by insightface's ArcFace models.

Topology (Deng et al., ArcFace, CVPR 2019; Duta et al., "Improved Residual Networks", 2020; the
insightface `arcface_torch` model zoo):

    stem:   conv3x3(C_in -> 64, stride 1) + BN + PReLU
    stages: 4 stages of IBasicBlocks with 64/128/256/512 channels; the first block of each stage has
            stride 2 (on its second conv) and a conv1x1+BN projection shortcut
    block:  BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus shortcut (no activation after)
    head:   BN2d -> dropout -> flatten -> Linear(512*s*s -> d) -> BN1d (scale fixed to 1)

Blocks per stage: IResNet-18 (2,2,2,2), -34 (3,4,6,3), -50 (3,4,14,3), -100 (3,13,30,3). With a
112x112 input the last feature map is 7x7 (s = 7), and IResNet-50 has about 43.6M parameters at d=512.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .common import InputNorm, check_input, conv_out, run_maybe_checkpointed, validate_options

BN_EPS = 1e-5

IRESNET_LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
STAGE_CHANNELS = (64, 128, 256, 512)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style basic block: BN-conv-BN-PReLU-conv-BN + shortcut. (B,cin,H,W) -> (B,cout,H/s,W/s)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet backbone: (B, in_channels, S, S) images in [0, 1] -> (B, embedding_size) un-normalised.

    Args:
        layers: blocks per stage (4 ints).
        in_channels: input channels (3 for RGB; 7 for RGB + canonical face + depth). Only the stem
            convolution depends on it.
        embedding_size: output dimension d.
        input_size: square input side S in pixels (default 112; must be >= 16).
        dropout: dropout probability before the FC layer (insightface uses 0 for its MS1MV2 models).
        grad_checkpoint: recompute each block's activations in backward (saves memory, ~30% slower).
        zero_init_residual: start every block as identity (last BN scale 0).
    """

    def __init__(
        self,
        layers: Sequence[int],
        in_channels: int = 3,
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        grad_checkpoint: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        validate_options("iresnet", in_channels, embedding_size, input_size, 16)
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"iresnet: layers must be 4 positive ints, got {tuple(layers)}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"iresnet: dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.grad_checkpoint = bool(grad_checkpoint)

        self.input_norm = InputNorm()
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        cin = 64
        size = input_size
        stages: List[nn.Sequential] = []
        for cout, n in zip(STAGE_CHANNELS, layers):
            blocks = [IBasicBlock(cin, cout, stride=2)] + [IBasicBlock(cout, cout) for _ in range(int(n) - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
            size = conv_out(size, 2)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_size = size  # side of the last feature map (7 at 112x112)
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.dropout = nn.Dropout(p=float(dropout))
        self.fc = nn.Linear(512 * size * size, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The embedding BN keeps scale 1 (as insightface): the feature norm is learned by FC and shift.
        self.features.weight.requires_grad_(False)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> last feature map (B, 512, s, s)."""
        check_input(x, self.in_channels, self.input_size, type(self).__name__)
        x = self.prelu(self.bn1(self.conv1(self.input_norm(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = run_maybe_checkpointed(block, x, self.grad_checkpoint)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> embeddings (B, embedding_size), not normalised."""
        x = self.bn2(self.forward_features(x))
        x = torch.flatten(self.dropout(x), 1)
        return self.features(self.fc(x))


def iresnet(depth: int, **options) -> IResNet:
    """IResNet-18/34/50/100 by depth; options as IResNet."""
    key = f"iresnet{depth}"
    if key not in IRESNET_LAYERS:
        raise ValueError(f"no IResNet of depth {depth}; choose one of 18, 34, 50, 100")
    return IResNet(IRESNET_LAYERS[key], **options)
