"""MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
Mobile Devices", CCBR 2018, arXiv 1804.07573), Table 1 of the paper:

    input 112x112: conv3x3 64 s2 -> depthwise conv3x3 64
    bottlenecks (expansion t, channels c, repeats n, stride s of the first):
        (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)
    conv1x1 512 -> linear global depthwise conv (GDC) 7x7 512 -> linear conv1x1 d
    PReLU activations, BN after every conv; ~0.99M parameters at d = 128.

A bottleneck is MobileNetV2's inverted residual: 1x1 expand + BN + PReLU, 3x3 depthwise (stride) + BN +
PReLU, 1x1 linear projection + BN, identity shortcut when stride 1 and channels unchanged.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from .common import InputNorm, check_input, conv_out, run_maybe_checkpointed, validate_options

BN_EPS = 1e-5

# (expansion t, out channels c, repeats n, first stride s)
MOBILEFACENET_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBN(nn.Sequential):
    """Conv2d (no bias) + BN [+ PReLU]."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
                 padding: int | None = None) -> None:
        pad = k // 2 if padding is None else padding
        layers: List[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=BN_EPS),
        ]
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            ConvBN(cin, hidden, 1),
            ConvBN(hidden, hidden, 3, stride=stride, groups=hidden),
            ConvBN(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet: (B, in_channels, S, S) images in [0, 1] -> (B, embedding_size) un-normalised.

    Args:
        in_channels: input channels (3 RGB, 7 RGB + canonical face + depth); only the stem depends on it.
        embedding_size: output dimension d (paper: 128; project default 512).
        input_size: square input side S (default 112, >= 16); the GDC kernel equals the last map side.
        setting: bottleneck table (t, c, n, s); default the paper's.
        grad_checkpoint: recompute bottleneck activations in backward.
    """

    def __init__(
        self,
        in_channels: int = 3,
        embedding_size: int = 512,
        input_size: int = 112,
        setting: Sequence[Tuple[int, int, int, int]] = MOBILEFACENET_SETTING,
        grad_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        validate_options("mobilefacenet", in_channels, embedding_size, input_size, 16)
        self.in_channels = in_channels
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.grad_checkpoint = bool(grad_checkpoint)

        self.input_norm = InputNorm()
        self.conv1 = ConvBN(in_channels, 64, 3, stride=2)
        self.dw_conv = ConvBN(64, 64, 3, groups=64)
        size = conv_out(input_size, 2)
        blocks: List[nn.Module] = []
        cin = 64
        for t, c, n, s in setting:
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(Bottleneck(cin, c, stride, t))
                cin = c
                size = conv_out(size, stride)
        self.blocks = nn.Sequential(*blocks)
        self.feature_size = size  # 7 at 112x112
        self.conv_last = ConvBN(cin, 512, 1)
        # Linear global depthwise convolution: a size x size depthwise kernel, no padding -> 1x1.
        self.gdc = ConvBN(512, 512, size, groups=512, act=False, padding=0)
        self.linear = nn.Conv2d(512, embedding_size, 1, bias=False)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> (B, 512, s, s) before the GDC head."""
        check_input(x, self.in_channels, self.input_size, type(self).__name__)
        x = self.dw_conv(self.conv1(self.input_norm(x)))
        for block in self.blocks:
            x = run_maybe_checkpointed(block, x, self.grad_checkpoint)
        return self.conv_last(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> embeddings (B, embedding_size), not normalised."""
        x = self.linear(self.gdc(self.forward_features(x)))
        return self.features(torch.flatten(x, 1))
