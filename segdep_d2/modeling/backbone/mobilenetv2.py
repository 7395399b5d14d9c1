"""MobileNetV2 (torchvision's blocks) as a detectron2 ``Backbone``: HydraNet's encoder.

The stem and the seven inverted-residual stages of ``torchvision.models.mobilenet_v2``, without the
last 1280-channel conv and the classifier. Six stage outputs are tapped:

=====  ==================  ========  ======
name   torchvision blocks  channels  stride
=====  ==================  ========  ======
stem   features[0:2]       16        2      (not an output)
l1     features[2:4]       24        4
l2     features[4:7]       32        8
l3     features[7:11]      64        16
l4     features[11:14]     96        16
l5     features[14:17]     160       32
l6     features[17:18]     320       32
=====  ==================  ========  ======

ImageNet weights come from a local torchvision checkpoint (``MODEL.HYDRANET.BACKBONE_WEIGHTS``, the
file ``torchvision.models.MobileNet_V2_Weights`` downloads): its ``features.N.*`` keys are mapped onto
the stages above by :func:`load_torchvision_mobilenetv2`, which logs every key that did not load.
Whole-model checkpoints go through ``MODEL.WEIGHTS`` and detectron2's ``DetectionCheckpointer``.
"""
import logging
from typing import Dict, List, Sequence

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torchvision.models import mobilenet_v2

__all__ = [
    "MobileNetV2Backbone",
    "build_mobilenetv2_backbone",
    "load_torchvision_mobilenetv2",
    "torchvision_key_to_backbone",
    "STAGES",
]

logger = logging.getLogger(__name__)

# (name, first torchvision block, last block + 1, channels, stride)
STAGES = (
    ("stem", 0, 2, 16, 2),
    ("l1", 2, 4, 24, 4),
    ("l2", 4, 7, 32, 8),
    ("l3", 7, 11, 64, 16),
    ("l4", 11, 14, 96, 16),
    ("l5", 14, 17, 160, 32),
    ("l6", 17, 18, 320, 32),
)
_BLOCK_TO_STAGE = {block: (name, block - start) for name, start, end, _, _ in STAGES for block in range(start, end)}


class MobileNetV2Backbone(Backbone):
    """MobileNetV2's feature extractor up to the 320-channel stage, every stage after the stem
    an output (or those named in ``out_features``)."""

    def __init__(self, norm="BN", out_features: Sequence[str] = ("l1", "l2", "l3", "l4", "l5", "l6"), freeze_at=0):
        super().__init__()
        features = mobilenet_v2(weights=None, norm_layer=lambda c: get_norm(norm, c)).features
        self._stage_names = []
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for name, start, end, channels, stride in STAGES:
            self.add_module(name, nn.Sequential(*features[start:end]))
            self._stage_names.append(name)
            self._out_feature_channels[name] = channels
            self._out_feature_strides[name] = stride
        unknown = set(out_features) - set(self._stage_names[1:])
        if unknown or not out_features:
            raise ValueError(f"MobileNetV2 out_features {list(out_features)}: choose from {self._stage_names[1:]}")
        self._out_features = list(out_features)
        last = max(self._stage_names.index(f) for f in self._out_features)
        for name in self._stage_names[last + 1:]:  # stages past the last output are never run
            delattr(self, name)
        self._stage_names = self._stage_names[: last + 1]
        self.freeze(freeze_at)

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x) -> Dict[str, torch.Tensor]:
        outputs = {}
        for name in self._stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def freeze(self, freeze_at=0):
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages, as
        detectron2's ResNet does: no gradients, BatchNorm as FrozenBatchNorm2d."""
        for name in self._stage_names[:freeze_at]:
            stage = getattr(self, name)
            for p in stage.parameters():
                p.requires_grad = False
            setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(stage))
        return self


def torchvision_key_to_backbone(key: str):
    """``features.N.rest`` of a torchvision MobileNetV2 state dict -> this backbone's key
    (``l1.0.conv.0.0.weight`` for ``features.2.conv.0.0.weight``), or None for keys it has no
    place for (``features.18`` = the 1280-channel conv, ``classifier``)."""
    parts = key.split(".", 2)
    if len(parts) < 3 or parts[0] != "features" or not parts[1].isdigit():
        return None
    block = int(parts[1])
    if block not in _BLOCK_TO_STAGE:
        return None
    stage, index = _BLOCK_TO_STAGE[block]
    return f"{stage}.{index}.{parts[2]}"


def _unwrap(checkpoint):
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Expected a state dict, got {type(checkpoint).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in checkpoint.items()}


def load_torchvision_mobilenetv2(backbone: MobileNetV2Backbone, path: str) -> Dict[str, List[str]]:
    """Load a torchvision MobileNetV2 checkpoint (a state dict with ``features.N.*`` keys, as
    torchvision saves it; ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers accepted) into
    ``backbone``. Returns and logs ``{"missing": backbone keys not in the file, "unused": file keys
    not loaded (the 1280-channel conv and classifier among them), "mismatched": shape clashes}``.
    """
    state = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    own = backbone.state_dict()
    mapped, unused, mismatched = {}, [], []
    for key, value in state.items():
        target = torchvision_key_to_backbone(key)
        if target is None or target not in own:
            unused.append(key)
        elif own[target].shape != value.shape:
            mismatched.append(f"{key}: {tuple(value.shape)} in the file, {tuple(own[target].shape)} in the model")
        else:
            mapped[target] = value
    missing = [k for k in own if k not in mapped]
    backbone.load_state_dict(mapped, strict=False)
    logger.info(f"MobileNetV2 backbone: loaded {len(mapped)} of {len(own)} tensors from {path}")
    if missing:
        logger.warning(f"MobileNetV2 backbone keys not found in {path} (left at their initial values): {missing}")
    if unused:
        logger.info(f"Keys of {path} not loaded into the backbone: {unused}")
    if mismatched:
        logger.warning(f"Shape mismatches, not loaded from {path}: {mismatched}")
    return {"missing": missing, "unused": unused, "mismatched": mismatched}


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg, input_shape: ShapeSpec):
    """``MODEL.BACKBONE.NAME: "build_mobilenetv2_backbone"``; reads ``MODEL.HYDRANET.{NORM,
    BACKBONE_OUT_FEATURES, BACKBONE_WEIGHTS}`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3-channel images, got {input_shape.channels} channels")
    node = cfg.MODEL.HYDRANET
    backbone = MobileNetV2Backbone(norm=node.NORM, out_features=node.BACKBONE_OUT_FEATURES)
    if node.BACKBONE_WEIGHTS:
        load_torchvision_mobilenetv2(backbone, node.BACKBONE_WEIGHTS)
    return backbone.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
