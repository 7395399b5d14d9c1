"""HRNetV2 (timm's HRNet) as a detectron2 ``Backbone``: SegDep's encoder.

The four parallel branches of HRNet's last stage are the outputs, as HRNetV2 for segmentation uses them:

=====  ======  ===============  ======================  ====================
name   stride  hrnet_w18_small  hrnet_w18_small_v2 /    hrnet_w32 (SegDep's)
                                hrnet_w18
=====  ======  ===============  ======================  ====================
hr1    4       16               18                      32
hr2    8       32               36                      64
hr3    16      64               72                      128
hr4    32      128              144                     256
=====  ======  ===============  ======================  ====================

(timm's ``hrnet_w18_small`` is HRNet's "small v1", whose branches are 16 wide, not 18.)

Why the raw branches and not timm's default ``feature_location="incre"``: the "incre" modules are the
ImageNet classification head's channel-increasing bottlenecks (128/256/512/1024 wide). HRNetV2 (Sun et
al. 2019, and the Cityscapes models of HRNet-Semantic-Segmentation) reads the branches themselves,
upsamples and concatenates them; a Cityscapes-trained checkpoint has no incre weights at all, so the
raw branches are the only features both kinds of checkpoint initialise.

The network is timm's (``timm.create_model(name, features_only=True, feature_location="")``, always
``pretrained=False``); its modules are attributes of this backbone under timm's own names, which are
also HRNet's official names (``conv1 bn1 conv2 bn2 layer1 transition1..3 stage2..4``). Weights come
from a local file (``MODEL.SEGDEP.HRNET_WEIGHTS``) through :func:`load_hrnet_weights`.

Input sizes must be multiples of 32: timm's fusion layers upsample the lower branches by fixed
factors (nearest, x2 / x4 / x8), which only line up when every branch size halves exactly. detectron2
meta-architectures pad to ``size_divisibility`` (32) with ``ImageList.from_tensors``; other sizes raise
a ValueError rather than timm's shape error deep inside stage 2.
"""
import logging
import os
import pickle
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = [
    "HRNetBackbone",
    "build_hrnet_backbone",
    "load_hrnet_weights",
    "hrnet_key_to_backbone",
    "HRNET_FEATURES",
]

logger = logging.getLogger("segdep_d2")

HRNET_FEATURES = ("hr1", "hr2", "hr3", "hr4")
# timm module names = HRNet-official names; (group, modules) in forward order. FREEZE_AT k freezes the
# first k groups (1: the stem, 2: + layer1, ...), as detectron2's ResNet counts them.
_GROUPS = (
    ("stem", ("conv1", "bn1", "act1", "conv2", "bn2", "act2")),
    ("layer1", ("layer1",)),
    ("stage2", ("transition1", "stage2")),
    ("stage3", ("transition2", "stage3")),
    ("stage4", ("transition3", "stage4")),
)
# Checkpoint prefixes that wrap the network: DataParallel ("module."), HRNet-Semantic-Segmentation's
# FullModel ("model."), detectron2 meta-architectures and NVIDIA's semantic-segmentation ("backbone.").
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.")
# Heads that are part of HRNet checkpoints but not of the backbone: ImageNet classification head
# (incre_modules, downsamp_modules, final_layer, classifier) and the Cityscapes segmentation head
# (last_layer = HRNetV2's concat + 1x1 + classifier; OCR heads of HRNet-OCR; FullModel's loss weights).
_HEAD_PREFIXES = (
    "incre_modules.", "downsamp_modules.", "final_layer.", "classifier.",
    "last_layer.", "conv3x3_ocr.", "ocr_gather_head.", "ocr_distri_head.", "cls_head.", "aux_head.", "loss.",
)
_NORMS = ("BN", "SyncBN", "FrozenBN")


class HRNetBackbone(Backbone):
    """timm's HRNet up to the last stage's four branches (``hr1``..``hr4``, strides 4..32), or those
    named in ``out_features``. ``weights``: a local checkpoint for :func:`load_hrnet_weights`;
    ``norm``: "BN" (timm's), "SyncBN" or "FrozenBN", applied after loading."""

    def __init__(
        self,
        name: str = "hrnet_w32",
        out_features: Sequence[str] = HRNET_FEATURES,
        norm: str = "BN",
        weights: str = "",
        freeze_at: int = 0,
    ):
        super().__init__()
        if not out_features or set(out_features) - set(HRNET_FEATURES):
            raise ValueError(f"HRNet out_features {list(out_features)}: choose from {list(HRNET_FEATURES)}")
        if norm not in _NORMS:
            raise ValueError(f"HRNet norm {norm!r}: one of {_NORMS} (timm's HRNet is built with BatchNorm)")
        import timm  # here, not at module level: `import segdep_d2` should not pay for timm's import

        # feature_location="": the raw branches (HRNetV2), not the classification head's incre modules.
        net = timm.create_model(
            name, pretrained=False, features_only=True, feature_location="", out_indices=(1, 2, 3, 4)
        )
        for _, modules in _GROUPS:
            for module in modules:
                self.add_module(module, getattr(net, module))
        self.model_name = name
        self._out_features = [f for f in HRNET_FEATURES if f in out_features]
        self._out_feature_channels = dict(zip(HRNET_FEATURES, net.feature_info.channels()))
        self._out_feature_strides = dict(zip(HRNET_FEATURES, net.feature_info.reduction()))
        if weights:
            load_hrnet_weights(self, weights)  # into the BatchNorm model: every norm below keeps its keys
        if norm == "SyncBN":
            nn.SyncBatchNorm.convert_sync_batchnorm(self)
        elif norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)  # swaps the children in place
        self.freeze(freeze_at)

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x) -> Dict[str, torch.Tensor]:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"HRNet input {tuple(x.shape[-2:])}: height and width must be multiples of 32 (its fusion "
                "layers upsample by fixed factors); pad with ImageList.from_tensors(..., size_divisibility=32)"
            )
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        # timm's HighResolutionNet.stages: a transition makes the new (lowest-resolution) branch from the
        # previous stage's last one; Identity transitions pass the existing branches through.
        branches = self.stage2([t(x) for t in self.transition1])
        for transition, stage in ((self.transition2, self.stage3), (self.transition3, self.stage4)):
            branches = stage([
                branches[i] if isinstance(t, nn.Identity) else t(branches[-1]) for i, t in enumerate(transition)
            ])
        return {name: y for name, y in zip(HRNET_FEATURES, branches) if name in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def freeze(self, freeze_at=0):
        """Freeze the stem (``freeze_at >= 1``), layer1 (``>= 2``) and stages 2..4 (``>= 3..5``):
        no gradients, BatchNorm as FrozenBatchNorm2d."""
        for _, modules in _GROUPS[:freeze_at]:
            for name in modules:
                module = getattr(self, name)
                for p in module.parameters():
                    p.requires_grad = False
                setattr(self, name, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
        return self


def hrnet_key_to_backbone(key: str):
    """A checkpoint key -> this backbone's key, or None for a head the backbone does not have.

    timm's ImageNet files and HRNet-Semantic-Segmentation's models name the network identically
    (timm copied HRNet's code: ``conv1 bn1 conv2 bn2 layer1 transitionN stageN.M.branches/fuse_layers``,
    the same Sequential indices; their parameter-free differences — None vs Identity, Upsample inside
    the fuse Sequential, relu vs act1 — hold no tensors). What differs is only around the network:
    wrapper prefixes (``module.model.``, ``backbone.``), stripped here, and heads, dropped here."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return None if key.startswith(_HEAD_PREFIXES) else key


def _read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from a ``.pth`` / ``.pt`` (torch.load, tensors only) or a detectron2 ``.pkl``
    (numpy arrays), unwrapping ``{"model": ...}`` (detectron2) and ``{"state_dict": ...}`` (HRNet's
    training checkpoints)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HRNet weights {path!r}: no such file")
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            checkpoint = pickle.load(f, encoding="latin1")
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"HRNet weights {path}: expected a state dict, got {type(checkpoint).__name__}")
    return {
        k: torch.tensor(v) if isinstance(v, np.ndarray) else v  # a copy: keeps 0-d counters 0-d
        for k, v in checkpoint.items()
        if isinstance(v, (torch.Tensor, np.ndarray))
    }


def load_hrnet_weights(backbone: HRNetBackbone, path: str) -> Dict[str, List[str]]:
    """Load a local HRNet checkpoint into ``backbone``: timm's ImageNet state dict, an
    HRNet-Semantic-Segmentation (e.g. Cityscapes) model, or a detectron2 ``.pth`` / ``.pkl`` whose
    ``model`` holds ``backbone.*`` keys. See :func:`hrnet_key_to_backbone` for the key mapping.

    Logs (logger "segdep_d2") and returns ``{"loaded", "missing": backbone keys not in the file,
    "unused": file keys not loaded (heads among them)}``. ``num_batches_tracked`` counters are neither
    required nor reported. Raises ValueError naming the file if a tensor's shape differs (a checkpoint
    of another HRNet width or depth: loading the few tensors that happen to fit, e.g. the 64-channel
    stem, would be a silent mistake) or if no tensor matched at all.
    """
    state = _read_checkpoint(path)
    own = backbone.state_dict()
    mapped, unused, mismatched = {}, [], []
    for key, value in state.items():
        target = hrnet_key_to_backbone(key)
        if target is None or target not in own or target in mapped:
            if not key.endswith("num_batches_tracked"):
                unused.append(key)
        elif own[target].shape != value.shape:
            mismatched.append(f"{key}: {tuple(value.shape)} in the file, {tuple(own[target].shape)} in the model")
        else:
            mapped[target] = value
    model = getattr(backbone, "model_name", "HRNet")
    if mismatched:
        raise ValueError(
            f"HRNet weights {path} do not fit {model}: {len(mismatched)} tensors differ in shape, e.g. "
            f"{mismatched[:3]} (a checkpoint of another HRNet width?)"
        )
    loaded = [k for k in mapped if not k.endswith("num_batches_tracked")]
    if not loaded:
        raise ValueError(
            f"HRNet weights {path}: no tensor matches {model} (file keys such as {list(state)[:3]}; "
            f"expected {list(own)[:3]}, optionally under module. / model. / backbone.)"
        )
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    backbone.load_state_dict(mapped, strict=False)
    total = sum(not k.endswith("num_batches_tracked") for k in own)
    logger.info(f"{model} backbone: loaded {len(loaded)} of {total} tensors from {path}")
    if missing:
        logger.warning(f"{model} backbone keys not found in {path} (left at their initial values): {missing}")
    if unused:
        logger.info(f"Keys of {path} not loaded into the {model} backbone: {unused}")
    return {"loaded": loaded, "missing": missing, "unused": unused}


@BACKBONE_REGISTRY.register()
def build_hrnet_backbone(cfg, input_shape: ShapeSpec):
    """``MODEL.BACKBONE.NAME: "build_hrnet_backbone"``; reads ``MODEL.SEGDEP.{HRNET_NAME,
    HRNET_OUT_FEATURES, HRNET_WEIGHTS, NORM}`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    if input_shape.channels != 3:
        raise ValueError(f"HRNet takes 3-channel images, got {input_shape.channels} channels")
    node = cfg.MODEL.SEGDEP
    return HRNetBackbone(
        name=node.HRNET_NAME,
        out_features=node.HRNET_OUT_FEATURES,
        norm=node.NORM,
        weights=node.HRNET_WEIGHTS,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
