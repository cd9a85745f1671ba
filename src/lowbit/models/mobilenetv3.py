"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3", arXiv 1905.02244).

The network is read straight off the paper's architecture tables: Table 1 is
MobileNetV3-Large, Table 2 is MobileNetV3-Small. Each row of ``SMALL_BOTTLENECKS`` and
``LARGE_BOTTLENECKS`` below is one "bneck" row of those tables, and ``MobileNetV3`` stacks

    stem conv 3x3 (16, hard-swish) -> bnecks -> conv 1x1 (hard-swish) -> global average pool
    -> Linear (hard-swish) -> dropout -> Linear (logits)

The details the tables leave open follow torchvision's reference implementation, so that the
parameter counts are the same: 2,542,856 (Small) and 5,483,032 (Large) at 1000 classes.

- Every conv before a BatchNorm has no bias; BatchNorm uses eps 1e-3. Its momentum is an
  argument (``bn_momentum``, see ``MobileNetV3``): torchvision's 0.01 suits its long ImageNet
  recipe, not a run of a few hundred steps.
- The squeeze-and-excite bottleneck is a quarter of the expanded width, rounded to a multiple
  of 8 (Section 5.3); its two layers are 1x1 convs with bias, ReLU between them and a
  hard-sigmoid gate.
- The last 1x1 conv is six times the last bottleneck's output (576 = 6 x 96 for Small,
  960 = 6 x 160 for Large, as in the tables); the paper's 1x1 "NBN" convs after the pool are
  the Linear layers of the classifier (no BatchNorm, with bias, 1024 / 1280 wide).
- The paper's Table 2 marks the Small model's last 1x1 conv with SE; torchvision (and
  therefore this model) has none there.

Every conv and linear is an ``nn.Conv2d`` / ``nn.Linear`` module (the SE layers too) and every
activation a module, so that ``lowbit.quant.quantize_model`` finds and quantizes all of them.
No activation works in place, so no layer's input tensor is ever overwritten after the layer
(or a forward hook on it) has read it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.models.pooling import GlobalAveragePool

CHANNEL_DIVISOR = 8
BATCHNORM_EPS = 1e-3
# PyTorch's default. torchvision's 0.01 needs thousands of steps: after the 80 steps of an
# 8-epoch digits run its running statistics are still half their init, and the eval-mode model
# that validation sees stays at chance (measured: train accuracy 0.89, validation 0.10).
DEFAULT_BN_MOMENTUM = 0.1
STEM_CHANNELS = 16
LAST_CONV_EXPANSION = 6


class Bottleneck(NamedTuple):
    """One "bneck" row of the paper's Tables 1 and 2 (the same columns, in the same order)."""

    kernel_size: int  # the depthwise conv's k (Operator column: "bneck, kxk")
    expanded_channels: int  # "exp size"
    out_channels: int  # "#out"
    squeeze_excite: bool  # "SE"
    nonlinearity: str  # "NL": "RE" (ReLU) or "HS" (hard-swish)
    stride: int  # "s"


# Table 2 of Howard et al. 2019 (MobileNetV3-Small); comments: input size at 224x224.
SMALL_BOTTLENECKS: tuple[Bottleneck, ...] = (
    Bottleneck(3, 16, 16, True, "RE", 2),  # 112^2 x 16
    Bottleneck(3, 72, 24, False, "RE", 2),  # 56^2 x 16
    Bottleneck(3, 88, 24, False, "RE", 1),  # 28^2 x 24
    Bottleneck(5, 96, 40, True, "HS", 2),  # 28^2 x 24
    Bottleneck(5, 240, 40, True, "HS", 1),  # 14^2 x 40
    Bottleneck(5, 240, 40, True, "HS", 1),  # 14^2 x 40
    Bottleneck(5, 120, 48, True, "HS", 1),  # 14^2 x 40
    Bottleneck(5, 144, 48, True, "HS", 1),  # 14^2 x 48
    Bottleneck(5, 288, 96, True, "HS", 2),  # 14^2 x 48
    Bottleneck(5, 576, 96, True, "HS", 1),  # 7^2 x 96
    Bottleneck(5, 576, 96, True, "HS", 1),  # 7^2 x 96
)

# Table 1 of Howard et al. 2019 (MobileNetV3-Large); comments: input size at 224x224.
LARGE_BOTTLENECKS: tuple[Bottleneck, ...] = (
    Bottleneck(3, 16, 16, False, "RE", 1),  # 112^2 x 16
    Bottleneck(3, 64, 24, False, "RE", 2),  # 112^2 x 16
    Bottleneck(3, 72, 24, False, "RE", 1),  # 56^2 x 24
    Bottleneck(5, 72, 40, True, "RE", 2),  # 56^2 x 24
    Bottleneck(5, 120, 40, True, "RE", 1),  # 28^2 x 40
    Bottleneck(5, 120, 40, True, "RE", 1),  # 28^2 x 40
    Bottleneck(3, 240, 80, False, "HS", 2),  # 28^2 x 40
    Bottleneck(3, 200, 80, False, "HS", 1),  # 14^2 x 80
    Bottleneck(3, 184, 80, False, "HS", 1),  # 14^2 x 80
    Bottleneck(3, 184, 80, False, "HS", 1),  # 14^2 x 80
    Bottleneck(3, 480, 112, True, "HS", 1),  # 14^2 x 80
    Bottleneck(3, 672, 112, True, "HS", 1),  # 14^2 x 112
    Bottleneck(5, 672, 160, True, "HS", 2),  # 14^2 x 112
    Bottleneck(5, 960, 160, True, "HS", 1),  # 7^2 x 160
    Bottleneck(5, 960, 160, True, "HS", 1),  # 7^2 x 160
)

# arch -> (bottleneck table, width of the classifier's hidden layer); Tables 1-2, last rows.
ARCHITECTURES: dict[str, tuple[tuple[Bottleneck, ...], int]] = {
    "small": (SMALL_BOTTLENECKS, 1024),
    "large": (LARGE_BOTTLENECKS, 1280),
}

# stem -> stride of the first conv. "cifar" also runs the first stride-2 bottleneck at
# stride 1 (see MobileNetV3's docstring).
STEM_STRIDES: dict[str, int] = {"imagenet": 2, "cifar": 1}
FINAL_MAP_SIZE_32 = 4  # side of the last feature map for a 32x32 input with the cifar stem

NONLINEARITIES: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}


def make_divisible(channels: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """``channels`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``).

    Rounding may not lose more than 10% of the width: if it would, it goes one step up.
    This is the rule of the MobileNet reference code, applied to every width times
    ``width_mult``; at width 1.0 it leaves the tables' numbers as they are.
    """
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] | None = None,
) -> nn.Sequential:
    """Conv (no bias: BatchNorm follows) -> BatchNorm -> optional activation."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        bn=nn.BatchNorm2d(out_channels, eps=BATCHNORM_EPS),
    )
    if activation is not None:
        layers["act"] = activation()
    return nn.Sequential(layers)


class SqueezeExcite(nn.Module):
    """Channel attention (Section 5.3): pool -> 1x1 squeeze -> ReLU -> 1x1 excite -> gate.

    The gate is a hard sigmoid, relu6(x + 3) / 6, the paper's cheap stand-in for the sigmoid.
    Both 1x1 layers are ``nn.Conv2d`` so that quantize_model quantizes them like any other.
    """

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.pool = GlobalAveragePool()  # order-independent: parity (lowbit.models.pooling)
        self.squeeze = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.ReLU()
        self.excite = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(self.excite(self.act(self.squeeze(self.pool(x)))))
        return x * weights


class InvertedResidual(nn.Module):
    """One bneck (Section 5 / Figure 4): expand 1x1 -> depthwise kxk -> [SE] -> project 1x1.

    The expansion is left out when ``expanded_channels`` equals ``in_channels`` (there is
    nothing to expand). The projection is linear (BatchNorm, no activation). The input is
    added back when the block keeps both the resolution and the width.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        squeeze_excite: bool,
        nonlinearity: str,
    ):
        super().__init__()
        activation = NONLINEARITIES[nonlinearity]
        self.expand = (
            conv_bn(in_channels, expanded_channels, 1, activation=activation)
            if expanded_channels != in_channels
            else nn.Identity()
        )
        self.depthwise = conv_bn(
            expanded_channels,
            expanded_channels,
            kernel_size,
            stride=stride,
            groups=expanded_channels,
            activation=activation,
        )
        self.squeeze_excite = (
            SqueezeExcite(expanded_channels, make_divisible(expanded_channels // 4))
            if squeeze_excite
            else nn.Identity()
        )
        self.project = conv_bn(expanded_channels, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.squeeze_excite(self.depthwise(self.expand(x))))
        return out + x if self.residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3-Small or -Large (Howard et al. 2019, Tables 2 and 1) for ``num_classes``.

    Args:
        arch: "small" (Table 2) or "large" (Table 1).
        num_classes: number of logits.
        width_mult: scales every width of the tables (stem, bottlenecks, classifier hidden
            layer), each rounded by ``make_divisible``; the last conv stays six times the last
            bottleneck's width. 1.0 is the paper's model; every width gives torchvision's
            parameter count (0.35 is PP-OCR's text-direction classifier).
        stem: "imagenet" keeps the paper's strides (total stride 32: 224x224 -> 7x7 before the
            pool). "cifar" is for 32x32 inputs and changes exactly two strides from 2 to 1:
            the first 3x3 conv, and the first bottleneck with stride 2 (Small: bneck 1,
            3x3 16->16 with SE; Large: bneck 2, 3x3 16->24). The total stride is then 8 and
            a 32x32 input ends in a 4x4 map (``FINAL_MAP_SIZE_32``), close to the paper's 7x7
            at 224x224 without shrinking CIFAR's few pixels away in the first layers. In Small
            that first bneck keeps width 16 at stride 1 and so gains a residual connection;
            the parameters are the same for both stems.
        in_channels: channels of the input image.
        dropout: dropout probability before the last Linear (0.2 in torchvision's recipe).
        bn_momentum: every BatchNorm's running-statistics momentum. 0.1 (PyTorch's default)
            by default; torchvision trains ImageNet with 0.01, which the ImageNet preset sets.
    """

    def __init__(
        self,
        arch: str = "small",
        num_classes: int = 1000,
        width_mult: float = 1.0,
        stem: str = "cifar",
        in_channels: int = 3,
        dropout: float = 0.2,
        bn_momentum: float = DEFAULT_BN_MOMENTUM,
    ):
        super().__init__()
        check_arguments(arch, num_classes, width_mult, stem, in_channels, dropout)
        if (
            isinstance(bn_momentum, bool)
            or not isinstance(bn_momentum, (int, float))
            or not 0 < bn_momentum <= 1
        ):
            raise ConfigError(f"MobileNetV3 bn_momentum must be in (0, 1], got {bn_momentum!r}")
        bottlenecks, classifier_hidden = ARCHITECTURES[arch]
        if stem == "cifar":
            bottlenecks = stride_one_at_first_downsampling(bottlenecks)

        def width(channels: int) -> int:
            return make_divisible(channels * width_mult)

        channels = width(STEM_CHANNELS)
        self.stem = conv_bn(
            in_channels, channels, 3, stride=STEM_STRIDES[stem], activation=nn.Hardswish
        )
        blocks = []
        for row in bottlenecks:
            blocks.append(
                InvertedResidual(
                    channels,
                    width(row.expanded_channels),
                    width(row.out_channels),
                    row.kernel_size,
                    row.stride,
                    row.squeeze_excite,
                    row.nonlinearity,
                )
            )
            channels = width(row.out_channels)
        self.blocks = nn.Sequential(*blocks)
        last_channels = LAST_CONV_EXPANSION * channels
        self.last_conv = conv_bn(channels, last_channels, 1, activation=nn.Hardswish)
        self.pool = GlobalAveragePool()
        hidden = width(classifier_hidden)
        self.classifier = nn.Sequential(
            OrderedDict(
                hidden=nn.Linear(last_channels, hidden),
                act=nn.Hardswish(),
                dropout=nn.Dropout(dropout),
                logits=nn.Linear(hidden, num_classes),
            )
        )
        self.num_classes = num_classes
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = float(bn_momentum)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of the reference implementations (He fan-out convs, small FCs)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before the global pool (last_conv's output)."""
        return self.last_conv(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def stride_one_at_first_downsampling(
    bottlenecks: tuple[Bottleneck, ...],
) -> tuple[Bottleneck, ...]:
    """The table with its first stride-2 row run at stride 1 (the "cifar" stem)."""
    first = next(i for i, row in enumerate(bottlenecks) if row.stride == 2)
    return bottlenecks[:first] + (bottlenecks[first]._replace(stride=1),) + bottlenecks[first + 1 :]


def check_arguments(
    arch: str, num_classes: int, width_mult: float, stem: str, in_channels: int, dropout: float
) -> None:
    """ConfigError, in one line naming what is allowed, for any argument the model cannot take."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown MobileNetV3 arch {arch!r}: use {' or '.join(ARCHITECTURES)}")
    if stem not in STEM_STRIDES:
        raise ConfigError(f"unknown MobileNetV3 stem {stem!r}: use {' or '.join(STEM_STRIDES)}")
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not width_mult > 0
    ):
        raise ConfigError(f"MobileNetV3 width_mult must be a number > 0, got {width_mult!r}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"MobileNetV3 {name} must be an integer >= 1, got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"MobileNetV3 dropout must be in [0, 1), got {dropout!r}")


def mobilenetv3_small(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small (Table 2); keyword arguments as for ``MobileNetV3``."""
    return MobileNetV3("small", **kwargs)


def mobilenetv3_large(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large (Table 1); keyword arguments as for ``MobileNetV3``."""
    return MobileNetV3("large", **kwargs)
