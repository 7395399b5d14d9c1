from .panoptic_depthlab import PanopticDepthLab

__all__ = ["PanopticDepthLab"]
