from .aspp import ImagePooling2d, adapt_aspp_pooling
from .heads import DEPTH_HEAD_REGISTRY, build_depth_head
from .meta_arch import PanopticDepthLab

__all__ = ["DEPTH_HEAD_REGISTRY", "build_depth_head", "PanopticDepthLab", "ImagePooling2d", "adapt_aspp_pooling"]
