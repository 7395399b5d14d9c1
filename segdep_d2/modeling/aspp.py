"""ASPP image pooling at any test-time size (DeepLab practice).

detectron2's :class:`~detectron2.layers.ASPP` pools its image-pooling branch with a fixed
``nn.AvgPool2d(pool_kernel_size, stride=1)``, ``pool_kernel_size`` being the training crop over the
encoder stride (``INPUT.CROP.SIZE / 16`` = (32, 64) for the Cityscapes 512x1024 crop), and raises
unless the feature map is divisible by it: inference, export and benchmarking below the crop size
(e.g. 256x512) fail.

DeepLab evaluates with a kernel derived from the input instead: ``min(training kernel, feature
size)`` per dimension. Whenever the feature map is no larger than the training crop's, that is
global average pooling (what the branch computed in training); on larger inputs the training
kernel slides with stride 1 and its output is resized, exactly as detectron2 does today. So at every
size where detectron2's ASPP works the output is unchanged, and every other size now runs.

:func:`adapt_aspp_pooling` applies this to a built model (every detectron2 ``ASPP`` inside it);
``PanopticDepthLab`` calls it on itself, ``tools/benchmark.py`` on the stock Panoptic-DeepLab.
"""
from typing import Tuple

import torch
from detectron2.layers import ASPP
from torch import nn
from torch.nn import functional as F

__all__ = ["ImagePooling2d", "adapt_aspp_pooling"]


class ImagePooling2d(nn.Module):
    """Average pooling with stride 1 and kernel ``min(kernel_size, input size)`` per dimension.

    Equals ``nn.AvgPool2d(kernel_size, stride=1)`` on inputs at least ``kernel_size`` large, and
    global average pooling on inputs no larger than it. Traceable (``torch.jit.trace``,
    ``torch.export``: the kernel is fixed by the example's size) and scriptable.

    A sliding window (input larger than the kernel: Cityscapes' 1024x2048 with the 512x1024 crop's
    32x64 kernel over a 64x128 feature map) is pooled separably, over rows then columns, channels
    last: the mean over a rectangle is the mean of its row means, so the values are those of the
    one 2D pool up to float summation order (about 1e-7), at kh + kw additions per output instead of
    kh * kw. PyTorch's CPU ``avg_pool2d`` of that 2D window over 2048 channels took 5.4 s per ASPP
    (16 of the 48 s of a 1024x2048 forward: ``benchmarks/panoptic_depthlab_profile_cpu.json``);
    separable and channels-last, about 0.1 s.
    """

    def __init__(self, kernel_size: Tuple[int, int]):
        super().__init__()
        self.kernel_size: Tuple[int, int] = (int(kernel_size[0]), int(kernel_size[1]))

    def forward(self, x):
        kh = min(self.kernel_size[0], x.shape[-2])
        kw = min(self.kernel_size[1], x.shape[-1])
        if kh == x.shape[-2] and kw == x.shape[-1]:  # global pooling: one output per channel
            return F.avg_pool2d(x, [kh, kw], stride=1)
        # channels last: the pool then reads consecutive channels at each tap (vectorised)
        x = x.contiguous(memory_format=torch.channels_last)
        return F.avg_pool2d(F.avg_pool2d(x, [kh, 1], stride=1), [1, kw], stride=1)

    def extra_repr(self):
        return f"kernel_size=min({self.kernel_size}, input size), stride=1"


def adapt_aspp_pooling(model: nn.Module) -> int:
    """Give every detectron2 ``ASPP`` in ``model`` a size-adaptive image-pooling kernel.

    Replaces the image-pooling branch's ``nn.AvgPool2d(pool_kernel_size, stride=1)`` by
    :class:`ImagePooling2d` of the same kernel and clears ``ASPP.pool_kernel_size`` (it only drives
    ASPP's divisibility check, now obsolete; the kernel lives on the new module). ASPPs built with
    global pooling (``pool_kernel_size=None``) are left as they are. Parameters and state-dict keys
    do not change. Idempotent. Returns the number of ASPP modules changed.
    """
    changed = 0
    for module in model.modules():
        if not isinstance(module, ASPP) or module.pool_kernel_size is None:
            continue
        image_pooling = module.convs[-1]
        pool = image_pooling[0]
        if not isinstance(pool, nn.AvgPool2d):
            raise TypeError(f"Unexpected ASPP image-pooling layer {pool!r}; expected nn.AvgPool2d")
        image_pooling[0] = ImagePooling2d(module.pool_kernel_size)
        module.pool_kernel_size = None
        changed += 1
    return changed
