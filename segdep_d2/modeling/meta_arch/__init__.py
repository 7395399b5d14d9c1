from detectron2.modeling import META_ARCH_REGISTRY

from .depth_completion import DepthCompletion
from .hydranet import HydraNet
from .panoptic_depthlab import PanopticDepthLab
from .segdep import SegDep

__all__ = [
    "DepthCompletion", "HydraNet", "PanopticDepthLab", "SegDep",
    "model_outputs", "reads_previous_frame", "reads_semantic_labels", "reads_sparse_depth",
]

ALL_OUTPUTS = ("sem_seg", "depth", "panoptic_seg")


def model_outputs(cfg):
    """The inference outputs of ``cfg.MODEL.META_ARCHITECTURE``: its class attribute ``OUTPUTS``
    (e.g. HydraNet's ``("sem_seg", "depth")``), or all of ``sem_seg``, ``depth`` and
    ``panoptic_seg`` for a meta-arch that does not declare it (PanopticDepthLab)."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    return tuple(getattr(arch, "OUTPUTS", ALL_OUTPUTS))


def reads_previous_frame(cfg) -> bool:
    """Whether ``cfg``'s model trains on the previous video frame (``prev_image`` + ``prev_flow``, what
    the mapper then reads): its classmethod ``reads_previous_frame(cfg)``; False for a model without."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    hook = getattr(arch, "reads_previous_frame", None)
    return bool(hook(cfg)) if hook is not None else False


def reads_sparse_depth(cfg) -> bool:
    """Whether ``cfg``'s model takes a sparse depth input (depth completion: the mapper then delivers
    ``sparse_depth``): its classmethod ``reads_sparse_depth(cfg)``; False for a model without."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    hook = getattr(arch, "reads_sparse_depth", None)
    return bool(hook(cfg)) if hook is not None else False


def reads_semantic_labels(cfg) -> bool:
    """Whether ``cfg``'s model takes the record's semantic labels as an *input* (depth completion guided by
    a label map), so the mapper delivers ``sem_seg`` at test time too: its classmethod
    ``reads_semantic_labels(cfg)``; False for a model without."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    hook = getattr(arch, "reads_semantic_labels", None)
    return bool(hook(cfg)) if hook is not None else False
