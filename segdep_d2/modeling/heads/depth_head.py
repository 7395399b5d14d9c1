"""Depth decoders: a registry (``MODEL.DEPTH_HEAD.NAME``) and Panoptic-DepthLab's third branch."""
import math
from typing import Callable, Dict, List, Sequence, Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.projects.deeplab import DeepLabV3PlusHead
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from ..losses import DEPTH_LOSSES, berhu_relative

__all__ = [
    "DEPTH_HEAD_REGISTRY", "build_depth_head", "PanopticDepthLabDepthHead", "depth_from_logits", "init_depth_predictor",
]

DEPTH_HEAD_REGISTRY = Registry("DEPTH_HEAD")
DEPTH_HEAD_REGISTRY.__doc__ = """Registry for depth decoders, which predict metric depth from backbone features."""

OUTPUT_TYPES = ("log", "sigmoid")


def check_depth_settings(output_type, losses, loss_weights):
    """Validate the ``MODEL.DEPTH_HEAD`` output type and loss list, shared by every depth branch."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"MODEL.DEPTH_HEAD.OUTPUT_TYPE {output_type!r}; expected one of {OUTPUT_TYPES}")
    unknown = set(losses) - set(DEPTH_LOSSES)
    if unknown or len(losses) != len(loss_weights) or not losses:
        raise ValueError(
            f"MODEL.DEPTH_HEAD.LOSSES {list(losses)} / LOSS_WEIGHTS {list(loss_weights)}: need equal, "
            f"non-empty lists of names from {sorted(DEPTH_LOSSES)}"
        )


def build_depth_head(cfg, input_shape):
    return DEPTH_HEAD_REGISTRY.get(cfg.MODEL.DEPTH_HEAD.NAME)(cfg, input_shape)


def init_depth_predictor(predictor, output_type, min_depth, max_depth, start_depth=10.0):
    """Near-zero weights and a bias that makes the untrained output ``start_depth`` metres
    everywhere: a plausible road-scene distance instead of the range's edge."""
    start = min(max(start_depth, min_depth), max_depth)
    bias = math.log(start) if output_type == "log" else math.log(start / (max_depth - start + 1e-6))
    nn.init.normal_(predictor.weight, 0, 0.001)
    nn.init.constant_(predictor.bias, bias)


def depth_from_logits(x, output_type, min_depth, max_depth):
    """The predictor's raw output -> metres in [min_depth, max_depth]."""
    if output_type == "log":
        return torch.exp(x.clamp(math.log(min_depth), math.log(max_depth)))
    if output_type == "sigmoid":
        return (max_depth * torch.sigmoid(x)).clamp(min=min_depth)
    raise ValueError(f"Unknown depth output type {output_type!r}; expected one of {OUTPUT_TYPES}")


@DEPTH_HEAD_REGISTRY.register()
class PanopticDepthLabDepthHead(DeepLabV3PlusHead):
    """A DeepLabV3+ decoder with its own ASPP and weights, then a 1-channel depth predictor.

    It mirrors Panoptic-DeepLab's semantic branch (the Panoptic-DepthLab seed: "all three
    branches use different weights"). Training returns the weighted sum of the configured depth
    losses, computed at input resolution over valid pixels only.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        decoder_channels: List[int],
        norm: Union[str, Callable],
        head_channels: int,
        output_type: str,
        min_depth: float,
        max_depth: float,
        losses: Sequence[str],
        loss_weights: Sequence[float],
        loss_weight: float,
        berhu_threshold: float = 0.2,
        berhu_relative: bool = True,
        silog_variance_focus: float = 0.85,
        **kwargs,
    ):
        super().__init__(input_shape, decoder_channels=decoder_channels, norm=norm, **kwargs)
        assert self.decoder_only
        check_depth_settings(output_type, losses, loss_weights)
        self.output_type = output_type
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.loss_terms = list(zip(losses, loss_weights))
        self.loss_weight = loss_weight
        self.loss_kwargs = {
            "berhu": {"threshold": berhu_threshold, "relative": berhu_relative},
            "silog": {"variance_focus": silog_variance_focus},
        }

        use_bias = norm == ""
        self.head = nn.Sequential(
            Conv2d(decoder_channels[0], decoder_channels[0], kernel_size=3, padding=1, bias=use_bias,
                   norm=get_norm(norm, decoder_channels[0]), activation=F.relu),
            Conv2d(decoder_channels[0], head_channels, kernel_size=3, padding=1, bias=use_bias,
                   norm=get_norm(norm, head_channels), activation=F.relu),
        )
        weight_init.c2_xavier_fill(self.head[0])
        weight_init.c2_xavier_fill(self.head[1])
        self.predictor = Conv2d(head_channels, 1, kernel_size=1)
        init_depth_predictor(self.predictor, output_type, min_depth, max_depth)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.DEPTH_HEAD
        if cfg.INPUT.CROP.ENABLED:
            assert cfg.INPUT.CROP.TYPE == "absolute"
            train_size = cfg.INPUT.CROP.SIZE
        else:
            train_size = None
        return dict(
            input_shape={k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            project_channels=head.PROJECT_CHANNELS,
            aspp_dilations=head.ASPP_DILATIONS,
            aspp_dropout=head.ASPP_DROPOUT,
            decoder_channels=[head.CONVS_DIM] * (len(head.IN_FEATURES) - 1) + [head.ASPP_CHANNELS],
            common_stride=head.COMMON_STRIDE,
            norm=head.NORM,
            train_size=train_size,
            head_channels=head.HEAD_CHANNELS,
            output_type=head.OUTPUT_TYPE,
            min_depth=head.MIN_DEPTH,
            max_depth=head.MAX_DEPTH,
            losses=head.LOSSES,
            loss_weights=head.LOSS_WEIGHTS,
            loss_weight=head.LOSS_WEIGHT,
            berhu_threshold=head.BERHU_THRESHOLD,
            berhu_relative=berhu_relative(head.BERHU_THRESHOLD_MODE),
            silog_variance_focus=head.SILOG_VARIANCE_FOCUS,
            use_depthwise_separable_conv=cfg.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV,
        )

    def layers(self, features):
        y = super().layers(features)
        return self.predictor(self.head(y))

    def forward(self, features, targets=None, valid=None):
        """
        Returns:
            (depth, losses): depth is (N, 1, H, W) metres at the padded input size; losses is
            ``{"loss_depth": ...}`` in training, ``{}`` otherwise.
        """
        logits = F.interpolate(
            self.layers(features), scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )
        depth = depth_from_logits(logits, self.output_type, self.min_depth, self.max_depth)
        if not self.training:
            return depth, {}
        return None, self.losses(depth[:, 0], targets, valid)

    def losses(self, depth, targets, valid):
        total = sum(
            weight * DEPTH_LOSSES[name](depth, targets, valid, **self.loss_kwargs.get(name, {}))
            for name, weight in self.loss_terms
        )
        return {"loss_depth": total * self.loss_weight}
