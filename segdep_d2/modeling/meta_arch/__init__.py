from detectron2.modeling import META_ARCH_REGISTRY

from .hydranet import HydraNet
from .panoptic_depthlab import PanopticDepthLab
from .segdep import SegDep

__all__ = ["HydraNet", "PanopticDepthLab", "SegDep", "model_outputs"]

ALL_OUTPUTS = ("sem_seg", "depth", "panoptic_seg")


def model_outputs(cfg):
    """The inference outputs of ``cfg.MODEL.META_ARCHITECTURE``: its class attribute ``OUTPUTS``
    (e.g. HydraNet's ``("sem_seg", "depth")``), or all of ``sem_seg``, ``depth`` and
    ``panoptic_seg`` for a meta-arch that does not declare it (PanopticDepthLab)."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    return tuple(getattr(arch, "OUTPUTS", ALL_OUTPUTS))
