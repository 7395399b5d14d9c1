from .aspp import ImagePooling2d, adapt_aspp_pooling
from .backbone import MobileNetV2Backbone, build_mobilenetv2_backbone
from .heads import DEPTH_HEAD_REGISTRY, build_depth_head
from .meta_arch import HydraNet, PanopticDepthLab
from .text_encoder import ClipTextEncoder

__all__ = [
    "DEPTH_HEAD_REGISTRY", "build_depth_head", "PanopticDepthLab", "HydraNet", "MobileNetV2Backbone",
    "build_mobilenetv2_backbone", "ImagePooling2d", "adapt_aspp_pooling", "ClipTextEncoder",
]
