from .depth_head import DEPTH_HEAD_REGISTRY, PanopticDepthLabDepthHead, build_depth_head

__all__ = ["DEPTH_HEAD_REGISTRY", "PanopticDepthLabDepthHead", "build_depth_head"]
