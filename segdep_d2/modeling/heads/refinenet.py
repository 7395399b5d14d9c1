"""Light-Weight RefineNet (Nekrasov et al., BMVC 2018) over MobileNetV2, and HydraNet's task heads.

The structure is the published one (Light-Weight RefineNet's MobileNetV2 decoder, HydraNet's
multi-task branches), so that weights converted from the authors' release fit:

* each backbone tap is projected to ``channels`` (256) by a 1x1 conv without bias;
* a Chained Residual Pooling (CRP) block of ``stages`` (4) steps: 5x5 max-pool (stride 1, pad 2)
  of the previous step, then a 1x1 conv, summed into the running output;
* top-down, every sum followed by ReLU6 and every upsampling bilinear:
  ``relu6(p(l6) + p(l5))`` -> CRP -> 1x1 -> up to 1/16;
  ``relu6(p(l4) + p(l3) + that)`` -> CRP -> 1x1 -> up to 1/8;
  ``relu6(p(l2) + that)`` -> CRP -> 1x1 -> up to 1/4;
  ``relu6(p(l1) + that)`` -> CRP with depthwise 1x1 convs (HydraNet's last block);
* per task: depthwise 1x1 conv -> ReLU6 -> 3x3 conv to the task's channels, at 1/4 resolution.

No normalisation layers in the decoder or heads (there are none in the published network).
"""
from typing import Dict, Sequence

import torch
from detectron2.layers import ShapeSpec
from torch import nn
from torch.nn import functional as F

__all__ = ["CRPBlock", "LightWeightRefineNetDecoder", "HydraTaskHead"]


def _conv1x1(in_channels, out_channels, groups=1):
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False, groups=groups)


class CRPBlock(nn.Module):
    """Chained Residual Pooling: ``x <- x + conv_i(pool(t_{i-1}))`` over ``stages`` steps, one
    shared 5x5 max-pool; ``depthwise`` makes each 1x1 conv per channel (groups = channels)."""

    def __init__(self, channels: int, stages: int = 4, depthwise: bool = False):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.convs = nn.ModuleList(
            _conv1x1(channels, channels, groups=channels if depthwise else 1) for _ in range(stages)
        )

    def forward(self, x):
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = top + x
        return x


class LightWeightRefineNetDecoder(nn.Module):
    """The Light-Weight RefineNet decoder over six MobileNetV2 taps; returns a ``channels``-wide
    feature map at the stride of the first (finest) tap."""

    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        in_features: Sequence[str] = ("l1", "l2", "l3", "l4", "l5", "l6"),
        channels: int = 256,
        crp_stages: int = 4,
    ):
        super().__init__()
        if len(in_features) != 6:
            raise ValueError(f"The Light-Weight RefineNet decoder takes 6 features, fine to coarse; got {in_features}")
        self.in_features = list(in_features)
        self.projections = nn.ModuleDict(
            {name: _conv1x1(input_shape[name].channels, channels) for name in self.in_features}
        )
        # crps[0] fuses the two coarsest taps (1/32), ..., crps[3] the finest (1/4).
        self.crps = nn.ModuleList(
            [CRPBlock(channels, crp_stages) for _ in range(3)] + [CRPBlock(channels, crp_stages, depthwise=True)]
        )
        self.adapts = nn.ModuleList(_conv1x1(channels, channels) for _ in range(3))
        self.out_channels = channels
        self.stride = input_shape[self.in_features[0]].stride

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        p = {name: self.projections[name](features[name]) for name in self.in_features}
        l1, l2, l3, l4, l5, l6 = (p[name] for name in self.in_features)
        groups = ((l6, l5), (l4, l3), (l2,), (l1,))
        x = None
        for i, group in enumerate(groups):
            total = sum(group) if x is None else sum(group) + x
            x = self.crps[i](F.relu6(total))
            if i < 3:
                x = self.adapts[i](x)
                x = upsample_bilinear(x, groups[i + 1][0].shape[-2:], align_corners=True)
        return x


def upsample_bilinear(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``size`` (H, W); by an integer factor when ``size`` is exactly an integer
    multiple of ``x``'s size (HydraNet's padded inputs: every decoder step is x2, the heads' outputs x4).

    The result is the same either way (with that factor, torch maps output to input coordinates
    identically), but a traced export then carries constant scales instead of sizes read from another
    tensor's shape: onnxruntime runs a constant-scale Resize inside its blocked NCHWc layout (no reorders
    around it), and cannot for computed sizes."""
    h, w = x.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    if out_h % h == 0 and out_w % w == 0 and out_h // h == out_w // w > 1:
        return F.interpolate(x, scale_factor=float(out_h // h), mode="bilinear", align_corners=align_corners)
    return F.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=align_corners)


class HydraTaskHead(nn.Module):
    """One HydraNet branch: depthwise 1x1 conv (groups = channels, no bias) -> ReLU6 -> 3x3 conv to
    ``out_channels`` (with bias)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pre = _conv1x1(in_channels, in_channels, groups=in_channels)
        self.predictor = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)

    def forward(self, x):
        return self.predictor(F.relu6(self.pre(x)))
