"""BatchNorm folding: conv -> BatchNorm in eval mode becomes one conv, as deployed.

In eval mode BatchNorm is the per-channel affine map y = s (x - mean) + beta with
s = gamma / sqrt(var + eps), so conv(x, W) + b followed by it is conv(x, s W) + s (b - mean) + beta
(Jacob et al., arXiv 1712.05877, Sec. 3.2). The folded factors are the ones PyTorch's own CPU
eval kernel computes (``batchnorm_factors``), which keeps the folded model within float32
rounding of the original, and makes the export, the model's integer evaluation and a model
restored from a packed file fold alike, bit for bit.

A quantized conv is folded after its weight quantizer: the grid belongs to the trained weight, and
s rescales that grid per output channel (s W_q = codes x step x s), which an integer runtime
expresses as a per-channel weight scale. Its input quantizer stays in front of it.

Only a BatchNorm2d that directly follows a Conv2d inside an ``nn.Sequential`` is folded: there the
registration order is the execution order. Any other BatchNorm is left as it is.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.modules import QuantizedLayer, Quantizer, conv_like


class FoldedQuantConv2d(nn.Conv2d):
    """A quantized conv with its BatchNorm folded in: fixed weight s W_q, input quantizer kept.

    ``channel_scale`` is the BatchNorm factor s (per output channel) and ``wbits`` the weight's
    bits, so an exporter can write the weight as integer codes with per-channel scales.
    """

    input_quantizer: Quantizer
    source: QuantizedLayer  # the unfolded layer, kept for its weight codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight, self.bias)

    @property
    def wbits(self) -> int:
        return self.source.wbits

    @property
    def abits(self) -> int:
        return self.input_quantizer.bits


@torch.no_grad()
def batchnorm_factors(
    bn: nn.BatchNorm2d, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, the folded bias), float32 on the CPU, as PyTorch's CPU eval kernel computes them:
    s is its output at x = 1 with mean 0 and beta 0 (the per-channel factor alone), the folded
    bias its output at x = ``bias`` (the conv's bias, or 0). Both the export and the model's
    integer evaluation (``lowbit.quant.integer``) fold with these, and a BatchNorm restored from
    a packed file as its affine map (``lowbit.export.packing``) gives the very same two."""
    channels = bn.num_features
    shape = (1, channels, 1, 1)
    weight, beta = bn.weight.detach().float().cpu(), bn.bias.detach().float().cpu()
    mean, var = bn.running_mean.float().cpu(), bn.running_var.float().cpu()
    x = bias.detach().float().cpu().reshape(shape) if bias is not None else torch.zeros(shape)
    folded_bias = F.batch_norm(x, mean, var, weight, beta, False, 0.0, bn.eps).flatten()
    zeros = torch.zeros(channels)
    scale = F.batch_norm(torch.ones(shape), zeros, var, weight, zeros, False, 0.0, bn.eps)
    return scale.flatten(), folded_bias


@torch.no_grad()
def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv computing bn(conv(x)) in eval mode (``FoldedQuantConv2d`` if conv is quantized)."""
    weight = conv.quantized_weight() if isinstance(conv, QuantizedLayer) else conv.weight
    factor, new_bias = batchnorm_factors(bn, conv.bias)
    scale = factor.double().to(weight.device)
    new_bias = new_bias.to(weight.device)
    folded_class = FoldedQuantConv2d if isinstance(conv, QuantizedLayer) else nn.Conv2d
    folded = conv_like(folded_class, conv, bias=True, device=conv.weight.device)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    folded.weight.copy_((weight.double() * scale.reshape(shape)).to(weight.dtype))
    folded.bias.copy_(new_bias.to(weight.dtype))
    if isinstance(folded, FoldedQuantConv2d):
        folded.input_quantizer = conv.input_quantizer
        folded.register_buffer("channel_scale", scale.float())
        object.__setattr__(folded, "source", conv)  # not a submodule: its weight is not state
    return folded.eval()


def foldable(bn: nn.Module) -> bool:
    """A BatchNorm that folds into the conv before it: a plain BatchNorm2d with running
    statistics and an affine map."""
    return type(bn) is nn.BatchNorm2d and bn.track_running_stats and bn.affine


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv2d -> BatchNorm2d pair folded (see above).

    The folded BatchNorm becomes ``nn.Identity``; ``model`` itself is left untouched.
    """
    folded_model = copy.deepcopy(model).eval()
    for parent in list(folded_model.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and foldable(bn):
                setattr(parent, conv_name, folded_conv(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return folded_model


__all__ = ["FoldedQuantConv2d", "batchnorm_factors", "fold_bn", "foldable", "folded_conv"]
