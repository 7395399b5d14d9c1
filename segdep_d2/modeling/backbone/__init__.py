from .mobilenetv2 import MobileNetV2Backbone, build_mobilenetv2_backbone, load_torchvision_mobilenetv2

__all__ = ["MobileNetV2Backbone", "build_mobilenetv2_backbone", "load_torchvision_mobilenetv2"]
