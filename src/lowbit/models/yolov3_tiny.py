"""YOLOv3-tiny, layer for layer as darknet's ``yolov3-tiny.cfg`` builds it.

Backbone: six 3x3 convs of 16, 32, 64, 128, 256 and 512 channels, each followed by a 2x2
max-pool (stride 2, the last one stride 1), then a 3x3 conv of 1024 and a 1x1 conv of 256.
Head 1 (stride 32): 3x3 conv of 512, 1x1 output conv to 3 * (5 + C). Head 2 (stride 16): a 1x1
conv of 128 on the 256-channel layer of head 1, 2x nearest upsampling, concatenation with the
backbone's 256-channel layer (the one before its fifth pool), 3x3 conv of 256, 1x1 output conv.
Every conv has BatchNorm and leaky ReLU (slope 0.1) except the two output convs, which are
linear and have a bias. 8,852,366 trainable parameters at 80 classes (darknet counts the same).

Outputs are the raw head maps, ``[B, 3 * (5 + C), H / 32, W / 32]`` and ``[B, 3 * (5 + C),
H / 16, W / 16]``; each anchor's slice is (tx, ty, tw, th, objectness, class logits).
``lowbit.detection`` decodes them. The anchors are darknet's for a 416 input, scaled by
``input_size / 416`` so that they cover the same fraction of the image at any input size.

One departure from darknet's initialisation, not its architecture: the output convs' objectness
biases start at logit(0.01) (RetinaNet's prior, Lin et al. arXiv 1708.02002, Sec. 4.1), so that
the few hundred empty cells of an image do not swamp the first steps' loss with "no object"
(at 0 the objectness loss starts near 0.7 per cell; at the prior, near 0.01).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# darknet's yolov3-tiny anchors (width, height) in pixels of a 416 x 416 input.
DARKNET_ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 14),
    (23, 27),
    (37, 58),
    (81, 82),
    (135, 169),
    (344, 319),
)
DARKNET_INPUT_SIZE = 416
# Which anchors each head predicts, coarse head first (the cfg's "mask" lines).
ANCHOR_MASKS: tuple[tuple[int, ...], ...] = ((3, 4, 5), (0, 1, 2))
STRIDES: tuple[int, ...] = (32, 16)
LEAKY_SLOPE = 0.1
OBJECTNESS_PRIOR = 0.01
# Backbone channels; a 2x2 max-pool follows each, of stride 2 but the last (stride 1).
BACKBONE_CHANNELS = (16, 32, 64, 128, 256, 512)


def conv_bn_leaky(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """darknet's ``[convolutional] batch_normalize=1 activation=leaky`` block."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


class MaxPoolStride1(nn.Module):
    """darknet's 2x2 max-pool with stride 1: padded on the right and bottom, size kept.

    The padding repeats the edge, which equals darknet's (out-of-image cells never win a max).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), kernel_size=2, stride=1)


class YOLOv3Tiny(nn.Module):
    """YOLOv3-tiny detector for ``num_classes`` classes at an ``input_size`` square input.

    ``input_size`` must be a multiple of 32 (both heads then tile the image exactly); it only
    scales the anchors, the weights work at any multiple of 32. ``last_layers`` names the two
    output convs: ``quantize_model``'s first/last-layer policy treats both as last layers.
    """

    last_layers = ("head_large.1", "head_small.1")
    task = "detection"  # train.py pairs it with detection data and DetectionTask

    def __init__(
        self, num_classes: int = 80, input_size: int = DARKNET_INPUT_SIZE, in_channels: int = 3
    ):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.num_classes = num_classes
        self.input_size = input_size
        outputs = len(ANCHOR_MASKS[0]) * (5 + num_classes)

        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(BACKBONE_CHANNELS):
            layers.append(conv_bn_leaky(channels, width, 3))
            channels = width
            if width == 256:  # head 2 taps the backbone here, before the pool
                self.backbone_to_route = nn.Sequential(*layers)
                layers = []
            last = index == len(BACKBONE_CHANNELS) - 1
            layers.append(MaxPoolStride1() if last else nn.MaxPool2d(2, 2))
        layers += [conv_bn_leaky(512, 1024, 3), conv_bn_leaky(1024, 256, 1)]
        self.backbone_rest = nn.Sequential(*layers)
        self.head_large = nn.Sequential(conv_bn_leaky(256, 512, 3), nn.Conv2d(512, outputs, 1))
        self.lateral = nn.Sequential(
            conv_bn_leaky(256, 128, 1), nn.Upsample(scale_factor=2, mode="nearest")
        )
        self.head_small = nn.Sequential(
            conv_bn_leaky(128 + 256, 256, 3), nn.Conv2d(256, outputs, 1)
        )

        for output_conv in (self.head_large[1], self.head_small[1]):
            with torch.no_grad():  # bias rows laid out per anchor as (tx, ty, tw, th, obj, ...)
                output_conv.bias.view(len(ANCHOR_MASKS[0]), -1)[:, 4].fill_(
                    math.log(OBJECTNESS_PRIOR / (1 - OBJECTNESS_PRIOR))
                )

        scale = input_size / DARKNET_INPUT_SIZE
        self.register_buffer(
            "anchors", torch.tensor(DARKNET_ANCHORS, dtype=torch.float32) * scale, persistent=False
        )
        self.anchor_masks = ANCHOR_MASKS
        self.strides = STRIDES

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.backbone_to_route(x)  # 256 channels, stride 16
        neck = self.backbone_rest(route)  # 256 channels, stride 32
        large = self.head_large(neck)
        small = self.head_small(torch.cat([self.lateral(neck), route], dim=1))
        return large, small

    def head_anchors(self) -> list[torch.Tensor]:
        """Each head's anchors ``[3, 2]`` (width, height in input pixels), in output order."""
        return [self.anchors[list(mask)] for mask in self.anchor_masks]
