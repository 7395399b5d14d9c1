from .fpn_align import ScaleAlignmentFPN
from .hrnet import HRNetBackbone, build_hrnet_backbone, load_hrnet_weights
from .mobilenetv2 import MobileNetV2Backbone, build_mobilenetv2_backbone, load_torchvision_mobilenetv2

__all__ = [
    "MobileNetV2Backbone", "build_mobilenetv2_backbone", "load_torchvision_mobilenetv2",
    "HRNetBackbone", "build_hrnet_backbone", "load_hrnet_weights", "ScaleAlignmentFPN",
]
