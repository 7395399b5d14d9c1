"""DepthCompletion (seed 004): dense metric depth from an RGB image, a sparse LiDAR / depth map and,
optionally, semantics (the record's label map or a frozen segmentation model's class probabilities).

The seed is a DepthNet-style encoder-decoder on [RGB (3) + sparse depth (1) + 2 extra channels] with
skip connections, supervised at five scales by a weighted multi-scale L1. Here:

* the sparse depth goes through its own light stem together with its validity mask (a missing point is
  not a point at 0 m), and the semantics are one-hot or embedded channels (the seed's 2 extra channels are
  an embedding of width 2);
* the encoder is the seed's strided conv stages (``ENCODER: "conv"``; the image, semantic channels and
  sparse stem concatenated at its input) or any detectron2 backbone (``"backbone"``; the sparse stem and
  semantics summed into the image through a zero-initialised 1x1 projection, so pretrained weights start
  unchanged);
* the decoder upsamples x2 per level (transposed conv or bilinear + conv), concatenates the encoder's skip
  at each stride (at full resolution: the image, semantics and sparse stem) and predicts depth at 1/16,
  1/8, 1/4, 1/2 and 1/1 of the (padded) input; inference returns the finest;
* depth is ``MAX_DEPTH * sigmoid(x)``: non-negative and bounded by the configured range, on the same
  scale (depth / MAX_DEPTH) as the sparse input and the losses (``segdep_d2.modeling.losses``);
* or, with ``PREFILL: "dilation"`` (the shipped configs), a correction of a morphological fill of the points
  (:func:`dilation_fill`; the stem also sees the fill): depth = fill * exp(x) where the fill reaches, with
  zero-initialised predictors, so that the untrained network is the fill and training refines it.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable, get_cfg
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone, build_model
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_first_n
from torch import nn
from torch.nn import functional as F

from ..losses import (
    depth_confidence_loss,
    edge_aware_smoothness_loss,
    multiscale_depth_l1_loss,
    multiscale_depth_l2_loss,
)
from .targets import batch_dense_targets

__all__ = ["DepthCompletion", "ConvEncoder", "BackboneEncoder", "CompletionDecoder", "build_semantic_guide",
           "dilation_fill"]

logger = logging.getLogger(__name__)

ENCODERS = ("conv", "backbone")
SEMANTIC_INPUTS = ("none", "labels", "guide")
PREFILLS = ("none", "dilation")
SEMANTIC_ENCODINGS = ("onehot", "embedding")
UPSAMPLE_MODES = ("deconv", "bilinear")
# The strides the decoder predicts depth at, coarsest first (LOSS_SCALE_WEIGHTS / DECODER_CHANNELS order).
PREDICTION_STRIDES = (16, 8, 4, 2, 1)
START_DEPTH = 10.0


def _conv3x3(in_channels, out_channels, norm, stride=1):
    conv = Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=1, bias=not norm,
        norm=get_norm(norm, out_channels), activation=F.relu,
    )
    weight_init.c2_msra_fill(conv)
    return conv


class ConvEncoder(nn.Module):
    """The seed's encoder: one stage per entry of ``channels``, each a stride-2 3x3 conv and a 3x3 conv
    (norm + ReLU), on the concatenation of the image and the extra (sparse stem + semantic) channels.
    Outputs ``s2``, ``s4``, ... (named by stride)."""

    def __init__(self, in_channels: int, channels: Sequence[int], norm="BN"):
        super().__init__()
        if len(channels) < 4:
            raise ValueError(
                f"MODEL.DEPTH_COMPLETION.ENCODER_CHANNELS needs >= 4 stages (stride >= 16), got {list(channels)}"
            )
        self._shapes = {}
        stages = []
        for i, c in enumerate(channels):
            stages.append(nn.Sequential(_conv3x3(in_channels, c, norm, stride=2), _conv3x3(c, c, norm)))
            self._shapes[f"s{2 ** (i + 1)}"] = ShapeSpec(channels=c, stride=2 ** (i + 1))
            in_channels = c
        self.stages = nn.ModuleList(stages)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)

    @property
    def size_divisibility(self) -> int:
        return max(s.stride for s in self._shapes.values())

    def forward(self, image, extra):
        x = torch.cat([image, extra], dim=1)
        out = {}
        for name, stage in zip(self._shapes, self.stages):
            x = stage(x)
            out[name] = x
        return out


class BackboneEncoder(nn.Module):
    """A detectron2 backbone on ``image + P(extra)``, P a 1x1 conv initialised to 0 (the sparse stem
    and semantics enter by a sum at the input, any 3-channel backbone fits, pretrained weights start
    unchanged); its ``features`` are the decoder's skips."""

    def __init__(self, backbone: Backbone, features: Sequence[str], extra_channels: int, image_channels: int = 3):
        super().__init__()
        shapes = backbone.output_shape()
        missing = [f for f in features if f not in shapes]
        if missing or not features:
            raise ValueError(
                f"MODEL.DEPTH_COMPLETION.BACKBONE_FEATURES {list(features)}: the backbone "
                f"({type(backbone).__name__}) outputs {sorted(shapes)}; set its out features (e.g. "
                f"MODEL.RESNETS.OUT_FEATURES, MODEL.HYDRANET.BACKBONE_OUT_FEATURES) to include them"
            )
        self.backbone = backbone
        self.features = list(features)
        self._shapes = {f: shapes[f] for f in self.features}
        self.inject = nn.Conv2d(extra_channels, image_channels, 1)
        nn.init.zeros_(self.inject.weight)
        nn.init.zeros_(self.inject.bias)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)

    @property
    def size_divisibility(self) -> int:
        return max(self.backbone.size_divisibility, *(s.stride for s in self._shapes.values()))

    def forward(self, image, extra):
        feats = self.backbone(image + self.inject(extra))
        return {f: feats[f] for f in self.features}


class _DecoderLevel(nn.Module):
    def __init__(self, in_channels, skip_channels, out_channels, upsample, mode, norm):
        super().__init__()
        self.upsample, self.mode = upsample, mode
        if not upsample:
            self.up = _conv3x3(in_channels, out_channels, norm)
        elif mode == "deconv":
            deconv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=not norm)
            weight_init.c2_msra_fill(deconv)
            self.up = nn.Sequential(deconv, *([get_norm(norm, out_channels)] if norm else []), nn.ReLU(inplace=True))
        else:
            self.up = _conv3x3(in_channels, out_channels, norm)
        self.fuse = _conv3x3(out_channels + skip_channels, out_channels, norm)

    def forward(self, x, skips: List[torch.Tensor], size):
        if self.upsample and self.mode == "bilinear":
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.up(x)
        if x.shape[-2:] != size:  # a backbone whose strided convs round differently
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, *skips], dim=1)) if skips else self.fuse(x)


class CompletionDecoder(nn.Module):
    """U-Net decoder over the encoder's skips (grouped by stride) and a full-resolution skip.

    It starts from the encoder's coarsest features (all taps at the coarsest stride, concatenated; that
    stride must be >= 16), then one level per stride down to 1: upsample x2 (not at the first level when
    the coarsest stride is 16), concatenate the skips at that stride, 3x3 conv. Levels at strides 16 .. 1
    each predict depth logits with a 3x3 conv (the finest with ``finest_extra`` more channels, e.g. the
    confidence). ``forward`` returns the five predictions, coarsest first.
    """

    def __init__(
        self,
        skip_shapes: Dict[str, ShapeSpec],
        full_res_channels: int,
        channels: Sequence[int],
        upsample: str = "deconv",
        norm: str = "BN",
        finest_extra: int = 0,
    ):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"MODEL.DEPTH_COMPLETION.UPSAMPLE {upsample!r}; expected one of {UPSAMPLE_MODES}")
        if len(channels) != len(PREDICTION_STRIDES):
            raise ValueError(
                f"MODEL.DEPTH_COMPLETION.DECODER_CHANNELS needs {len(PREDICTION_STRIDES)} widths "
                f"(strides {PREDICTION_STRIDES}), got {list(channels)}"
            )
        strides = {s.stride for s in skip_shapes.values()}
        if any(s & (s - 1) for s in strides):
            raise ValueError(f"encoder strides must be powers of 2, got {sorted(strides)}")
        coarsest = max(strides)
        if coarsest < PREDICTION_STRIDES[0]:
            raise ValueError(
                f"the encoder's coarsest stride is {coarsest}; the decoder needs >= {PREDICTION_STRIDES[0]}"
            )
        self.skip_names = {s: [n for n, sh in skip_shapes.items() if sh.stride == s] for s in strides}
        self.coarsest = coarsest
        level_strides = [coarsest // 2 ** k for k in range(1, coarsest.bit_length())]
        if coarsest == PREDICTION_STRIDES[0]:
            level_strides = [coarsest] + level_strides
        width = {
            s: channels[PREDICTION_STRIDES.index(s)] if s in PREDICTION_STRIDES else channels[0] for s in level_strides
        }

        in_channels = sum(skip_shapes[n].channels for n in self.skip_names[coarsest])
        self.level_strides = level_strides
        levels, predictors = [], {}
        for s in level_strides:
            upsample_here = s != coarsest
            skip = 0 if not upsample_here else sum(skip_shapes[n].channels for n in self.skip_names.get(s, []))
            if s == 1:
                skip += full_res_channels
            levels.append(_DecoderLevel(in_channels, skip, width[s], upsample_here, upsample, norm))
            if s in PREDICTION_STRIDES:
                out = 1 + (finest_extra if s == 1 else 0)
                predictors[str(s)] = nn.Conv2d(width[s], out, 3, padding=1)
            in_channels = width[s]
        self.levels = nn.ModuleList(levels)
        self.predictors = nn.ModuleDict(predictors)
        for p in self.predictors.values():
            nn.init.normal_(p.weight, 0, 0.001)
            nn.init.zeros_(p.bias)

    def forward(self, features: Dict[str, torch.Tensor], full_res: torch.Tensor) -> List[torch.Tensor]:
        x = torch.cat([features[n] for n in self.skip_names[self.coarsest]], dim=1)
        height, width = full_res.shape[-2:]
        preds = []
        for s, level in zip(self.level_strides, self.levels):
            skips = [] if s == self.coarsest else [features[n] for n in self.skip_names.get(s, [])]
            if s == 1:
                skips.append(full_res)
            x = level(x, skips, (height // s, width // s))
            if str(s) in self.predictors:
                preds.append(self.predictors[str(s)](x))
        return preds


def build_semantic_guide(cfg, num_classes: int) -> nn.Module:
    """The frozen segmentation model of ``SEMANTIC_INPUT: "guide"``: ``GUIDE_CONFIG`` merged onto
    ``get_cfg()`` + ``add_segdep_config`` (on ``cfg``'s device), built with ``build_model`` and loaded
    with ``DetectionCheckpointer`` from ``GUIDE_WEIGHTS`` (or the guide config's ``MODEL.WEIGHTS``);
    eval mode, no gradients. Its ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` must be ``num_classes``."""
    from ...config import add_segdep_config
    from . import model_outputs

    node = cfg.MODEL.DEPTH_COMPLETION
    if not node.GUIDE_CONFIG:
        raise ValueError('MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT "guide" needs MODEL.DEPTH_COMPLETION.GUIDE_CONFIG')
    guide_cfg = get_cfg()
    add_segdep_config(guide_cfg)
    guide_cfg.merge_from_file(node.GUIDE_CONFIG)
    guide_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    weights = node.GUIDE_WEIGHTS or guide_cfg.MODEL.WEIGHTS
    guide_cfg.MODEL.WEIGHTS = weights
    if "sem_seg" not in model_outputs(guide_cfg):
        raise ValueError(
            f"The guide {node.GUIDE_CONFIG} ({guide_cfg.MODEL.META_ARCHITECTURE}) has no sem_seg output"
        )
    guide_classes = guide_cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if guide_classes != num_classes:
        raise ValueError(
            f"The guide {node.GUIDE_CONFIG} predicts {guide_classes} classes (its MODEL.SEM_SEG_HEAD.NUM_CLASSES) "
            f"but the depth-completion model expects {num_classes} (MODEL.DEPTH_COMPLETION.NUM_CLASSES, "
            f"0 = MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
        )
    guide = build_model(guide_cfg)
    if weights:
        DetectionCheckpointer(guide).load(weights)
    else:
        logger.warning(f"The semantic guide {node.GUIDE_CONFIG} has no weights (GUIDE_WEIGHTS, MODEL.WEIGHTS): random")
    guide.eval()
    for p in guide.parameters():
        p.requires_grad_(False)
    return guide


def _storage():
    try:
        return get_event_storage()
    except AssertionError:  # no EventStorage active (plain forward outside a trainer)
        return None


def _pad_batch(tensors: Sequence[torch.Tensor], size, value) -> torch.Tensor:
    """(..., h_i, w_i) tensors -> one (N, ..., H, W) batch, each at the top-left, the rest ``value``."""
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], *size), value)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out


@META_ARCH_REGISTRY.register()
class DepthCompletion(nn.Module):
    """Dense metric depth from RGB + sparse depth (+ semantics), supervised at five scales.

    Input: detectron2's list[dict] with ``image`` (uint8 (C, H, W) in ``INPUT.FORMAT``), ``sparse_depth``
    (float (H, W) metres, 0 = no point; an all-zero map is a valid input), ``sem_seg`` (long (H, W),
    ``ignore_value`` = unlabelled) with ``SEMANTIC_INPUT: "labels"`` (a sample without it has no
    semantics), and in training ``depth`` + ``depth_valid`` (float metres / bool (H, W); a sample without
    them contributes no supervision).

    Output: in training a dict of losses, ``loss_depth_l1`` (+ ``loss_depth_l2``, ``loss_smoothness``,
    ``loss_depth_confidence`` when enabled); at inference one dict per image with ``depth`` (H, W) metres
    in [MIN_DEPTH, MAX_DEPTH] (+ ``depth_confidence`` (H, W) in (0, 1) with PREDICT_CONFIDENCE) at the
    input's original size (``height`` / ``width`` when given).
    """

    OUTPUTS = ("depth",)

    @classmethod
    def reads_sparse_depth(cls, cfg) -> bool:
        """Always: the mapper must deliver ``sparse_depth`` (INPUT.SPARSE_DEPTH)."""
        return True

    @classmethod
    def reads_semantic_labels(cls, cfg) -> bool:
        """Whether the model takes the record's ``sem_seg`` as an *input* (SEMANTIC_INPUT "labels"), so a
        mapper should deliver it at test time too, not only as a training target."""
        return cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT == "labels"

    @configurable
    def __init__(
        self,
        *,
        encoder: nn.Module,
        decoder: CompletionDecoder,
        sparse_stem: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        semantic_input: str = "none",
        semantic_encoding: str = "embedding",
        num_classes: int = 0,
        semantic_channels: int = 2,
        guide: Optional[nn.Module] = None,
        ignore_value: int = 255,
        size_divisibility: int = 32,
        scale_weights: Sequence[float] = (0.0625, 0.125, 0.25, 0.5, 1.0),
        relative: bool = False,
        l2_weight: float = 0.0,
        smoothness_weight: float = 0.0,
        predict_confidence: bool = False,
        confidence_loss_weight: float = 0.1,
        prefill: str = "none",
        prefill_kernels: Sequence[int] = (3, 3, 5, 5, 7, 7, 9, 9, 13, 13, 17, 17),
    ):
        super().__init__()
        if prefill not in PREFILLS:
            raise ValueError(f"MODEL.DEPTH_COMPLETION.PREFILL {prefill!r}; expected one of {PREFILLS}")
        if any(int(k) < 1 or int(k) % 2 == 0 for k in prefill_kernels):
            raise ValueError(f"MODEL.DEPTH_COMPLETION.PREFILL_KERNELS must be odd sizes >= 1, got {list(prefill_kernels)}")
        if semantic_input not in SEMANTIC_INPUTS:
            raise ValueError(
                f"MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT {semantic_input!r}; expected one of {SEMANTIC_INPUTS}"
            )
        if semantic_encoding not in SEMANTIC_ENCODINGS:
            raise ValueError(
                f"MODEL.DEPTH_COMPLETION.SEMANTIC_ENCODING {semantic_encoding!r}; expected one of {SEMANTIC_ENCODINGS}"
            )
        if semantic_input != "none" and num_classes <= 0:
            raise ValueError(f"SEMANTIC_INPUT {semantic_input!r} needs a positive number of classes, got {num_classes}")
        if semantic_input == "guide" and guide is None:
            raise ValueError('SEMANTIC_INPUT "guide" needs a guide model')
        if len(scale_weights) != len(PREDICTION_STRIDES):
            raise ValueError(
                f"MODEL.DEPTH_COMPLETION.LOSS_SCALE_WEIGHTS needs {len(PREDICTION_STRIDES)} weights "
                f"(1/16 -> 1/1), got {list(scale_weights)}"
            )
        if not 0 < min_depth < max_depth:
            raise ValueError(f"depth range ({min_depth}, {max_depth}) is empty")
        self.encoder = encoder
        self.decoder = decoder
        self.sparse_stem = sparse_stem
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.semantic_input = semantic_input
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        # onehot: the (soft) one-hot map itself; embedding: a 1x1 conv without bias = a per-class vector
        # (ignore / no label -> 0), the expected vector under soft class probabilities.
        if semantic_input != "none" and semantic_encoding == "embedding":
            self.semantic_embedding = nn.Conv2d(num_classes, semantic_channels, 1, bias=False)
            nn.init.normal_(self.semantic_embedding.weight, 0.0, 1.0)
        else:
            self.semantic_embedding = None
        self.guide = guide
        self.size_divisibility = max(int(size_divisibility), int(encoder.size_divisibility))
        self.scale_weights = [float(w) for w in scale_weights]
        self.relative = relative
        self.l2_weight = l2_weight
        self.smoothness_weight = smoothness_weight
        self.predict_confidence = predict_confidence
        self.confidence_loss_weight = confidence_loss_weight
        self.prefill = prefill
        self.prefill_kernels = [int(k) for k in prefill_kernels]
        # Untrained output: START_DEPTH metres (or half the range, if smaller) everywhere, not the range's middle;
        # with a prefill, r = 0: the fill itself where it reaches.
        start = min(START_DEPTH, self.max_depth / 2)
        for predictor in self.decoder.predictors.values():
            if prefill == "none":
                nn.init.constant_(predictor.bias[:1], math.log(start / (self.max_depth - start)))
            else:  # zero-initialised last layer: r = 0 exactly, whatever the features (as a residual branch)
                nn.init.zeros_(predictor.weight)
                nn.init.zeros_(predictor.bias)

    @staticmethod
    def semantic_channel_count(semantic_input, semantic_encoding, num_classes, semantic_channels) -> int:
        """Channels the semantics add to the network's input: 0, NUM_CLASSES (onehot) or SEMANTIC_CHANNELS."""
        if semantic_input == "none":
            return 0
        return num_classes if semantic_encoding == "onehot" else semantic_channels

    @classmethod
    def from_config(cls, cfg):
        node = cfg.MODEL.DEPTH_COMPLETION
        num_classes = node.NUM_CLASSES or cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        sem_channels = cls.semantic_channel_count(
            node.SEMANTIC_INPUT, node.SEMANTIC_ENCODING, num_classes, node.SEMANTIC_CHANNELS
        )
        if node.SPARSE_STEM_CHANNELS < 1:
            raise ValueError(
                f"MODEL.DEPTH_COMPLETION.SPARSE_STEM_CHANNELS must be >= 1, got {node.SPARSE_STEM_CHANNELS}"
            )
        image_channels = len(cfg.MODEL.PIXEL_MEAN)
        extra = node.SPARSE_STEM_CHANNELS + sem_channels
        if node.ENCODER == "conv":
            encoder = ConvEncoder(image_channels + extra, node.ENCODER_CHANNELS, node.NORM)
        elif node.ENCODER == "backbone":
            backbone = build_backbone(cfg, ShapeSpec(channels=image_channels))
            encoder = BackboneEncoder(backbone, node.BACKBONE_FEATURES, extra, image_channels)
        else:
            raise ValueError(f"MODEL.DEPTH_COMPLETION.ENCODER {node.ENCODER!r}; expected one of {ENCODERS}")
        decoder = CompletionDecoder(
            encoder.output_shape(), image_channels + extra, node.DECODER_CHANNELS, node.UPSAMPLE, node.NORM,
            finest_extra=1 if node.PREDICT_CONFIDENCE else 0,
        )
        guide = build_semantic_guide(cfg, num_classes) if node.SEMANTIC_INPUT == "guide" else None
        depth = cfg.MODEL.DEPTH_HEAD
        return {
            "encoder": encoder,
            "decoder": decoder,
            # [sparse / MAX_DEPTH, its mask] (+ [fill / MAX_DEPTH, its mask] with a prefill)
            "sparse_stem": _conv3x3(2 if node.PREFILL == "none" else 4, node.SPARSE_STEM_CHANNELS, node.NORM),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "min_depth": depth.MIN_DEPTH,
            "max_depth": depth.MAX_DEPTH,
            "semantic_input": node.SEMANTIC_INPUT,
            "semantic_encoding": node.SEMANTIC_ENCODING,
            "num_classes": num_classes,
            "semantic_channels": node.SEMANTIC_CHANNELS,
            "guide": guide,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": node.SIZE_DIVISIBILITY,
            "scale_weights": list(node.LOSS_SCALE_WEIGHTS),
            "relative": node.LOSS_RELATIVE,
            "l2_weight": node.L2_WEIGHT,
            "smoothness_weight": node.SMOOTHNESS_WEIGHT,
            "predict_confidence": node.PREDICT_CONFIDENCE,
            "confidence_loss_weight": node.CONFIDENCE_LOSS_WEIGHT,
            "prefill": node.PREFILL,
            "prefill_kernels": list(node.PREFILL_KERNELS),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        super().train(mode)
        if self.guide is not None:
            self.guide.eval()  # frozen: its BatchNorm statistics never move
        return self

    # ---- inputs ----
    def preprocess(self, batched_inputs):
        """-> ``(images (N, 3, H, W) normalised, sparse (N, H, W) metres, semantics (N, K, H, W) or None,
        image_sizes)``, all padded to ``size_divisibility`` (image 0, sparse 0 = no point, labels
        ignore, guide probabilities 0)."""
        images, sparse, image_sizes = [], [], []
        for x in batched_inputs:
            image = x["image"].to(self.device)
            if "sparse_depth" not in x:
                raise KeyError(
                    "DepthCompletion needs 'sparse_depth' (H, W) metres in every input (an all-zero map for a "
                    "sample without points); the mapper delivers it for models whose reads_sparse_depth(cfg) is True"
                )
            s = torch.as_tensor(x["sparse_depth"], device=self.device).float()
            if s.shape[-2:] != image.shape[-2:]:
                raise ValueError(f"sparse_depth {tuple(s.shape)} does not match the image {tuple(image.shape)}")
            images.append((image - self.pixel_mean) / self.pixel_std)
            sparse.append(s.reshape(image.shape[-2:]))
            image_sizes.append(tuple(image.shape[-2:]))
        d = self.size_divisibility
        size = [max(s[k] for s in image_sizes) for k in (0, 1)]
        size = [(v + d - 1) // d * d for v in size]
        semantics = self.semantic_probabilities(batched_inputs, image_sizes, size)
        return _pad_batch(images, size, 0.0), _pad_batch(sparse, size, 0.0), semantics, image_sizes

    def semantic_probabilities(self, batched_inputs, image_sizes, size) -> Optional[torch.Tensor]:
        """(N, K, H, W) (soft) one-hot class maps at the padded size: the labels' one-hot (ignore -> all
        0) or the guide's softmax (0 in the padding); None without semantic input."""
        if self.semantic_input == "none":
            return None
        if self.semantic_input == "labels":
            labels = []
            for x, (h, w) in zip(batched_inputs, image_sizes):
                if "sem_seg" in x:
                    labels.append(torch.as_tensor(x["sem_seg"], device=self.device).long().reshape(h, w))
                else:
                    labels.append(torch.full((h, w), self.ignore_value, dtype=torch.long, device=self.device))
            if not self.training and not any("sem_seg" in x for x in batched_inputs):
                log_first_n(
                    logging.WARNING,
                    'DepthCompletion with SEMANTIC_INPUT "labels" got inputs without "sem_seg": predicting '
                    "without semantics (the mapper must deliver sem_seg at test time as well)",
                    name=__name__,
                )
            labels = _pad_batch(labels, size, self.ignore_value)
            known = labels != self.ignore_value
            if known.any() and (int(labels[known].min()) < 0 or int(labels[known].max()) >= self.num_classes):
                raise ValueError(
                    f"sem_seg labels must lie in [0, {self.num_classes}) or be {self.ignore_value}, got "
                    f"[{int(labels[known].min())}, {int(labels[known].max())}]"
                )
            onehot = F.one_hot(torch.where(known, labels, torch.zeros_like(labels)), self.num_classes)
            return (onehot * known.unsqueeze(-1)).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            outputs = self.guide([{"image": x["image"]} for x in batched_inputs])
        probs = []
        for out, (h, w) in zip(outputs, image_sizes):
            logits = out["sem_seg"].to(self.device).float()
            if logits.shape[0] != self.num_classes:
                raise ValueError(f"the semantic guide output {logits.shape[0]} classes, expected {self.num_classes}")
            if tuple(logits.shape[-2:]) != (h, w):
                logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            probs.append(logits.softmax(dim=0))
        return _pad_batch(probs, size, 0.0)

    # ---- network ----
    def network_outputs(self, images, sparse, semantics=None):
        """Normalised padded images (N, 3, H, W), sparse depth (N, H, W) metres and class maps
        (N, K, H, W) or None -> ``(depths, confidence_logits)``: five (N, 1, H/s, W/s) depth maps in
        metres (strides 16, 8, 4, 2, 1) and the finest scale's (N, 1, H, W) confidence logits (None
        without PREDICT_CONFIDENCE)."""
        sparse = sparse.unsqueeze(1)
        mask = (sparse > 0).to(images.dtype)
        stem_input = [(sparse / self.max_depth).clamp(0.0, 1.0) * mask, mask]
        fill = None
        if self.prefill == "dilation":
            fill = dilation_fill(sparse, self.prefill_kernels)
            fill_mask = (fill > 0).to(images.dtype)
            stem_input += [(fill / self.max_depth).clamp(0.0, 1.0), fill_mask]
        parts = [self.sparse_stem(torch.cat(stem_input, dim=1))]
        if semantics is not None:
            parts.append(self.semantic_embedding(semantics) if self.semantic_embedding is not None else semantics)
        extra = torch.cat(parts, dim=1)
        features = self.encoder(images, extra)
        logits = self.decoder(features, torch.cat([images, extra], dim=1))
        confidence = None
        if self.predict_confidence:
            confidence = logits[-1][:, 1:2]
            logits = logits[:-1] + [logits[-1][:, :1]]
        if fill is None:
            depths = [self.max_depth * torch.sigmoid(x) for x in logits]
        else:
            depths = [_refine_fill(x, fill, self.max_depth) for x in logits]
        return depths, confidence

    def forward(self, batched_inputs):
        images, sparse, semantics, image_sizes = self.preprocess(batched_inputs)
        depths, confidence = self.network_outputs(images, sparse, semantics)
        if self.training:
            return self.losses(depths, confidence, images, sparse, batched_inputs, image_sizes)
        return self.postprocess(depths[-1], confidence, batched_inputs, image_sizes)

    # ---- training ----
    def losses(self, depths, confidence, images, sparse, batched_inputs, image_sizes) -> Dict[str, torch.Tensor]:
        padded = images.shape[-2:]
        _, target, valid = batch_dense_targets(batched_inputs, padded, self.ignore_value, self.device)
        scale = self.max_depth
        preds = [d.float() / scale for d in depths]  # losses in fp32, on depth / MAX_DEPTH
        target_n = target / scale
        losses = {
            "loss_depth_l1": multiscale_depth_l1_loss(preds, target_n, valid, self.scale_weights, self.relative)
        }
        if self.l2_weight > 0:
            losses["loss_depth_l2"] = self.l2_weight * multiscale_depth_l2_loss(
                preds, target_n, valid, self.scale_weights, self.relative
            )
        if self.smoothness_weight > 0:
            rgb = (images * self.pixel_std + self.pixel_mean) / 255.0
            inside = torch.zeros(valid.shape, dtype=torch.bool, device=self.device)
            for i, (h, w) in enumerate(image_sizes):
                inside[i, :h, :w] = True
            losses["loss_smoothness"] = self.smoothness_weight * edge_aware_smoothness_loss(preds[-1], rgb, inside)
        if self.predict_confidence and self.confidence_loss_weight > 0:
            losses["loss_depth_confidence"] = self.confidence_loss_weight * depth_confidence_loss(
                confidence.float(), depths[-1].float(), target, valid
            )
        storage = _storage()
        if storage is not None:
            storage.put_scalar("depth_completion/num_sparse_points", int((sparse > 0).sum()), smoothing_hint=False)
            storage.put_scalar("depth_completion/num_depth_pixels", int(valid.sum()), smoothing_hint=False)
        return losses

    # ---- inference ----
    def postprocess(self, depth, confidence, batched_inputs, image_sizes):
        """Finest depth (N, 1, H, W) at the padded size (+ confidence logits) -> per-image ``depth``
        (H, W) metres clamped to [MIN_DEPTH, MAX_DEPTH] (+ ``depth_confidence``) at each input's original
        size: padding cropped, bilinear resize when ``height`` / ``width`` differ."""
        results = []
        for i, (x, (h, w)) in enumerate(zip(batched_inputs, image_sizes)):
            height, width = int(x.get("height", h)), int(x.get("width", w))
            result = {"depth": _crop_resize(depth[i], h, w, height, width).clamp(self.min_depth, self.max_depth)}
            if confidence is not None:
                result["depth_confidence"] = torch.sigmoid(_crop_resize(confidence[i], h, w, height, width))
            results.append(result)
        return results


def dilation_fill(sparse: torch.Tensor, kernels: Sequence[int]) -> torch.Tensor:
    """(N, 1, H, W) sparse depth (0 = no point) -> the same with empty pixels filled: for each kernel size k in
    turn, a still-empty pixel takes the nearest surface (the largest inverse depth) among the points within
    k x k (a morphological fill in the spirit of Ku et al.'s IP-Basic, as max-pooling: no interpolation
    across a depth edge, and exportable). Pixels out of reach of every kernel stay 0."""
    filled = sparse
    for k in kernels:
        inverse = torch.where(filled > 0, 1.0 / filled.clamp(min=1e-6), torch.zeros_like(filled))
        nearest = F.max_pool2d(inverse, int(k), stride=1, padding=int(k) // 2)
        filled = torch.where((filled <= 0) & (nearest > 0), 1.0 / nearest.clamp(min=1e-6), filled)
    return filled


def _refine_fill(logits, fill, max_depth):
    """Depth at the logits' scale: ``fill * exp(r)`` where the fill (nearest-downsampled to that scale, the
    loss's rule) has a value, ``max_depth * sigmoid(r)`` elsewhere; at most ``max_depth``."""
    if fill.shape[-2:] != logits.shape[-2:]:
        fill = F.interpolate(fill, size=logits.shape[-2:], mode="nearest-exact")
    refined = fill * torch.exp(logits.clamp(-4.0, 4.0))
    return torch.where(fill > 0, refined.clamp(max=max_depth), max_depth * torch.sigmoid(logits))


def _crop_resize(x, h, w, height, width):
    """(1, H_pad, W_pad) -> (height, width): crop to (h, w), bilinear resize if the size differs."""
    x = x[:, :h, :w]
    if (h, w) != (height, width):
        x = F.interpolate(x[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return x[0]
