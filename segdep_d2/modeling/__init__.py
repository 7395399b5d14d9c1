from .heads import DEPTH_HEAD_REGISTRY, build_depth_head
from .meta_arch import PanopticDepthLab

__all__ = ["DEPTH_HEAD_REGISTRY", "build_depth_head", "PanopticDepthLab"]
