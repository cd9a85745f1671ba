"""Network in Network for 32x32 inputs, as the model-compression (micronet) repository builds it.

Three stages of one spatial conv followed by two 1x1 "mlpconv" layers, every conv followed by
BatchNorm and ReLU (the classifier conv too), 3x3/2 max-pooling between the stages and an 8x8
global average pool at the end. 969,822 parameters and about 222.5M MACs at 10 classes.
"""

from __future__ import annotations

from torch import nn

# (out_channels, kernel_size) of each conv, stage by stage; the last conv maps to the classes.
NIN_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((192, 5), (160, 1), (96, 1)),
    ((192, 5), (192, 1), (192, 1)),
    ((192, 3), (192, 1), (None, 1)),  # None: num_classes
)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class NIN(nn.Module):
    """NIN classifier; ``in_channels`` 3 for RGB, ``num_classes`` outputs (logits)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage_index, stage in enumerate(NIN_STAGES):
            if stage_index > 0:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            for out_channels, kernel_size in stage:
                out_channels = num_classes if out_channels is None else out_channels
                layers.append(conv_bn_relu(channels, out_channels, kernel_size))
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the 8x8 average pool, for any input size
        self.num_classes = num_classes

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)
