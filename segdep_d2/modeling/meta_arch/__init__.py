from .hydranet import HydraNet
from .panoptic_depthlab import PanopticDepthLab

__all__ = ["HydraNet", "PanopticDepthLab"]
