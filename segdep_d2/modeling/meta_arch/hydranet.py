"""HydraNet (Nekrasov et al., "Real-Time Joint Semantic Segmentation and Depth Estimation Using
Asymmetric Annotations", ICRA 2019): MobileNetV2 + Light-Weight RefineNet + one light branch per task.

Training mixes samples that carry only segmentation, only depth or both: each task's loss averages
over the samples and pixels that carry its label, and a batch without any label of a type gives
exactly 0 for it (still touching that head's weights, so DDP's gradient reduction stays in step).
"""
from typing import Dict, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import nn
from torch.nn import functional as F

from ...data.class_weights import dataset_path, read_class_weights
from ..heads.depth_head import check_depth_settings, depth_from_logits, init_depth_predictor
from ..heads.refinenet import HydraTaskHead, LightWeightRefineNetDecoder, upsample_bilinear
from ..losses import DEPTH_LOSSES, UncertaintyWeighting, berhu_relative, masked_cross_entropy
from .targets import batch_dense_targets

__all__ = ["HydraNet"]

TASKS = ("sem_seg", "depth")


def _storage():
    try:
        return get_event_storage()
    except AssertionError:  # no EventStorage active (plain forward outside a trainer)
        return None


@META_ARCH_REGISTRY.register()
class HydraNet(nn.Module):
    """Joint semantic segmentation and metric depth, real time.

    Input: detectron2's list[dict] with ``image`` (uint8 (C, H, W) in ``INPUT.FORMAT``) and, in
    training, ``sem_seg`` (long (H, W), ``ignore_value`` = unlabelled) and / or ``depth`` + ``depth_valid``
    (float metres / bool (H, W)), each only where the sample has it.

    Output: in training a dict of losses (``loss_sem_seg``, ``loss_depth``); at inference one dict
    per image with ``sem_seg`` (C, H, W) logits and ``depth`` (H, W) metres at the input's original
    size (``height`` / ``width`` when given).
    """

    # What inference produces; the trainer chooses evaluators (and skips panoptic targets) from it.
    OUTPUTS = TASKS

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        decoder: nn.Module,
        sem_seg_head: nn.Module,
        depth_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        ignore_value: int = 255,
        class_weights: Optional[Sequence[float]] = None,
        seg_loss_weight: float = 1.0,
        depth_loss_weight: float = 0.5,
        uncertainty_weighting: bool = False,
        depth_output_type: str = "log",
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        depth_losses: Sequence[str] = ("berhu",),
        depth_loss_weights: Sequence[float] = (1.0,),
        berhu_threshold: float = 0.2,
        berhu_relative: bool = True,
        silog_variance_focus: float = 0.85,
    ):
        super().__init__()
        check_depth_settings(depth_output_type, depth_losses, depth_loss_weights)
        self.backbone = backbone
        self.decoder = decoder
        self.sem_seg_head = sem_seg_head
        self.depth_head = depth_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.ignore_value = ignore_value
        num_classes = sem_seg_head.predictor.out_channels
        if class_weights:
            if len(class_weights) != num_classes:
                raise ValueError(
                    f"MODEL.HYDRANET.CLASS_WEIGHTS has {len(class_weights)} values for {num_classes} classes"
                )
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), False)
        else:
            self.class_weights = None
        self.task_weights = {"sem_seg": seg_loss_weight, "depth": depth_loss_weight}
        self.uncertainty = UncertaintyWeighting(TASKS) if uncertainty_weighting else None
        self.depth_output_type = depth_output_type
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.depth_loss_terms = list(zip(depth_losses, depth_loss_weights))
        self.depth_loss_kwargs = {
            "berhu": {"threshold": berhu_threshold, "relative": berhu_relative},
            "silog": {"variance_focus": silog_variance_focus},
        }
        init_depth_predictor(depth_head.predictor, depth_output_type, min_depth, max_depth)

    @classmethod
    def from_config(cls, cfg):
        node = cfg.MODEL.HYDRANET
        backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        decoder = LightWeightRefineNetDecoder(
            backbone.output_shape(), node.BACKBONE_OUT_FEATURES, node.DECODER_CHANNELS, node.CRP_STAGES
        )
        depth = cfg.MODEL.DEPTH_HEAD
        return {
            "backbone": backbone,
            "decoder": decoder,
            "sem_seg_head": HydraTaskHead(decoder.out_channels, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
            "depth_head": HydraTaskHead(decoder.out_channels, 1),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": node.SIZE_DIVISIBILITY,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "class_weights": _class_weights(cfg),
            "seg_loss_weight": node.SEG_LOSS_WEIGHT,
            "depth_loss_weight": node.DEPTH_LOSS_WEIGHT,
            "uncertainty_weighting": node.UNCERTAINTY_WEIGHTING,
            "depth_output_type": depth.OUTPUT_TYPE,
            "min_depth": depth.MIN_DEPTH,
            "max_depth": depth.MAX_DEPTH,
            "depth_losses": list(depth.LOSSES),
            "depth_loss_weights": list(depth.LOSS_WEIGHTS),
            "berhu_threshold": depth.BERHU_THRESHOLD,
            "berhu_relative": berhu_relative(depth.BERHU_THRESHOLD_MODE),
            "silog_variance_focus": depth.SILOG_VARIANCE_FOCUS,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def _size_divisibility(self):
        return self.size_divisibility

    def preprocess_image(self, batched_inputs) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def head_outputs(self, images: torch.Tensor):
        """Normalised, padded images (N, 3, H, W) -> raw head outputs at the decoder's stride
        (1/4): ``(sem_seg_logits (N, C, H/4, W/4), depth_logits (N, 1, H/4, W/4))``."""
        x = self.decoder(self.backbone(images))
        return self.sem_seg_head(x), self.depth_head(x)

    def network_outputs(self, images: torch.Tensor):
        """Normalised, padded images -> ``(sem_seg_logits (N, C, H, W), depth (N, 1, H, W) metres)``
        at the padded input size: what an exported network computes."""
        sem, depth = self.head_outputs(images)
        size = images.shape[-2:]
        sem = upsample_bilinear(sem, size, align_corners=False)
        depth = upsample_bilinear(depth, size, align_corners=False)
        return sem, depth_from_logits(depth, self.depth_output_type, self.min_depth, self.max_depth)

    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        sem, depth = self.network_outputs(images.tensor)
        if self.training:
            return self.losses(sem, depth, batched_inputs, images.tensor.shape[-2:])
        return self.postprocess(sem, depth, batched_inputs, images.image_sizes)

    def losses(self, sem_logits, depth, batched_inputs, padded_size) -> Dict[str, torch.Tensor]:
        sem_target, depth_target, valid = batch_dense_targets(
            batched_inputs, padded_size, self.ignore_value, self.device
        )
        sem_logits, depth = sem_logits.float(), depth[:, 0].float()  # losses in fp32 under AMP
        labelled = sem_target != self.ignore_value
        present = {"sem_seg": bool(labelled.any()), "depth": bool(valid.any())}
        raw = {
            "sem_seg": masked_cross_entropy(sem_logits, sem_target, self.ignore_value, self.class_weights),
            "depth": self.depth_loss(depth, depth_target, valid),
        }
        if self.uncertainty is not None:
            weighted = self.uncertainty(raw, present)
        else:
            weighted = {task: raw[task] * self.task_weights[task] for task in TASKS}

        storage = _storage()
        if storage is not None:
            counts = {
                "num_sem_seg_samples": labelled.flatten(1).any(1).sum(),
                "num_depth_samples": valid.flatten(1).any(1).sum(),
                "num_sem_seg_pixels": labelled.sum(),
                "num_depth_pixels": valid.sum(),
            }
            for name, value in counts.items():
                storage.put_scalar(f"hydranet/{name}", int(value), smoothing_hint=False)
            if self.uncertainty is not None:
                for task, s in zip(self.uncertainty.tasks, self.uncertainty.log_variances.detach()):
                    storage.put_scalar(f"hydranet/log_variance_{task}", float(s), smoothing_hint=False)
                for task in TASKS:
                    storage.put_scalar(f"hydranet/raw_loss_{task}", float(raw[task].detach()))
        return {"loss_sem_seg": weighted["sem_seg"], "loss_depth": weighted["depth"]}

    def depth_loss(self, depth, target, valid):
        """The configured depth losses over valid pixels; on depth / MAX_DEPTH for the sigmoid
        parameterisation (the SafeTrip-Q variant's normalised scale), in metres otherwise."""
        if self.depth_output_type == "sigmoid":
            depth, target = depth / self.max_depth, target / self.max_depth
        return sum(
            weight * DEPTH_LOSSES[name](depth, target, valid, **self.depth_loss_kwargs.get(name, {}))
            for name, weight in self.depth_loss_terms
        )

    def postprocess(self, sem_seg_results, depth_results, batched_inputs, image_sizes):
        """Network outputs at the padded size -> per-image ``sem_seg`` and ``depth`` at each input's
        original size (also used on the outputs of an exported network).

        ``sem_seg_results`` may instead hold per-pixel labels, (N, H, W) integers (the
        ``sem_seg_labels`` of an export with ``outputs="labels"``): the result then has
        ``sem_seg_labels`` (H, W) in place of the ``sem_seg`` logits, cropped, and resized with
        nearest neighbours when the input's ``height`` / ``width`` differ from its image size."""
        processed = []
        for sem, depth, x, image_size in zip(sem_seg_results, depth_results, batched_inputs, image_sizes):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            if sem.is_floating_point():
                semantic = {"sem_seg": _crop_and_resize(sem, image_size, height, width)}
            else:
                semantic = {"sem_seg_labels": _crop_and_resize_labels(sem, image_size, height, width)}
            processed.append({**semantic, "depth": _crop_and_resize(depth, image_size, height, width)[0]})
        return processed


def _class_weights(cfg):
    """``MODEL.HYDRANET.CLASS_WEIGHTS``, or the weights of ``CLASS_WEIGHTS_FILE`` (a relative path is
    under $DETECTRON2_DATASETS), checked against ``NUM_CLASSES``."""
    node = cfg.MODEL.HYDRANET
    if not node.CLASS_WEIGHTS_FILE:
        return list(node.CLASS_WEIGHTS)
    if node.CLASS_WEIGHTS:
        raise ValueError("Set MODEL.HYDRANET.CLASS_WEIGHTS or MODEL.HYDRANET.CLASS_WEIGHTS_FILE, not both")
    return read_class_weights(dataset_path(node.CLASS_WEIGHTS_FILE), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


def _crop_and_resize(result, image_size, height, width):
    """detectron2's ``sem_seg_postprocess`` (crop the padding, bilinear resize to height x width),
    skipping the resize when the sizes already match: bilinear to the same size is the identity,
    and on a 40-class 640x480 map it costs tens of milliseconds on CPU (a real-time budget)."""
    if (int(height), int(width)) == (int(image_size[0]), int(image_size[1])):
        return result[:, : image_size[0], : image_size[1]]
    return sem_seg_postprocess(result, image_size, height, width)


def _crop_and_resize_labels(labels, image_size, height, width):
    """(H, W) integer labels: crop the padding, nearest-neighbour resize to height x width."""
    labels = labels[: image_size[0], : image_size[1]]
    if (int(height), int(width)) == (int(image_size[0]), int(image_size[1])):
        return labels
    resized = F.interpolate(labels[None, None].float(), size=(int(height), int(width)), mode="nearest")
    return resized[0, 0].to(labels.dtype)
