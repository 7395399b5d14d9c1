"""SegDep: joint segmentation, metric depth and open-vocabulary segmentation from text queries
(the SegDep seed: HRNetV2-W32 + FPN scale alignment + CLIP text encoder + text-vision fusion).

Data flow (N images padded to a multiple of 32)::

    HRNet (hr1..hr4, strides 4..32) -> ScaleAlignmentFPN -> F (N, C_fpn, H/4, W/4)
    F -> closed-set head -> sem_seg logits (NUM_CLASSES)
    F -> depth head      -> depth (metres, MODEL.DEPTH_HEAD.OUTPUT_TYPE)
    CLIP text tower(vocabulary names) -> T (C', D)
    TextVisionFusion(F, T) -> open-vocab head -> pixel embeddings (N, D, H/4, W/4)
        -> exp(logit_scale) * cos(pixel, T) -> open_vocab_seg (C')
    CLIP text tower(queries) -> q (Q, D);  TextVisionFusion(F, T_train) (+ depth, x, y) -> referring head
        -> one mask logit map per query (Q, H/4, W/4) -> referring: mask, score, depth over the mask

The closed-set and depth heads read the vision features, not the fused ones, so ``sem_seg`` and
``depth`` do not change with the names a user asks about; only the open-vocabulary branch depends on
the vocabulary (the one given in the input, the training class names by default).

Training losses (each weighted by ``MODEL.SEGDEP.*_LOSS_WEIGHT``, each an exact 0 still connected to
the graph when its labels are absent from the batch): boundary-aware focal loss (closed-set), the
configured depth losses (``MODEL.DEPTH_HEAD.LOSSES``: L1 + BerHu + SILog in the seed), cross-entropy
over the prompt logits of the training vocabulary, KL distillation of the prompt logits from the
closed-set logits, and InfoNCE between every class's pooled pixel embedding and its text embedding
(at the embeddings' 1/4 resolution). ``MODEL.SEGDEP.HELD_OUT_CLASSES`` implements the zero-shot
protocol (see the config's comment).

Referring (free-form queries, :class:`ReferringHead`): the query sentences go through the same frozen
text tower (``ClipTextEncoder.encode``, no prompt template); the pixels are the fusion of the FPN features
with the *training* vocabulary (the same fusion module and the same pass as the open-vocab loss in
training; so the masks do not depend on the ``class_names`` an input asks for), with the detached
predicted depth and the image coordinates, computed once per image; each image's Q queries then cost one
batched pass of the head's light query half. Losses: binary cross-entropy + Dice of each query's mask
logits (upsampled to the input) against its target mask, over the image without padding
(``MODEL.SEGDEP.REFERRING_{BCE,DICE}_WEIGHT``).

Temporal refinement (``MODEL.SEGDEP.TEMPORAL``, off by default; :mod:`..heads.temporal`): a light motion
head estimates the flow from the current frame's FPN features to the previous frame's, the previous
features are warped by it (``grid_sample``) and fused with a learned gate before every head, so the
logits and depth of the previous frame are carried over where they are consistent. Inference: the model
keeps, per ``sequence_id``, the last frame's (unrefined) FPN features; an input with ``sequence_id`` and
``frame_index`` at most ``TEMPORAL_MAX_FRAME_GAP`` frames after its sequence's stored frame is refined,
every other input (no sequence keys, a sequence's first frame, a gap, a repeated or earlier frame, a
different image size) takes the plain path, and every input with the keys becomes its sequence's state
(:meth:`SegDep.reset_temporal_state`; ``model.train()`` / ``model.eval()`` clear it). Training: an input
with ``prev_image`` (the previous frame, uint8 like ``image``, same size and augmentation) is refined with
that frame's features (computed without gradient, as the state is at test time); the optional
``loss_temporal_flow`` supervises the flow with ``prev_flow`` (current -> previous, VKITTI2 backward flow).
:class:`DepthPanopticDatasetMapper` delivers these keys when ``TEMPORAL`` is on, from a record's
``prev_file_name`` / ``prev_flow_file_name`` (VKITTI2 records carry them, see ``load_vkitti2``).
"""
import dataclasses
import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from torch import nn
from torch.nn import functional as F

from ...data.vocabularies import canonical_name
from ...evaluation.panoptic_depth_metrics import segment_depths
from ..backbone.fpn_align import ScaleAlignmentFPN
from ..heads.depth_head import check_depth_settings, depth_from_logits, init_depth_predictor
from ..heads.segdep_heads import OpenVocabHead, ReferringHead, SegDepTaskHead, TextVisionFusion
from ..heads.temporal import MotionHead, TemporalFusion, warp
from ..losses import (
    berhu_relative,
    boundary_aware_focal_loss,
    dice_loss,
    info_nce_alignment_loss,
    masked_cross_entropy,
    open_vocab_distillation_loss,
)
from ..text_encoder import ClipTextEncoder
from .hydranet import HydraNet, _crop_and_resize, _storage
from .targets import batch_dense_targets

__all__ = ["SegDep", "SegDepImageEncoding"]

LOSS_NAMES = ("sem_seg", "depth", "open_vocab", "distill", "align")
# Referring losses: in the loss dict whenever a batch has queries, and (an exact 0 without queries) in
# every batch of a model built to train on referring data (see SegDep.losses).
REFERRING_LOSS_NAMES = ("referring_bce", "referring_dice")


def _upsample(x, size):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def class_map(scores: torch.Tensor) -> torch.Tensor:
    """(C, H, W) scores -> (H, W) int64 index of the highest (the first one on ties, as ``argmax``).
    ``max(dim=0).indices`` because torch's CPU ``argmax`` over the leading axis of a (C, H, W) tensor
    is several times slower, and it runs on every full-resolution output."""
    return scores.max(dim=0).indices


def _sequence_position(x) -> Optional[Tuple[str, int]]:
    """``(sequence_id as str, frame_index)`` of an inference input that belongs to a sequence, else None."""
    if x.get("sequence_id", None) is None or x.get("frame_index", None) is None:
        return None
    return str(x["sequence_id"]), int(x["frame_index"])


@META_ARCH_REGISTRY.register()
class SegDep(nn.Module):
    """Closed-set segmentation, metric depth and open-vocabulary segmentation.

    Input: detectron2's list[dict] with ``image`` (uint8 (C, H, W) in ``INPUT.FORMAT``); in training
    ``sem_seg`` (long (H, W), ``ignore_value`` = unlabelled) and / or ``depth`` + ``depth_valid``, and
    for referring samples ``queries`` (list of Q sentences) + ``referring_masks`` (bool (Q, H, W), the
    target of each query; :class:`DepthPanopticDatasetMapper` builds both); at inference optionally
    ``class_names``: a list of names, or a dict ``{vocabulary: [names]}``, and ``queries``: a list of
    free-form sentences (or of dicts with a ``"text"``, as referring dataset records hold them). With
    ``MODEL.SEGDEP.TEMPORAL``: ``sequence_id`` + ``frame_index`` at inference (video frames, refined with
    their sequence's previous frame), ``prev_image`` (+ optional ``prev_flow`` (2, H, W) and
    ``prev_flow_valid`` (H, W)) in training; see the module docstring.

    Output: in training a dict of losses (``loss_sem_seg``, ``loss_depth``, ``loss_open_vocab``,
    ``loss_distill``, ``loss_align``); at inference one dict per image, at the input's original size:

    * ``sem_seg`` (NUM_CLASSES, H, W) closed-set logits; ``depth`` (H, W) metres;
    * ``open_vocab_seg``: (C', H, W) scores (exp(logit_scale) x cosine similarity, i.e. logits) for the
      input's ``class_names`` (or the training class names), or ``{vocabulary: (C', H, W)}`` when
      ``class_names`` is a dict;
    * ``open_vocab_segments``: per name (per vocabulary for a dict) whose argmax region is not empty,
      ``{"category_id", "name", "area", "depth", "depth_median", "depth_valid"}``: every answer in metres;
    * ``panoptic_seg = (ids, segments_info)``: the closed-set regions (one segment per stuff class,
      one per connected component of a thing class; id = class x label_divisor + component, -1 void),
      every segment with ``depth`` / ``depth_median`` as :class:`PanopticDepthLab` gives them.
    * ``referring`` (only for an input with ``queries``): one dict per query, in order (see
      :meth:`answer`): ``text``, ``mask`` (bool (H, W): sigmoid(logit) > 0.5), ``score``, ``area``,
      ``depth_median`` / ``depth_mean`` (metres over the mask, NaN for an empty mask).

    For many queries on one image (a query tool, a benchmark) use ``encoding = model.encode_image(inputs)``
    once and ``model.answer(encoding, queries)`` per question: the backbone is not run again.
    """

    # What inference produces; the trainer chooses evaluators (and the mapper panoptic targets) from
    # it. "panoptic_seg" is deliberately left out: SegDep has no instance head, its panoptic_seg is
    # the closed-set regions with per-segment depth (for visualisation and "class 12.3 m" answers), so
    # declaring it would make the mapper build center / offset targets nothing learns from and the
    # trainer score PQ on connected components. "open_vocab_seg" is for an open-vocab evaluator.
    OUTPUTS = ("sem_seg", "depth", "open_vocab_seg")

    @classmethod
    def reads_previous_frame(cls, cfg) -> bool:
        """The motion module trains on the previous frame (the mapper then delivers ``prev_image``)."""
        return bool(cfg.MODEL.SEGDEP.TEMPORAL)
    # Parameters without weight decay (SegDepTrainer.build_optimizer): CLIP's learned temperature.
    NO_WEIGHT_DECAY = ("logit_scale",)

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        neck: nn.Module,
        text_encoder: ClipTextEncoder,
        fusion: nn.Module,
        sem_seg_head: nn.Module,
        depth_head: nn.Module,
        open_vocab_head: OpenVocabHead,
        referring_head: ReferringHead,
        class_names: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        held_out_classes: Sequence[str] = (),
        size_divisibility: int = 32,
        ignore_value: int = 255,
        class_weights: Optional[Sequence[float]] = None,
        seg_loss_weight: float = 1.0,
        depth_loss_weight: float = 1.0,
        open_vocab_loss_weight: float = 1.0,
        distill_loss_weight: float = 0.5,
        align_loss_weight: float = 0.1,
        focal_gamma: float = 2.0,
        boundary_band: int = 3,
        boundary_boost: float = 2.0,
        distill_temperature: float = 1.0,
        align_temperature: float = 0.07,
        backbone_lr_multiplier: float = 0.1,
        depth_output_type: str = "log",
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        depth_losses: Sequence[str] = ("l1", "berhu", "silog"),
        depth_loss_weights: Sequence[float] = (1.0, 1.0, 1.0),
        berhu_threshold: float = 0.2,
        berhu_relative: bool = True,
        silog_variance_focus: float = 0.85,
        thing_ids: Sequence[int] = (),
        label_divisor: int = 1000,
        classes_without_depth: Sequence[str] = (),
        depth_range: Optional[Sequence[float]] = None,
        min_segment_area: int = 64,
        referring_bce_weight: float = 1.0,
        referring_dice_weight: float = 1.0,
        train_referring: bool = False,
        motion_head: Optional[nn.Module] = None,
        temporal_fusion: Optional[nn.Module] = None,
        temporal_max_frame_gap: int = 1,
        temporal_max_sequences: int = 8,
        temporal_flow_loss_weight: float = 0.0,
    ):
        """
        Args:
            class_names: the NUM_CLASSES closed-set class names in label order (already cleaned): the
                training vocabulary (less ``held_out_classes``) and the default inference vocabulary.
            held_out_classes: names (raw or cleaned) whose pixels no segmentation loss sees and whose
                names the text encoder never sees in training (zero-shot protocol).
            thing_ids, label_divisor: how ``panoptic_seg`` numbers segments (dataset metadata).
            classes_without_depth, depth_range: a segment's ``depth_valid`` is False for these classes
                (e.g. sky) and for medians outside ``depth_range`` (metadata, as PanopticDepthLab).
            train_referring: the training data holds referring queries (a DATASETS.TRAIN entry registered
                with them): the referring losses are then in every loss dict, an exact 0 for a batch
                without queries, so that the loss names are the same in every iteration and on every worker.
            motion_head, temporal_fusion: the temporal refinement (:class:`MotionHead`,
                :class:`TemporalFusion`; both or neither); ``temporal_*``: see ``MODEL.SEGDEP.TEMPORAL*``.
            The rest: see ``MODEL.SEGDEP`` / ``MODEL.DEPTH_HEAD`` in :mod:`segdep_d2.config`.
        """
        super().__init__()
        check_depth_settings(depth_output_type, depth_losses, depth_loss_weights)
        self.backbone = backbone
        self.neck = neck
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.sem_seg_head = sem_seg_head
        self.depth_head = depth_head
        self.open_vocab_head = open_vocab_head
        self.referring_head = referring_head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.ignore_value = int(ignore_value)

        num_classes = sem_seg_head.predictor.out_channels
        self.class_names = [str(n) for n in class_names]
        if len(self.class_names) != num_classes:
            raise ValueError(
                f"SegDep has {num_classes} classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES) but {len(self.class_names)} "
                f"class names {self.class_names}: set MODEL.SEGDEP.CLASS_NAMES or DATASETS.TRAIN[0]'s stuff_classes"
            )
        cleaned = [canonical_name(n) for n in self.class_names]
        held_out = []
        for name in held_out_classes:
            if canonical_name(name) not in cleaned:
                raise ValueError(
                    f"MODEL.SEGDEP.HELD_OUT_CLASSES: {name!r} is not one of the classes {self.class_names}"
                )
            held_out.append(cleaned.index(canonical_name(name)))
        self.held_out_ids = sorted(set(held_out))
        self.seen_ids = [i for i in range(num_classes) if i not in self.held_out_ids]
        if not self.seen_ids:
            raise ValueError("MODEL.SEGDEP.HELD_OUT_CLASSES holds every class: nothing left to train on")
        self.train_names = [self.class_names[i] for i in self.seen_ids]
        # Label lookup tables: closed-set target (held-out -> ignore) and open-vocab target (index in
        # the training vocabulary, held-out -> ignore). Labels >= NUM_CLASSES other than the ignore
        # value are treated as unlabelled.
        size = max(num_classes, self.ignore_value) + 1
        closed = torch.full((size,), self.ignore_value, dtype=torch.long)
        seen = torch.full((size,), self.ignore_value, dtype=torch.long)
        for j, i in enumerate(self.seen_ids):
            closed[i], seen[i] = i, j
        self.register_buffer("_closed_lut", closed, False)
        self.register_buffer("_open_lut", seen, False)

        if class_weights:
            if len(class_weights) != num_classes:
                raise ValueError(
                    f"MODEL.SEGDEP.CLASS_WEIGHTS has {len(class_weights)} values for {num_classes} classes"
                )
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32), False)
        else:
            self.class_weights = None
        self.loss_weights = {
            "sem_seg": seg_loss_weight, "depth": depth_loss_weight, "open_vocab": open_vocab_loss_weight,
            "distill": distill_loss_weight, "align": align_loss_weight,
            "referring_bce": referring_bce_weight, "referring_dice": referring_dice_weight,
        }
        self.train_referring = bool(train_referring)
        self.focal = {"gamma": focal_gamma, "band": boundary_band, "boost": boundary_boost}
        self.distill_temperature = distill_temperature
        self.align_temperature = align_temperature
        self.backbone_lr_multiplier = backbone_lr_multiplier

        self.depth_output_type = depth_output_type
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.depth_loss_terms = list(zip(depth_losses, depth_loss_weights))
        self.depth_loss_kwargs = {
            "berhu": {"threshold": berhu_threshold, "relative": berhu_relative},
            "silog": {"variance_focus": silog_variance_focus},
        }
        init_depth_predictor(depth_head.predictor, depth_output_type, min_depth, max_depth)

        self.thing_ids = {int(i) for i in thing_ids}
        self.label_divisor = int(label_divisor)
        without = {canonical_name(n) for n in classes_without_depth}
        self.categories_without_depth = {i for i, n in enumerate(cleaned) if n in without}
        self._names_without_depth = without
        self.depth_range = tuple(depth_range) if depth_range is not None else (min_depth, max_depth)
        self.min_segment_area = int(min_segment_area)

        if (motion_head is None) != (temporal_fusion is None):
            raise ValueError("SegDep's temporal refinement needs both a motion head and a temporal fusion")
        if temporal_max_frame_gap < 1 or temporal_max_sequences < 1:
            raise ValueError("MODEL.SEGDEP.TEMPORAL_MAX_FRAME_GAP and TEMPORAL_MAX_SEQUENCES must be >= 1")
        self.motion_head = motion_head
        self.temporal_fusion = temporal_fusion
        self.temporal_max_frame_gap = int(temporal_max_frame_gap)
        self.temporal_max_sequences = int(temporal_max_sequences)
        self.temporal_flow_loss_weight = float(temporal_flow_loss_weight)
        # inference state: sequence_id -> (frame_index, unrefined FPN features (C, h, w)), LRU order
        self._temporal_state: "OrderedDict[str, Tuple[int, torch.Tensor]]" = OrderedDict()

    @classmethod
    def from_config(cls, cfg):
        node = cfg.MODEL.SEGDEP
        backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        neck = ScaleAlignmentFPN(cfg, backbone.output_shape())
        text_encoder = ClipTextEncoder(cfg)
        channels = neck.output_shape().channels
        hidden = node.HEAD_CHANNELS
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        names = list(node.CLASS_NAMES) or [canonical_name(n) for n in (meta.get("stuff_classes", []) if meta else [])]
        depth = cfg.MODEL.DEPTH_HEAD
        thing_ids = ()
        if meta is not None and meta.get("thing_dataset_id_to_contiguous_id", None):
            thing_ids = tuple(meta.thing_dataset_id_to_contiguous_id.values())
        temporal = {}
        if node.TEMPORAL:
            temporal = {
                "motion_head": MotionHead(channels, node.TEMPORAL_CHANNELS),
                "temporal_fusion": TemporalFusion(channels, node.TEMPORAL_CHANNELS),
                "temporal_max_frame_gap": node.TEMPORAL_MAX_FRAME_GAP,
                "temporal_max_sequences": node.TEMPORAL_MAX_SEQUENCES,
                "temporal_flow_loss_weight": node.TEMPORAL_FLOW_LOSS_WEIGHT,
            }
        return {
            **temporal,
            "backbone": backbone,
            "neck": neck,
            "text_encoder": text_encoder,
            "fusion": TextVisionFusion(
                channels, text_encoder.embed_dim, node.FUSION_HEADS, node.FUSION_LAYERS, node.FUSION_MLP_RATIO
            ),
            "sem_seg_head": SegDepTaskHead(channels, num_classes, hidden, node.NORM),
            "depth_head": SegDepTaskHead(channels, 1, hidden, node.NORM),
            "open_vocab_head": OpenVocabHead(channels, text_encoder.embed_dim, hidden, node.NORM),
            "referring_head": ReferringHead(
                channels, text_encoder.embed_dim, hidden, node.NORM, num_heads=node.REFERRING_HEADS
            ),
            "class_names": names,
            "held_out_classes": list(node.HELD_OUT_CLASSES),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": node.SIZE_DIVISIBILITY,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "class_weights": list(node.CLASS_WEIGHTS),
            "seg_loss_weight": node.SEG_LOSS_WEIGHT,
            "depth_loss_weight": node.DEPTH_LOSS_WEIGHT,
            "open_vocab_loss_weight": node.OPEN_VOCAB_LOSS_WEIGHT,
            "distill_loss_weight": node.DISTILL_LOSS_WEIGHT,
            "align_loss_weight": node.ALIGN_LOSS_WEIGHT,
            "focal_gamma": node.FOCAL_GAMMA,
            "boundary_band": node.BOUNDARY_BAND,
            "boundary_boost": node.BOUNDARY_BOOST,
            "distill_temperature": node.DISTILL_TEMPERATURE,
            "align_temperature": node.ALIGN_TEMPERATURE,
            "backbone_lr_multiplier": node.BACKBONE_LR_MULTIPLIER,
            "depth_output_type": depth.OUTPUT_TYPE,
            "min_depth": depth.MIN_DEPTH,
            "max_depth": depth.MAX_DEPTH,
            "depth_losses": list(depth.LOSSES),
            "depth_loss_weights": list(depth.LOSS_WEIGHTS),
            "berhu_threshold": depth.BERHU_THRESHOLD,
            "berhu_relative": berhu_relative(depth.BERHU_THRESHOLD_MODE),
            "silog_variance_focus": depth.SILOG_VARIANCE_FOCUS,
            "thing_ids": thing_ids,
            "label_divisor": meta.get("label_divisor", 1000) if meta is not None else 1000,
            "classes_without_depth": list(meta.get("classes_without_depth", ())) if meta is not None else [],
            "depth_range": meta.get("depth_range", None) if meta is not None else None,
            "min_segment_area": node.MIN_SEGMENT_AREA,
            "referring_bce_weight": node.REFERRING_BCE_WEIGHT,
            "referring_dice_weight": node.REFERRING_DICE_WEIGHT,
            # referring datasets carry this metadata (register_vkitti2(..., referring=...))
            "train_referring": any(
                MetadataCatalog.get(name).get("referring_max_queries", None) is not None for name in cfg.DATASETS.TRAIN
            ),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    # ---- optimiser protocol (SegDepTrainer.build_optimizer) ----
    def lr_factor(self, name: str) -> float:
        """LR multiplier of a parameter (``named_parameters`` name): pretrained modules (the HRNet
        backbone, and the text tower when it is trainable) learn at ``backbone_lr_multiplier``."""
        if name.startswith(("backbone.", "text_encoder.")):
            return self.backbone_lr_multiplier
        return 1.0

    # ---- network ----
    preprocess_image = HydraNet.preprocess_image  # normalise, pad to the size divisibility

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised, padded images (N, 3, H, W) -> the FPN's (N, C_fpn, H/4, W/4)."""
        return self.neck(self.backbone(images))

    def dense_outputs(self, features: torch.Tensor, size):
        """Closed-set logits (N, C, H, W) and depth (N, 1, H, W) metres at the padded size ``size``."""
        sem = _upsample(self.sem_seg_head(features), size)
        depth = _upsample(self.depth_head(features), size)
        return sem, depth_from_logits(depth, self.depth_output_type, self.min_depth, self.max_depth)

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """(C, D) L2-normalised prompt embeddings of ``names`` (cached by the text encoder)."""
        return self.text_encoder.class_embeddings(list(names)).to(self.device)

    def open_vocab_outputs(self, features: torch.Tensor, text: torch.Tensor):
        """Fuse ``features`` with the vocabulary ``text`` (C, D): pixel embeddings (N, D, H/4, W/4)
        and prompt logits (N, C, H/4, W/4)."""
        embeddings = self.open_vocab_head(self.fusion(features, text))
        return embeddings, self.open_vocab_head.logits(embeddings, text)

    # ---- temporal refinement ----
    @property
    def temporal(self) -> bool:
        return self.motion_head is not None

    def reset_temporal_state(self):
        """Forget every sequence's previous frame (the next frame of each takes the plain path)."""
        self._temporal_state.clear()

    def train(self, mode: bool = True):
        # features kept under other weights / another run must not be reused
        self.reset_temporal_state()
        return super().train(mode)

    def temporal_refine(self, prev: torch.Tensor, cur: torch.Tensor):
        """Previous and current FPN features (N, C, h, w) -> ``(fused, flow, gate)``: the flow (N, 2, h, w,
        pixels of this resolution, current -> previous), the previous features warped by it and fused
        with the current ones by the gate (N, 1, h, w)."""
        prev = prev.to(cur.dtype)
        flow = self.motion_head(prev, cur)
        warped, valid = warp(prev, flow)
        fused, gate = self.temporal_fusion(cur, warped.to(cur.dtype), valid)
        return fused.to(cur.dtype), flow, gate

    def _own_feature_size(self, image_size, padded_size, feature_size):
        """The feature rows / columns of an image padded alone (to ``size_divisibility``): what the
        state keeps, so that a frame batched with larger images still matches its sequence."""
        d = self.size_divisibility
        return tuple(
            min(f, math.ceil(s / d) * d * f // p) for s, p, f in zip(image_size, padded_size, feature_size)
        )

    def _apply_temporal_state(self, features, batched_inputs, images):
        """Inference: refine the features of each input that continues its sequence's stored frame,
        then store every sequence input's unrefined features (in batch order, so that consecutive
        frames in one batch chain)."""
        out = features
        padded_size = tuple(images.tensor.shape[-2:])
        for i, x in enumerate(batched_inputs):
            if _sequence_position(x) is None:
                continue
            rows, cols = self._own_feature_size(images.image_sizes[i], padded_size, features.shape[-2:])
            cur = features[i:i + 1, :, :rows, :cols]
            previous = self.temporal_previous(x, cur.shape[1:])
            if previous is not None:
                fused = self.temporal_refine(previous[None], cur)[0]
                if out is features:
                    out = features.clone()
                out[i, :, :rows, :cols] = fused[0]
            self.temporal_store(x, cur[0])
        return out

    def temporal_previous(self, x, feature_shape) -> Optional[torch.Tensor]:
        """The stored unrefined features (C, h, w) that input ``x`` continues, or None (the plain path):
        ``x`` has ``sequence_id`` + ``frame_index``, its sequence's stored frame lies 1 to
        ``TEMPORAL_MAX_FRAME_GAP`` frames before it and has ``feature_shape`` (the features of ``x``'s
        image padded alone). Also used by exported inference (``segdep_d2.modeling.export``)."""
        position = _sequence_position(x)
        if position is None:
            return None
        key, index = position
        entry = self._temporal_state.get(key, None)
        if entry is None or not 0 < index - entry[0] <= self.temporal_max_frame_gap:
            return None
        return entry[1] if tuple(entry[1].shape) == tuple(feature_shape) else None

    def temporal_store(self, x, features: torch.Tensor):
        """Make ``features`` (C, h, w, unrefined) the state of ``x``'s sequence (nothing for an input
        without ``sequence_id`` / ``frame_index``); at most ``TEMPORAL_MAX_SEQUENCES`` sequences, least
        recently used dropped first."""
        position = _sequence_position(x)
        if position is None:
            return
        key, index = position
        self._temporal_state[key] = (index, features.detach().clone())
        self._temporal_state.move_to_end(key)
        while len(self._temporal_state) > self.temporal_max_sequences:
            self._temporal_state.popitem(last=False)

    def _temporal_train(self, features, batched_inputs, images):
        """Training: refine the features of the inputs with ``prev_image``. Returns ``(features,
        flow (R, 2, h, w) or None, rows)``."""
        rows = [i for i, x in enumerate(batched_inputs) if x.get("prev_image", None) is not None]
        if not rows:
            return features, None, rows
        prev = torch.zeros((len(rows), *images.tensor.shape[1:]), dtype=images.tensor.dtype, device=self.device)
        for r, i in enumerate(rows):
            image, prev_image = batched_inputs[i]["image"], batched_inputs[i]["prev_image"]
            if tuple(prev_image.shape) != tuple(image.shape):
                raise ValueError(
                    f"prev_image {tuple(prev_image.shape)} must have the shape of image {tuple(image.shape)} "
                    "(the previous frame under the same augmentation)"
                )
            h, w = image.shape[-2:]
            prev[r, :, :h, :w] = (prev_image.to(self.device) - self.pixel_mean) / self.pixel_std
        with torch.no_grad():  # as the stored state at test time
            prev_features = self.features(prev)
        fused, flow, _ = self.temporal_refine(prev_features, features[rows])
        out = features.clone()
        out[rows] = fused
        return out, flow, rows

    def temporal_flow_loss(self, flow, rows, batched_inputs, padded_size):
        """L1 (pixels at the input size, summed over x and y, mean over valid pixels) between the
        predicted flow (upsampled) and ``prev_flow`` (2, H, W) of the refined inputs, over
        ``prev_flow_valid`` (H, W; default: finite) inside the image; an exact 0 (connected to the motion
        head) without any ``prev_flow``."""
        zero = sum(p.sum() for p in self.motion_head.parameters()) * 0.0
        items = [
            (r, batched_inputs[i]) for r, i in enumerate(rows) if batched_inputs[i].get("prev_flow", None) is not None
        ]
        if flow is None or not items:
            return zero if flow is None else zero + flow.sum() * 0.0
        picked = flow[[r for r, _ in items]].float()
        h_low, w_low = picked.shape[-2:]
        scale = torch.tensor([padded_size[1] / w_low, padded_size[0] / h_low], device=self.device).view(1, 2, 1, 1)
        pred = _upsample(picked, padded_size) * scale
        target = torch.zeros_like(pred)
        valid = torch.zeros((len(items), *padded_size), dtype=torch.bool, device=self.device)
        for k, (_, x) in enumerate(items):
            gt = x["prev_flow"].to(self.device).float()
            if gt.dim() != 3 or gt.shape[0] != 2 or tuple(gt.shape[-2:]) != tuple(x["image"].shape[-2:]):
                raise ValueError(f"prev_flow {tuple(gt.shape)} must be (2, H, W) at the image's size")
            h, w = gt.shape[-2:]
            ok = torch.isfinite(gt).all(0)
            if x.get("prev_flow_valid", None) is not None:
                ok &= x["prev_flow_valid"].to(self.device).bool()
            target[k, :, :h, :w] = torch.where(ok, gt, torch.zeros_like(gt))
            valid[k, :h, :w] = ok
        error = (pred - target).abs().sum(dim=1) * valid
        return error.sum() / valid.sum().clamp(min=1) + zero

    def forward(self, batched_inputs):
        if self.training:
            images = self.preprocess_image(batched_inputs)
            features = self.features(images.tensor)
            flow, rows = None, []
            if self.temporal:
                features, flow, rows = self._temporal_train(features, batched_inputs, images)
            size = images.tensor.shape[-2:]
            sem, depth = self.dense_outputs(features, size)
            losses = self.losses(features, sem, depth, batched_inputs, size, images.image_sizes)
            if self.temporal:
                storage = _storage()
                if storage is not None:
                    storage.put_scalar("segdep/num_temporal_samples", len(rows), smoothing_hint=False)
                if self.temporal_flow_loss_weight > 0:
                    losses["loss_temporal_flow"] = (
                        self.temporal_flow_loss(flow, rows, batched_inputs, size) * self.temporal_flow_loss_weight
                    )
                if not rows:
                    # temporal modules unused in this batch: join the graph through an exact 0 (DDP)
                    unused = list(self.motion_head.parameters()) + list(self.temporal_fusion.parameters())
                    losses["loss_sem_seg"] = losses["loss_sem_seg"] + sum(p.sum() for p in unused) * 0.0
            return losses
        encoding = self.encode_image(batched_inputs)
        open_vocab = self.open_vocab_inference(encoding.features, batched_inputs, encoding.padded_size)
        results = self.postprocess(encoding.sem_seg, encoding.depth, open_vocab, batched_inputs, encoding.image_sizes)
        if any("queries" in x for x in batched_inputs):
            answers = self.answer(encoding, [_query_texts(x) for x in batched_inputs])
            for result, x, answer in zip(results, batched_inputs, answers):
                if "queries" in x:
                    result["referring"] = answer
        return results

    # ---- training ----
    def _lookup(self, table, target):
        # labels outside the table (corrupt maps) would index out of range: count them as unlabelled
        inside = (target >= 0) & (target < table.numel())
        looked_up = table[target.clamp(0, table.numel() - 1)]
        return torch.where(inside, looked_up, torch.full_like(target, self.ignore_value))

    def losses(
        self, features, sem_logits, depth, batched_inputs, padded_size, image_sizes=None
    ) -> Dict[str, torch.Tensor]:
        sem_target, depth_target, valid = batch_dense_targets(
            batched_inputs, padded_size, self.ignore_value, self.device
        )
        closed_target = self._lookup(self._closed_lut, sem_target)  # held-out classes -> ignore
        open_target = self._lookup(self._open_lut, sem_target)  # index in the training vocabulary
        text = self.text_embeddings(self.train_names)
        fused = self.fusion(features, text)  # shared by the open-vocab and referring heads
        embeddings = self.open_vocab_head(fused)
        prompt_low = self.open_vocab_head.logits(embeddings, text)
        if image_sizes is None:
            image_sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        referring, num_queries = self.referring_losses(fused, depth, batched_inputs, padded_size, image_sizes)
        # losses in fp32 under AMP
        sem_logits, depth = sem_logits.float(), depth[:, 0].float()
        prompt = _upsample(prompt_low.float(), padded_size)
        ignore = self.ignore_value
        raw = {
            "sem_seg": boundary_aware_focal_loss(
                sem_logits, closed_target, ignore, class_weights=self.class_weights, **self.focal
            ),
            "depth": self.depth_loss(depth, depth_target, valid),
            "open_vocab": masked_cross_entropy(prompt, open_target, ignore),
            "distill": open_vocab_distillation_loss(
                prompt, sem_logits[:, self.seen_ids], open_target, ignore, self.distill_temperature
            ),
            "align": info_nce_alignment_loss(
                embeddings.float(), text, _downsample_labels(open_target, embeddings.shape[-2:]), ignore,
                self.align_temperature,
            ),
        }
        storage = _storage()
        if storage is not None:
            labelled = closed_target != ignore
            counts = {
                "num_sem_seg_samples": labelled.flatten(1).any(1).sum(),
                "num_depth_samples": valid.flatten(1).any(1).sum(),
                "num_sem_seg_pixels": labelled.sum(),
                "num_depth_pixels": valid.sum(),
            }
            for name, value in counts.items():
                storage.put_scalar(f"segdep/{name}", int(value), smoothing_hint=False)
            storage.put_scalar("segdep/logit_scale", float(self.open_vocab_head.temperature_scale.detach()))
            if num_queries or self.train_referring:
                storage.put_scalar("segdep/num_referring_queries", num_queries, smoothing_hint=False)
        out = {f"loss_{name}": raw[name] * self.loss_weights[name] for name in LOSS_NAMES}
        if num_queries or self.train_referring:
            out.update({f"loss_{name}": referring[name] * self.loss_weights[name] for name in REFERRING_LOSS_NAMES})
        else:
            # No referring data in this run: no referring loss names (the loss dict stays the five seed
            # losses), but the head's parameters still join the graph through an exact 0 (x + 0.0 == x for
            # these non-negative losses) so that DistributedDataParallel finds every parameter used.
            out["loss_open_vocab"] = out["loss_open_vocab"] + referring["referring_bce"]
        return out

    def referring_losses(self, fused, depth, batched_inputs, padded_size, image_sizes):
        """``({"referring_bce", "referring_dice"}, number of queries)`` over the batch's queries:
        per-pixel binary cross-entropy (mean over every query's pixels inside its image) and Dice (mean
        over queries) of the mask logits, upsampled to the padded input size, against
        ``referring_masks``; both an exact 0, connected to every referring parameter, without queries."""
        items = []
        for i, x in enumerate(batched_inputs):
            texts = _query_texts(x)
            if not texts:
                continue
            if "referring_masks" not in x:
                raise ValueError(
                    "a training input with 'queries' needs their target 'referring_masks' (Q, H, W) "
                    "(DepthPanopticDatasetMapper builds them from the record's instance masks)"
                )
            masks = x["referring_masks"]
            if masks.dim() != 3 or masks.shape[0] != len(texts) or tuple(masks.shape[-2:]) != tuple(image_sizes[i]):
                raise ValueError(
                    f"referring_masks {tuple(masks.shape)} must be (Q, H, W) = ({len(texts)}, "
                    f"{image_sizes[i][0]}, {image_sizes[i][1]}): one mask per query at the image's size"
                )
            items.append((i, texts, masks))
        if not items:
            zero = sum(p.sum() for p in self.referring_head.parameters()) * 0.0
            return {"referring_bce": zero, "referring_dice": zero}, 0
        rows = [i for i, _, _ in items]
        pixels = self._referring_pixels(fused[rows], depth[rows], [image_sizes[i] for i in rows], padded_size)
        keys, values = self.referring_head.memory(pixels)
        text = self.text_encoder.encode([t for _, texts, _ in items for t in texts]).to(self.device)
        logits, targets, valid = [], [], []
        start = 0
        for row, (i, texts, masks) in enumerate(items):
            q = len(texts)
            valid_low = self._feature_valid(image_sizes[i], padded_size, pixels)
            low = self.referring_head(pixels[row], text[start:start + q], valid_low, (keys[row], values[row]))
            start += q
            logits.append(_upsample(low[None], padded_size)[0])
            h, w = image_sizes[i]
            target = torch.zeros((q, *padded_size), dtype=torch.bool, device=self.device)
            target[:, :h, :w] = masks.to(self.device).bool()
            targets.append(target)
            inside = torch.zeros(tuple(padded_size), dtype=torch.bool, device=self.device)
            inside[:h, :w] = True
            valid.append(inside.expand(q, -1, -1))
        logits, targets, valid = torch.cat(logits).float(), torch.cat(targets), torch.cat(valid)
        weight = valid.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
        return {
            "referring_bce": (bce * weight).sum() / weight.sum().clamp(min=1.0),
            "referring_dice": dice_loss(logits, targets, valid),
        }, int(targets.shape[0])

    # The configured depth losses over valid pixels (on depth / MAX_DEPTH for the sigmoid output):
    # the same settings attributes as HydraNet, so the same method.
    depth_loss = HydraNet.depth_loss

    # ---- referring ----
    @staticmethod
    def _feature_valid(image_size, padded_size, pixels):
        """(h, w) bool: the feature pixels of ``pixels`` (..., h, w) that cover the image of
        ``image_size`` inside ``padded_size`` (False on pixels of padding only)."""
        h, w = pixels.shape[-2:]
        valid = torch.zeros((h, w), dtype=torch.bool, device=pixels.device)
        valid[: math.ceil(image_size[0] * h / padded_size[0]), : math.ceil(image_size[1] * w / padded_size[1])] = True
        return valid

    def _referring_pixels(self, fused, depth, image_sizes, padded_size):
        """The referring head's pixel embeddings (N, D, h, w) of fused features (N, C, h, w), the
        padded depth (N, 1, H, W) and each image's size."""
        h, w = fused.shape[-2:]
        stride_y, stride_x = padded_size[0] / h, padded_size[1] / w
        extents = torch.tensor(
            [[size[0] / stride_y, size[1] / stride_x] for size in image_sizes], device=fused.device
        )
        low_depth = F.adaptive_avg_pool2d(depth.float(), (h, w))
        return self.referring_head.pixel_embeddings(fused, low_depth, extents)

    def encode_image(self, batched_inputs) -> "SegDepImageEncoding":
        """Run the image part of the network once (backbone, FPN, closed-set and depth heads) and keep
        what queries need: pass the result to :meth:`answer` any number of times. Inference mode (the
        caller chooses ``torch.no_grad``); ``batched_inputs`` as :meth:`forward` takes them."""
        images = self.preprocess_image(batched_inputs)
        features = self.features(images.tensor)
        if self.temporal and not self.training:
            features = self._apply_temporal_state(features, batched_inputs, images)
        size = tuple(int(v) for v in images.tensor.shape[-2:])
        sem, depth = self.dense_outputs(features, size)
        output_sizes = [
            (int(x.get("height", s[0])), int(x.get("width", s[1]))) for x, s in zip(batched_inputs, images.image_sizes)
        ]
        return SegDepImageEncoding(
            features=features, sem_seg=sem, depth=depth,
            image_sizes=[tuple(int(v) for v in s) for s in images.image_sizes], output_sizes=output_sizes,
        )

    def answer(
        self, encoding: "SegDepImageEncoding", queries: Sequence[Union[str, Sequence[str]]]
    ) -> List[List[dict]]:
        """Referring answers from an :meth:`encode_image` result, without running the backbone again.

        ``queries``: one list of sentences asked of every image, or one list per image (empty: nothing
        asked of that image). Returns one list per image, one dict per query in order:

        * ``text``: the query;
        * ``mask``: bool (H, W) at the input's original size (``height`` / ``width``), sigmoid(logit) > 0.5;
        * ``score``: sigmoid of the mean mask logit over the mask (the mask's confidence; >= 0.5), or,
          for an empty mask, sigmoid of the largest logit (<= 0.5). Not trained separately: a
          confidence of the predicted mask, not a calibrated probability that the target exists;
        * ``area``: pixels in the mask;
        * ``depth_median``, ``depth_mean``: median (numpy's) and mean of the predicted depth over the
          mask, metres; NaN when the mask is empty (no pixel to measure).

        The pixel half of the referring head (and its attention keys / values) runs once per encoding
        (the result is kept in it); each image's queries then go through the head's query half in one
        batched pass.
        """
        per_image = _per_image_queries(queries, len(encoding))
        answers: List[List[dict]] = [[] for _ in per_image]
        if not any(per_image):
            return answers
        if encoding.referring_pixels is None:
            fused = self.fusion(encoding.features, self.text_embeddings(self.train_names))
            encoding.referring_pixels = self._referring_pixels(
                fused, encoding.depth, encoding.image_sizes, encoding.padded_size
            )
            encoding.referring_memory = self.referring_head.memory(encoding.referring_pixels)
        pixels = encoding.referring_pixels
        keys, values = encoding.referring_memory
        texts = [t for q in per_image for t in q]
        text = self.text_encoder.encode(texts).to(self.device)
        start = 0
        for i, texts_i in enumerate(per_image):
            if not texts_i:
                continue
            q = len(texts_i)
            valid_low = self._feature_valid(encoding.image_sizes[i], encoding.padded_size, pixels)
            low = self.referring_head(pixels[i], text[start:start + q], valid_low, (keys[i], values[i]))
            start += q
            logits = _upsample(low[None].float(), encoding.padded_size)[0]
            height, width = encoding.output_sizes[i]
            logits = _crop_and_resize(logits, encoding.image_sizes[i], height, width)
            answers[i] = self._referring_answers(texts_i, logits, encoding.output_depth(i))
        return answers

    @staticmethod
    def _referring_answers(texts, logits, depth):
        """Mask logits (Q, H, W) and depth (H, W) metres at the output size -> one answer per query."""
        masks = logits > 0  # sigmoid > 0.5
        areas = masks.flatten(1).sum(dim=1)
        flat = logits.flatten(1)
        inside = (flat * masks.flatten(1)).sum(dim=1) / areas.clamp(min=1)
        scores = torch.sigmoid(torch.where(areas > 0, inside, flat.max(dim=1).values)).detach()
        depth_np = depth.detach().float().cpu().numpy()
        masks_np = masks.cpu().numpy()
        out = []
        for q, text in enumerate(texts):
            values = depth_np[masks_np[q]]
            out.append({
                "text": text,
                "mask": masks[q],
                "score": float(scores[q]),
                "area": int(values.size),
                "depth_median": float(np.median(values)) if values.size else float("nan"),
                "depth_mean": float(values.mean(dtype=np.float64)) if values.size else float("nan"),
            })
        return out

    # ---- inference ----
    def _vocabularies(self, x) -> "OrderedDict[Optional[str], List[str]]":
        """The input's vocabularies: ``{None: names}`` for a list (or none: the training class
        names), ``{vocabulary: names}`` for a dict."""
        names = x.get("class_names", None)
        if names is None:
            return OrderedDict([(None, self.class_names)])
        if isinstance(names, Mapping):
            vocabularies = OrderedDict((str(k), [str(n) for n in v]) for k, v in names.items())
        else:
            vocabularies = OrderedDict([(None, [names] if isinstance(names, str) else [str(n) for n in names])])
        for key, value in vocabularies.items():
            if not value:
                raise ValueError(f"class_names{'' if key is None else f'[{key!r}]'} is empty: give at least one name")
        return vocabularies

    def open_vocab_inference(self, features, batched_inputs, padded_size):
        """Per image, ``{vocabulary key: prompt logits (C', H, W) at the padded size}``; images that
        ask for the same names are fused in one batch."""
        per_image = [self._vocabularies(x) for x in batched_inputs]
        groups: "OrderedDict[tuple, List[int]]" = OrderedDict()
        for i, vocabularies in enumerate(per_image):
            for names in vocabularies.values():
                groups.setdefault(tuple(names), []).append(i)
        logits_by_names = {}
        for names, indices in groups.items():
            indices = sorted(set(indices))
            _, logits = self.open_vocab_outputs(features[indices], self.text_embeddings(names))
            logits = _upsample(logits, padded_size)
            for row, i in enumerate(indices):
                logits_by_names[(names, i)] = logits[row]
        return [
            OrderedDict((key, logits_by_names[(tuple(names), i)]) for key, names in vocabularies.items())
            for i, vocabularies in enumerate(per_image)
        ]

    def postprocess(self, sem_seg_results, depth_results, open_vocab_results, batched_inputs, image_sizes):
        """Network outputs at the padded size -> per-image results at each input's original size."""
        processed = []
        for sem, depth, open_vocab, x, image_size in zip(
            sem_seg_results, depth_results, open_vocab_results, batched_inputs, image_sizes
        ):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            r = _crop_and_resize(sem, image_size, height, width)
            d = _crop_and_resize(depth, image_size, height, width)[0]
            result = {"sem_seg": r, "depth": d, "panoptic_seg": self.panoptic_regions(class_map(r), d)}
            vocabularies = self._vocabularies(x)
            scores = {key: _crop_and_resize(v, image_size, height, width) for key, v in open_vocab.items()}
            segments = {key: self.named_segments(scores[key], vocabularies[key], d) for key in scores}
            if None in scores:  # a list of names (or none given)
                result["open_vocab_seg"], result["open_vocab_segments"] = scores[None], segments[None]
            else:
                result["open_vocab_seg"], result["open_vocab_segments"] = scores, segments
            processed.append(result)
        return processed

    def panoptic_regions(self, labels: torch.Tensor, depth: torch.Tensor):
        """Closed-set labels (H, W) -> ``(ids, segments_info)``: one segment per stuff class, one
        per 8-connected component of a thing class (id = class x label_divisor + component), segments
        under ``min_segment_area`` pixels void (-1); every segment with its depth
        (:func:`segment_depths`) as PanopticDepthLab's."""
        labels_np = labels.detach().cpu().numpy()
        ids = np.full(labels_np.shape, -1, dtype=np.int64)
        for c in np.unique(labels_np).tolist():
            mask = labels_np == c
            if c in self.thing_ids:
                _, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
                ids[mask] = c * self.label_divisor + components[mask]
            else:
                ids[mask] = c * self.label_divisor
        segment_ids, areas = np.unique(ids, return_counts=True)
        small = segment_ids[(areas < self.min_segment_area) & (segment_ids >= 0)]
        if small.size:
            ids[np.isin(ids, small)] = -1
        stats = segment_depths(ids, depth.detach().float().cpu(), void_ids=(-1,))
        lo, hi = self.depth_range
        segments_info = []
        for seg_id, values in stats.items():
            category = int(seg_id) // self.label_divisor
            segments_info.append({
                "id": int(seg_id),
                "category_id": category,
                "isthing": category in self.thing_ids,
                **values,
                "depth_valid": category not in self.categories_without_depth and lo < values["depth_median"] < hi,
            })
        return torch.as_tensor(ids, device=labels.device), segments_info

    def named_segments(self, scores: torch.Tensor, names: Sequence[str], depth: torch.Tensor):
        """Open-vocab scores (C', H, W) -> one entry per name whose argmax region is not empty, with
        its area and depth (mean / median over the region, metres)."""
        stats = segment_depths(class_map(scores).detach().cpu(), depth.detach().float().cpu(), void_ids=())
        lo, hi = self.depth_range
        return [
            {
                "category_id": int(j),
                "name": names[j],
                **values,
                "depth_valid": canonical_name(names[j]) not in self._names_without_depth
                and lo < values["depth_median"] < hi,
            }
            for j, values in stats.items()
        ]


@dataclasses.dataclass(eq=False)
class SegDepImageEncoding:
    """What :meth:`SegDep.encode_image` keeps of a batch of images for :meth:`SegDep.answer`: the FPN
    features (N, C, H/4, W/4), the closed-set logits (N, C, H, W) and depth (N, 1, H, W, metres) at the
    padded size, each image's size inside the padding and its output size; ``referring_pixels`` and
    ``referring_memory`` (the referring head's query-independent pixel embeddings and their attention
    keys / values) are filled by the first ``answer``."""

    features: torch.Tensor
    sem_seg: torch.Tensor
    depth: torch.Tensor
    image_sizes: List[Tuple[int, int]]
    output_sizes: List[Tuple[int, int]]
    referring_pixels: Optional[torch.Tensor] = None
    referring_memory: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    _output_depth: Dict[int, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)

    def __len__(self):
        return self.features.shape[0]

    @property
    def padded_size(self) -> Tuple[int, int]:
        return tuple(int(v) for v in self.depth.shape[-2:])

    def output_depth(self, i: int) -> torch.Tensor:
        """Image ``i``'s depth (H, W) metres at its output size, as ``SegDep.postprocess`` gives it."""
        if i not in self._output_depth:
            self._output_depth[i] = _crop_and_resize(self.depth[i], self.image_sizes[i], *self.output_sizes[i])[0]
        return self._output_depth[i]


def _query_texts(x) -> List[str]:
    """An input's ``queries`` as sentences: a list of strings, or of dicts with a ``"text"`` (a
    referring dataset record's queries); a single string is one query; none -> []."""
    queries = x.get("queries", None)
    if queries is None:
        return []
    if isinstance(queries, str):
        return [queries]
    return [str(q["text"]) if isinstance(q, Mapping) else str(q) for q in queries]


def _per_image_queries(queries, num_images) -> List[List[str]]:
    """``answer``'s ``queries``: one list for every image, or one list per image."""
    if isinstance(queries, str):
        queries = [queries]
    queries = list(queries)
    if all(isinstance(q, (str, Mapping)) for q in queries):
        texts = _query_texts({"queries": queries})
        return [list(texts) for _ in range(num_images)]
    if len(queries) != num_images:
        raise ValueError(f"queries: {len(queries)} lists for {num_images} images (give one list per image, "
                         "or one list of sentences for all of them)")
    return [_query_texts({"queries": q}) for q in queries]


def _downsample_labels(target: torch.Tensor, size) -> torch.Tensor:
    """(N, H, W) labels -> (N, h, w) by nearest neighbour at pixel centres ("nearest-exact"),
    the label under each 1/4-resolution feature pixel."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].long()
