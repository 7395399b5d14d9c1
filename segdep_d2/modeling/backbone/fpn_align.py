"""FPN + scale alignment: SegDep's neck, from HRNet's four branches to one 1/4-resolution tensor.

Every branch is projected by a 1x1 conv (+ norm + ReLU) to ``MODEL.SEGDEP.FPN_CHANNELS``, resampled
bilinearly to the finest branch's size, and fused by

* ``"sum"``: an FPN-style element-wise sum (C channels, no extra layer), or
* ``"concat"``: HRNetV2's concatenation of all resolutions, then a 1x1 conv (+ norm + ReLU) back to C.
  HRNetV2 concatenates the raw branches; projecting them first keeps the fused width fixed across
  HRNet widths, so the heads do not change with ``HRNET_NAME``.
"""
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

__all__ = ["ScaleAlignmentFPN"]

_FUSE = ("sum", "concat")


class ScaleAlignmentFPN(nn.Module):
    """``forward(features: dict) -> (N, channels, H/s, W/s)`` with ``s`` the finest input stride (4 for
    HRNet)."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, channels: int = 256, fuse: str = "sum", norm: str = "BN"):
        """
        Args:
            input_shape: the features to fuse (e.g. ``HRNetBackbone.output_shape()``), any strides.
            channels: width of every projection and of the output.
            fuse: "sum" or "concat" (+ 1x1 conv).
            norm: detectron2 norm name for the 1x1 convs ("" for none, then the convs have a bias).
        """
        super().__init__()
        if fuse not in _FUSE:
            raise ValueError(f"FPN fuse {fuse!r}: one of {_FUSE}")
        if not input_shape:
            raise ValueError("ScaleAlignmentFPN needs at least one input feature")
        # finest first: the output takes the first feature's size and stride
        self.in_features: List[str] = sorted(input_shape, key=lambda k: input_shape[k].stride)
        self.fuse = fuse
        self._stride = input_shape[self.in_features[0]].stride
        self._channels = channels
        self.lateral = nn.ModuleDict({
            name: Conv2d(
                input_shape[name].channels, channels, 1, bias=not norm,
                norm=get_norm(norm, channels), activation=nn.ReLU(inplace=True),
            )
            for name in self.in_features
        })
        self.fuse_conv = None
        if fuse == "concat":
            self.fuse_conv = Conv2d(
                channels * len(self.in_features), channels, 1, bias=not norm,
                norm=get_norm(norm, channels), activation=nn.ReLU(inplace=True),
            )
        for module in self.modules():
            if isinstance(module, Conv2d):
                weight_init.c2_msra_fill(module)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        node = cfg.MODEL.SEGDEP
        return {
            "input_shape": {k: input_shape[k] for k in node.HRNET_OUT_FEATURES},
            "channels": node.FPN_CHANNELS,
            "fuse": node.FPN_FUSE,
            "norm": node.NORM,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        size = features[self.in_features[0]].shape[-2:]
        aligned = []
        for name in self.in_features:
            y = self.lateral[name](features[name])
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            aligned.append(y)
        if self.fuse == "sum":
            return sum(aligned[1:], aligned[0])
        return self.fuse_conv(torch.cat(aligned, dim=1))

    def output_shape(self) -> ShapeSpec:
        return ShapeSpec(channels=self._channels, stride=self._stride)
