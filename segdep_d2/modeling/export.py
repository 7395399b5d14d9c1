"""Deployment: a model's network as a tensor-in / tensors-out module for torch.export, TorchScript
and ONNX, and the ONNX file's loader.

The exported graph holds normalisation and the network; what is data-dependent Python stays
outside it: PanopticDepthLab's panoptic grouping (detectron2's ``get_panoptic_segmentation``) and
per-segment depth, SegDep's text tower, closed-set regions, named segments and referring answers,
the temporal state's bookkeeping, and for every family the crop / resize back to the input's
original size. Run the exported network, then ``model.postprocess(...)`` (or your own port of it)
on its outputs; :func:`exported_inference` does exactly that for any network callable.

* **PanopticDepthLab** (:class:`PanopticDepthLabNetwork`): ``images`` -> ``sem_seg_logits``,
  ``center_heatmap``, ``offsets``, ``depth``; H and W must be multiples of the backbone's size
  divisibility.
* **HydraNet** (:class:`HydraNetNetwork`): ``images`` -> ``sem_seg_logits`` and ``depth`` (metres) at
  the input size padded up to a multiple of 32 (the padding happens inside the graph, so any H x W
  goes in; ``model.postprocess(sem, depth, inputs, [(H, W)])`` crops it away). The ONNX export
  has dynamic batch, height and width. ``outputs="labels"`` exports the real-time deployment
  instead: ``sem_seg_labels`` (N, Hp, Wp) int64, the per-pixel argmax of the full-resolution
  logits, computed in the graph, and ``depth`` (no 40 x H x W logit maps leave the graph).
* **DepthCompletion** (:class:`DepthCompletionNetwork`): ``images``, ``sparse_depth`` (N, H, W metres,
  0 = no point) and, when the config feeds labels (``SEMANTIC_INPUT: "labels"``), ``semantics`` (the
  record's label map, (N, H, W) int64, ``ignore_value`` = unlabelled) -> ``depth`` (N, 1, Hp, Wp metres,
  the finest prediction, before ``postprocess``'s clamp to the depth range) and, with
  ``PREDICT_CONFIDENCE``, ``confidence_logits`` (``postprocess`` applies the sigmoid). All three
  inputs are padded in the graph (images 0 after normalisation, sparse depth 0 = no point, labels
  ``ignore_value``); with ``SEMANTIC_INPUT: "guide"`` the frozen segmentation model's exported network
  runs inside the graph too (its logits cropped to the image, softmax, zero in the padding, as
  ``semantic_probabilities``). ``model.postprocess(depth, confidence_or_None, inputs, [(H, W)])``.
* **SegDep** (:class:`SegDepNetwork`): ``images`` and ``text_embeddings`` (C', D): the vocabulary's
  prompt embeddings, ``model.text_embeddings(names)`` (the CLIP text tower stays outside the graph: run
  it once per vocabulary) -> ``sem_seg_logits`` (N, C, Hp, Wp), ``depth`` (N, 1, Hp, Wp metres) and
  ``open_vocab_logits`` (N, C', Hp, Wp), at the padded size (padding in the graph, as HydraNet). C' is
  dynamic in every format. With ``MODEL.SEGDEP.TEMPORAL`` two more inputs, ``prev_features`` (N, C_fpn,
  Hp/4, Wp/4: the previous frame's ``features`` output) and ``has_prev`` (N,) bool, and one more
  output, ``features`` (the current frame's unrefined FPN features): the caller keeps the state
  (:meth:`SegDep.temporal_previous` / :meth:`SegDep.temporal_store` decide, as the eager model does);
  ``has_prev`` False gives exactly the plain path (the motion module still runs, its result unused).
  ``outputs="referring"`` adds the input ``query_embeddings`` (Q, D: ``model.text_encoder.encode(texts)``,
  Q dynamic) and the output ``referring_logits`` (1, Q, Hp, Wp) mask logits (batch 1: the referring head
  answers one image's queries); ``SegDep._referring_answers`` turns them into answers outside the graph.

The ONNX file gets exact reformulations that onnxruntime's CPU kernels run faster
(:func:`rewrite_onnx_for_cpu`: HydraNet by default); the arithmetic is the same up to float
summation order, and the export's parity check measures the file that is written.

An ONNX file carries the config it was exported from (:func:`config_fingerprint`) in its
``metadata_props``; :func:`load_onnx_model` refuses a file whose fingerprint differs from the
config it is used with (another number of classes, another family, other inputs or outputs, ...).
"""
import json
import os
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

__all__ = [
    "PanopticDepthLabNetwork",
    "HydraNetNetwork",
    "DepthCompletionNetwork",
    "SegDepNetwork",
    "network_for",
    "export_network",
    "export_panoptic_depthlab",
    "save_exported",
    "export_onnx",
    "onnx_dynamic",
    "calibrate_random_weights",
    "size_divisibility_of",
    "onnx_parity",
    "parity_metrics",
    "parity_summary",
    "rewrite_onnx_for_cpu",
    "config_fingerprint",
    "read_onnx_fingerprint",
    "read_onnx_metadata",
    "load_onnx_model",
    "OnnxInference",
    "exported_inference",
]

OUTPUT_NAMES = ("sem_seg_logits", "center_heatmap", "offsets", "depth")  # PanopticDepthLab's
HYDRANET_OUTPUT_NAMES = ("sem_seg_logits", "depth")
HYDRANET_LABEL_OUTPUT_NAMES = ("sem_seg_labels", "depth")  # outputs="labels": the real-time deployment
SEGDEP_OUTPUT_NAMES = ("sem_seg_logits", "depth", "open_vocab_logits")
# What an exported network can output: "logits" (every family: what model(inputs) computes),
# "labels" (HydraNet: the argmax in the graph instead of the C full-resolution logit maps) or
# "referring" (SegDep: "logits" + the referring head's mask logits). DepthCompletion's and SegDep's
# names also depend on the config (confidence, temporal state): see :func:`output_names_for`.
OUTPUT_KINDS = {"PanopticDepthLab": {"logits": OUTPUT_NAMES},
                "HydraNet": {"logits": HYDRANET_OUTPUT_NAMES, "labels": HYDRANET_LABEL_OUTPUT_NAMES},
                "DepthCompletion": {"logits": ("depth",)},
                "SegDep": {"logits": SEGDEP_OUTPUT_NAMES, "referring": SEGDEP_OUTPUT_NAMES + ("referring_logits",)}}
INPUT_NAME = "images"
ONNX_OPSET = 17
FINGERPRINT_KEY = "segdep_d2.config"  # the ONNX metadata_props key holding config_fingerprint(cfg)
# What a file and a config must agree on before the file is used with the config.
CHECKED_FINGERPRINT_KEYS = ("meta_architecture", "num_classes", "output_names", "input_format", "max_depth")
# ... plus, for the families with more than an image input (absent from older PanopticDepthLab /
# HydraNet files, which keep their fingerprint):
FAMILY_FINGERPRINT_KEYS = {"DepthCompletion": ("input_names", "semantic_input"),
                           "SegDep": ("input_names", "clip_model")}
# The parity an export must reach against the eager network (DESIGN/issue 11's targets).
MAX_ABS_DIFF_DEPTH = 1e-3  # metres
MIN_ARGMAX_AGREEMENT = 0.999
# Outputs compared by label agreement (the argmax over channels; referring: the mask, logit > 0).
AGREEMENT_KEYS = {"sem_seg_logits": "argmax_agreement", "sem_seg_labels": "argmax_agreement",
                  "open_vocab_logits": "open_vocab_argmax_agreement", "referring_logits": "referring_mask_agreement"}


def size_divisibility_of(model) -> int:
    """The size divisibility the model pads its input to (0: none)."""
    if hasattr(model, "_size_divisibility"):
        return int(model._size_divisibility())
    return int(model.size_divisibility)


def _pad_amounts(x, d):
    """F.pad's (left, right, top, bottom) taking ``x`` (..., H, W) up to multiples of ``d``, as
    ``ImageList.from_tensors`` pads (bottom / right). Traced shape arithmetic: stays dynamic in the
    ONNX graph (Shape -> Mod -> Pad)."""
    h, w = x.shape[-2:]
    return (0, (d - w % d) % d, 0, (d - h % d) % d)


def _random_images(model, batch, height, width, generator):
    return (torch.rand(batch, 3, height, width, generator=generator) * 255).to(model.device)


class PanopticDepthLabNetwork(nn.Module):
    """Normalisation, backbone and the three decoders of a PanopticDepthLab.

    ``forward(images)`` takes (N, 3, H, W) float pixels in the model's input format
    (``cfg.INPUT.FORMAT``, 0-255), H and W multiples of the backbone's size divisibility, and
    returns ``(sem_seg_logits (N, C, H, W), center_heatmap (N, 1, H, W), offsets (N, 2, H, W),
    depth (N, 1, H, W) metres)``.
    """

    input_names = (INPUT_NAME,)
    output_names = OUTPUT_NAMES
    pads_input = False

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        return self.model.network_outputs(self.model.backbone(x))

    def example_inputs(self, height, width, seed=0):
        """A random (1, 3, height, width) image in 0-255, as a tuple of the network's inputs."""
        return (_random_images(self.model, 1, height, width, torch.Generator().manual_seed(seed)),)

    def dynamic_axes(self):
        return _image_axes(self.input_names, self.output_names)


class HydraNetNetwork(nn.Module):
    """Normalisation, zero padding (after normalisation, as ``ImageList.from_tensors``) up to the
    model's size divisibility, MobileNetV2, Light-Weight RefineNet and both task branches.

    ``forward(images)`` takes (N, 3, H, W) float pixels in the model's input format (0-255), any H
    and W, and returns ``(sem_seg_logits (N, C, Hp, Wp), depth (N, 1, Hp, Wp) metres)`` at the padded
    input size ``Hp = ceil(H / 32) * 32`` (likewise Wp): full resolution, the bottom / right padding
    still on. ``model.postprocess(sem, depth, inputs, [(H, W)])`` crops it and resizes to the
    inputs' ``height`` / ``width``.

    ``outputs="labels"``: ``(sem_seg_labels (N, Hp, Wp) int64, depth)`` instead, the labels being
    ``sem_seg_logits.argmax(1)`` (what a real-time consumer uses; ``model.postprocess`` takes them
    too and returns ``sem_seg_labels``).
    """

    input_names = (INPUT_NAME,)
    output_names = HYDRANET_OUTPUT_NAMES  # the default; an instance's follows its ``outputs``
    pads_input = True

    def __init__(self, model, outputs="logits"):
        super().__init__()
        _check_outputs("HydraNet", outputs)
        self.model = model
        self.outputs = outputs
        self.output_names = OUTPUT_KINDS["HydraNet"][outputs]

    def forward(self, images):
        x = (images - self.model.pixel_mean) / self.model.pixel_std
        x = F.pad(x, _pad_amounts(x, self.model._size_divisibility()))
        sem, depth = self.model.network_outputs(x)
        if self.outputs == "labels":
            sem = sem.argmax(1)
        return sem, depth

    example_inputs = PanopticDepthLabNetwork.example_inputs

    def dynamic_axes(self):
        return _image_axes(self.input_names, self.output_names)


def _image_axes(input_names, output_names):
    """ONNX dynamic axes of the image families: batch, height, width of every input and output
    (``sem_seg_labels`` has no channel axis)."""
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in (*input_names, *output_names)}
    if "sem_seg_labels" in axes:  # (N, H, W)
        axes["sem_seg_labels"] = {0: "batch", 1: "height", 2: "width"}
    return axes


class DepthCompletionNetwork(nn.Module):
    """A DepthCompletion's normalisation, padding, semantic encoding (one-hot of the labels, or the
    guide's softmax), sparse stem, encoder and decoder: what ``model(inputs)`` computes before its
    crop and clamp.

    ``forward(images, sparse_depth[, semantics])``:

    * ``images`` (N, 3, H, W) float pixels in the model's input format (0-255), any H and W;
    * ``sparse_depth`` (N, H, W) float metres, 0 = no point (what ``network_outputs`` takes);
    * ``semantics``, only when the network reads them as an input: (N, H, W) int64 labels of the
      record (``SEMANTIC_INPUT: "labels"``; ``ignore_value`` = unlabelled, as are labels outside
      ``[0, K)``, where the eager model raises) or, built with ``semantics="probabilities"``, the
      (N, K, H, W) class maps ``model.preprocess`` computes (what ``tools/benchmark.py`` counts FLOPs on).

    Every input is padded in the graph to ``model.size_divisibility`` (images with 0 after
    normalisation, sparse depth with 0 = no point, labels with ``ignore_value``, class maps with 0).
    With ``SEMANTIC_INPUT: "guide"`` the frozen guide's exported network (:func:`network_for`) runs on
    the same images inside the graph: its logits cropped to H x W, softmax over the classes, 0 in the
    padding, as ``DepthCompletion.semantic_probabilities``.

    Returns ``depth`` (N, 1, Hp, Wp) metres, the finest of the five predictions at the padded size
    (not yet clamped to the depth range: ``model.postprocess`` clamps), and with
    ``PREDICT_CONFIDENCE`` ``confidence_logits`` (N, 1, Hp, Wp). The coarser predictions only serve
    training; they are not outputs (ONNX drops their branches).
    """

    pads_input = True
    SEMANTICS = ("labels", "guide", "probabilities")

    def __init__(self, model, outputs="logits", semantics=None):
        super().__init__()
        _check_outputs("DepthCompletion", outputs)
        self.model = model
        kind = model.semantic_input if semantics is None else semantics
        if kind != "none" and (kind not in self.SEMANTICS or model.semantic_input == "none"):
            raise ValueError(
                f"semantics={semantics!r}: the model's SEMANTIC_INPUT is {model.semantic_input!r}; expected None "
                f"(the model's own) or, for a model with semantic input, one of {self.SEMANTICS}"
            )
        self.semantics = kind
        self.guide = None
        if kind == "guide":
            self.guide = network_for(model.guide)
            if self.guide.input_names != (INPUT_NAME,) or "sem_seg_logits" not in self.guide.output_names:
                raise ValueError(f"the guide ({type(model.guide).__name__}) has no image-only exportable network "
                                 "with sem_seg_logits")
        semantic_inputs = ("semantics",) if kind in ("labels", "probabilities") else ()
        self.input_names = (INPUT_NAME, "sparse_depth") + semantic_inputs
        self.output_names = ("depth",) + (("confidence_logits",) if model.predict_confidence else ())

    def forward(self, images, sparse_depth, semantics=None):
        model = self.model
        if sparse_depth.dim() != 3:
            raise ValueError(f"sparse_depth must be (N, H, W) metres, got {tuple(sparse_depth.shape)}")
        if (semantics is None) != (len(self.input_names) == 2):
            raise ValueError(f"this network takes inputs {list(self.input_names)}")
        pad = _pad_amounts(images, model.size_divisibility)
        x = F.pad((images - model.pixel_mean) / model.pixel_std, pad)
        sparse = F.pad(sparse_depth.to(x.dtype), pad)
        depths, confidence = model.network_outputs(x, sparse, self._class_maps(images, semantics, pad))
        return (depths[-1],) if confidence is None else (depths[-1], confidence)

    def _class_maps(self, images, semantics, pad):
        """(N, K, Hp, Wp) class maps at the padded size, or None without semantic input."""
        model = self.model
        if self.semantics == "none":
            return None
        if self.semantics == "labels":
            labels = F.pad(semantics.long(), pad, value=model.ignore_value)
            classes = torch.arange(model.num_classes, device=labels.device).view(1, -1, 1, 1)
            # exact one-hot; ignore_value (and any label outside [0, K)) matches no class: all 0
            return (labels.unsqueeze(1) == classes).to(images.dtype)
        if self.semantics == "probabilities":
            return F.pad(semantics.to(images.dtype), pad)
        guide_images = images
        if not self.guide.pads_input and size_divisibility_of(model.guide) > 0:
            # pixel-mean padding normalises to the 0 the guide's model pads with (as exported_inference)
            mean = model.guide.pixel_mean
            guide_images = F.pad(images - mean, _pad_amounts(images, size_divisibility_of(model.guide))) + mean
        outputs = dict(zip(self.guide.output_names, self.guide(guide_images)))
        h, w = images.shape[-2:]
        probabilities = outputs["sem_seg_logits"][:, :, :h, :w].float().softmax(dim=1)
        return F.pad(probabilities, pad)

    def example_inputs(self, height, width, seed=0):
        """Random inputs at ``height`` x ``width``: an image, about 5 % of the pixels with a depth in
        the model's range, and the semantic input (labels with some unlabelled pixels, or class maps)."""
        model = self.model
        g = torch.Generator().manual_seed(seed)
        images = _random_images(model, 1, height, width, g)
        lo, hi = max(model.min_depth, 0.5), 0.9 * model.max_depth
        points = torch.rand(1, height, width, generator=g) < 0.05
        sparse = torch.where(points, lo + (hi - lo) * torch.rand(1, height, width, generator=g), torch.zeros(()))
        inputs = [images, sparse.to(model.device)]
        if self.semantics == "labels":
            labels = torch.randint(0, model.num_classes, (1, height, width), generator=g)
            labels[torch.rand(1, height, width, generator=g) < 0.1] = model.ignore_value
            inputs.append(labels.to(model.device))
        elif self.semantics == "probabilities":
            inputs.append(torch.rand(1, model.num_classes, height, width, generator=g).softmax(1).to(model.device))
        return tuple(inputs)

    def dynamic_axes(self):
        axes = _image_axes((INPUT_NAME,), self.output_names)
        axes["sparse_depth"] = {0: "batch", 1: "height", 2: "width"}
        if self.semantics == "labels":
            axes["semantics"] = {0: "batch", 1: "height", 2: "width"}
        elif self.semantics == "probabilities":
            axes["semantics"] = {0: "batch", 2: "height", 3: "width"}
        return axes


class SegDepNetwork(nn.Module):
    """A SegDep's normalisation, padding, HRNet + FPN, closed-set and depth heads, and the
    open-vocabulary branch (text-vision fusion + head) for a vocabulary given as a tensor.

    ``forward(images, text_embeddings[, prev_features, has_prev][, query_embeddings])``:

    * ``images`` (N, 3, H, W) float pixels in the model's input format (0-255), any H and W (zero
      padding to the size divisibility after normalisation, in the graph, as ``preprocess_image``);
    * ``text_embeddings`` (C', D): ``model.text_embeddings(names)`` of the vocabulary asked about (the
      CLIP text tower stays outside the graph; C' is dynamic);
    * temporal configs (``MODEL.SEGDEP.TEMPORAL``): ``prev_features`` (N, C_fpn, Hp/4, Wp/4), the
      ``features`` output of the sequence's previous frame, and ``has_prev`` (N,) bool: True refines the
      frame with them (motion head, warp, gated fusion), False gives exactly the plain path;
    * ``outputs="referring"``: ``query_embeddings`` (Q, D), ``model.text_encoder.encode(texts)``.

    Returns ``sem_seg_logits`` (N, C, Hp, Wp), ``depth`` (N, 1, Hp, Wp metres), ``open_vocab_logits``
    (N, C', Hp, Wp), at the padded size; temporal: ``features`` (N, C_fpn, Hp/4, Wp/4), the current
    frame's unrefined FPN features (the next frame's ``prev_features``); referring: ``referring_logits``
    (1, Q, Hp, Wp), each query's mask logits for the (single) image. The referring pixels fuse the
    features with the training vocabulary, whose embeddings are computed when the network is built and
    kept in the graph as a constant.
    """

    pads_input = True

    # The model's modules the graph runs. The model itself is no submodule of the network: its CLIP
    # text tower (ViT-B-32: 250 MB) would be saved, unused, in every .pt2 / .ts file.
    GRAPH_MODULES = ("backbone", "neck", "fusion", "sem_seg_head", "depth_head", "open_vocab_head",
                     "referring_head", "motion_head", "temporal_fusion")

    def __init__(self, model, outputs="logits"):
        super().__init__()
        _check_outputs("SegDep", outputs)
        self.graph_modules = nn.ModuleDict(
            {name: getattr(model, name) for name in self.GRAPH_MODULES if getattr(model, name) is not None}
        )
        self.__dict__["model"] = model  # a plain attribute (see GRAPH_MODULES): its methods run the graph
        self.outputs = outputs
        self.temporal = bool(model.temporal)
        self.referring = outputs == "referring"
        self.input_names = _segdep_names((INPUT_NAME, "text_embeddings"), ("prev_features", "has_prev"),
                                         ("query_embeddings",), self.temporal, self.referring)
        self.output_names = _segdep_names(SEGDEP_OUTPUT_NAMES, ("features",), ("referring_logits",),
                                          self.temporal, self.referring)
        if self.referring:
            with torch.no_grad():
                train_text = model.text_embeddings(model.train_names).detach().clone()
            self.register_buffer("train_text_embeddings", train_text, persistent=False)

    def forward(self, images, text_embeddings, *extra):
        from .meta_arch.segdep import _upsample

        model = self.model
        extra = list(extra)
        x = (images - model.pixel_mean) / model.pixel_std
        x = F.pad(x, _pad_amounts(x, model.size_divisibility))
        size = x.shape[-2:]
        features = model.features(x)
        current = features
        if self.temporal:
            prev_features, has_prev = extra.pop(0), extra.pop(0)
            refined = model.temporal_refine(prev_features, features)[0]
            # exact: a frame without a previous one takes the unrefined features, as eager does
            current = torch.where(has_prev.view(-1, 1, 1, 1).bool(), refined, features)
        sem, depth = model.dense_outputs(current, size)
        open_vocab = _upsample(model.open_vocab_outputs(current, text_embeddings)[1], size)
        outputs = [sem, depth, open_vocab]
        if self.temporal:
            outputs.append(features)
        if self.referring:
            outputs.append(self._referring_logits(images, x, current, depth, extra.pop(0)))
        return tuple(outputs)

    def _referring_logits(self, images, padded, features, depth, queries):
        """(1, Q, Hp, Wp) mask logits of one image's queries, as ``SegDep.answer`` computes them before
        the crop. Where the image lies inside the padding (the coordinates' extent, the attention's
        valid pixels) comes from a padded map of ones, so it stays dynamic in every format."""
        from .meta_arch.segdep import _upsample

        model = self.model
        head = model.referring_head
        fused = model.fusion(features, self.train_text_embeddings)
        h, w = fused.shape[-2:]
        stride = padded.shape[-1] // w  # the FPN's (4); the padded size is a multiple of it
        inside = F.pad(torch.ones_like(images[:, :1]), _pad_amounts(images, model.size_divisibility))
        # (N, 2) image rows / columns in feature pixels (SegDep._referring_pixels' extents)
        extents = torch.stack([inside[:, 0, :, 0].sum(-1), inside[:, 0, 0, :].sum(-1)], dim=1) / stride
        # a feature pixel is valid when its cell covers an image pixel (SegDep._feature_valid)
        valid = F.max_pool2d(inside, stride)[:, 0] > 0
        # avg_pool2d = adaptive_avg_pool2d here (the padded size is stride x the feature size)
        pixels = head.pixel_embeddings(fused, F.avg_pool2d(depth.float(), stride), extents)
        keys, values = head.memory(pixels)
        low = head(pixels[0], queries, valid[0], (keys[0], values[0]))
        return _upsample(low[None].float(), padded.shape[-2:])

    def feature_shape(self, height, width):
        """(C_fpn, Hp/4, Wp/4): the ``features`` / ``prev_features`` of an image of height x width."""
        return _segdep_feature_shape(self.model, height, width)

    def example_inputs(self, height, width, seed=0):
        """Random inputs at ``height`` x ``width``: an image, a random vocabulary of unit vectors (the
        model's class count for seed 0, about half of it otherwise, so that a second check runs another
        C'), random previous features with ``has_prev`` True for seed 0 and False otherwise, and 3 (or 2)
        random query embeddings."""
        model = self.model
        g = torch.Generator().manual_seed(seed)
        dim = model.text_encoder.embed_dim
        classes = len(model.class_names) if seed == 0 else max(2, len(model.class_names) // 2 + 1)
        inputs = [_random_images(model, 1, height, width, g),
                  F.normalize(torch.randn(classes, dim, generator=g), dim=-1).to(model.device)]
        if self.temporal:
            inputs.append(torch.randn(1, *self.feature_shape(height, width), generator=g).to(model.device))
            inputs.append(torch.tensor([seed == 0], device=model.device))
        if self.referring:
            inputs.append(F.normalize(torch.randn(3 if seed == 0 else 2, dim, generator=g), dim=-1).to(model.device))
        return tuple(inputs)

    def dynamic_axes(self):
        # Referring answers one image's queries: batch 1 there, dynamic otherwise.
        batch = {} if self.referring else {0: "batch"}
        axes = {name: {**batch, 2: "height", 3: "width"} for name in (INPUT_NAME, "sem_seg_logits", "depth")}
        axes["text_embeddings"] = {0: "classes"}
        axes["open_vocab_logits"] = {**batch, 1: "classes", 2: "height", 3: "width"}
        if self.temporal:
            axes["prev_features"] = axes["features"] = {**batch, 2: "feature_height", 3: "feature_width"}
            axes["has_prev"] = dict(batch)
        if self.referring:
            axes["query_embeddings"] = {0: "queries"}
            axes["referring_logits"] = {1: "queries", 2: "height", 3: "width"}
        return axes

    def torch_export_dynamic_shapes(self):
        """torch.export's dynamic shapes: the vocabulary size C' (and the number of queries Q), so that
        one .pt2 file scores any list of names."""
        dims = {"text_embeddings": {0: torch.export.Dim("classes", min=1, max=4096)},
                "query_embeddings": {0: torch.export.Dim("queries", min=1, max=4096)}}
        shapes = [dims.get(name) for name in self.input_names]
        # forward(images, text_embeddings, *extra): *extra is one tuple when given, absent when empty
        return (shapes[0], shapes[1], tuple(shapes[2:])) if shapes[2:] else (shapes[0], shapes[1])


def _segdep_names(base, temporal_names, referring_names, temporal, referring):
    return tuple(base) + (tuple(temporal_names) if temporal else ()) + (tuple(referring_names) if referring else ())


def _segdep_feature_shape(model, height, width):
    d = model.size_divisibility
    stride = model.neck.output_shape().stride
    return (model.neck.output_shape().channels, -(-height // d) * d // stride, -(-width // d) * d // stride)


NETWORKS = {"PanopticDepthLab": PanopticDepthLabNetwork, "HydraNet": HydraNetNetwork,
            "DepthCompletion": DepthCompletionNetwork, "SegDep": SegDepNetwork}


def _check_outputs(arch, outputs):
    kinds = OUTPUT_KINDS.get(arch, {"logits": ()})
    if outputs not in kinds:
        raise ValueError(f"{arch} exports outputs {sorted(kinds)}, not {outputs!r}")


def network_for(model, outputs="logits") -> nn.Module:
    """The exportable network (eval mode) of a model of any family in :data:`NETWORKS`;
    ``outputs`` is ``"logits"`` (every family), ``"labels"`` (HydraNet, see :class:`HydraNetNetwork`)
    or ``"referring"`` (SegDep, see :class:`SegDepNetwork`)."""
    name = type(model).__name__
    if name not in NETWORKS:
        raise ValueError(f"No exportable network for {name!r}; export supports {sorted(NETWORKS)}")
    _check_outputs(name, outputs)
    if outputs != "logits":
        return NETWORKS[name](model, outputs=outputs).eval()
    return NETWORKS[name](model).eval()


def _check_size(model, network, height, width):
    divisibility = size_divisibility_of(model)
    # 0: the model pads nothing (detectron2's SIZE_DIVISIBILITY -1 with a backbone that asks for none)
    if not network.pads_input and divisibility > 0 and (height % divisibility or width % divisibility):
        raise ValueError(
            f"Export size {height}x{width} must be a multiple of the backbone's size divisibility "
            f"{divisibility}; pad your images to such a size"
        )


FORMATS = {"torch_export": "model.pt2", "torchscript": "model.ts", "onnx": "model.onnx"}


def _torch_export(network, example):
    """``torch.export.export`` of ``network`` on the tuple ``example``, with the network's dynamic
    dimensions (SegDep's vocabulary size) where it declares them."""
    shapes = network.torch_export_dynamic_shapes() if hasattr(network, "torch_export_dynamic_shapes") else None
    return torch.export.export(network, tuple(example), dynamic_shapes=shapes)


# calibrate_random_weights: the scale of the output layers' random weights. An exported network's
# depth error grows with it (depth = fill * exp(r) or exp(x): metres = depth x the error of r), and
# the label agreement does not depend on it (logit gaps and errors scale together).
PREDICTOR_GAIN = 0.1


def calibrate_random_weights(model, height=64, width=128, seed=0):
    """Make a randomly initialised model's outputs depend on its network, as a trained model's do, so
    that a parity check on them means something. A fresh build has output layers initialised near 0
    (logits of std 0.01 whose top two classes tie within 1e-5 on 0.1 % of the pixels, a depth of 10 m
    +- 2 cm, DepthCompletion's zero-initialised residual predictors that make it output its input fill)
    and batch-norm statistics 0 / 1 that let activations grow through a deep network (random HRNet-W32
    features reach ~1e6). So: every output layer (a module named ``*predictor`` or in ``predictors``)
    is drawn from N(0, (PREDICTOR_GAIN / sqrt(fan_in))^2) (outputs of std ~0.1: a depth map that
    varies by tens of percent, as does the refinement of DepthCompletion's fill), any other all-zero
    weight from N(0, 0.05^2), and the running statistics of every batch norm are set, layer after
    layer in one forward pass on random inputs at ``height`` x ``width``, from that layer's input:
    the variance (floored at 1 % of the layer's mean square) and the mean less one standard
    deviation, so that most ReLUs pass (a random network whose ReLUs switch half their inputs is
    chaotic in float32; see the comments below)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            parts = name.split(".")
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.nn.Parameter) and weight.dim() >= 2 and (
                    parts[-1].endswith("predictor") or parts[-2:-1] == ["predictors"]):
                fan_in = weight[0].numel()
                weight.copy_(torch.randn(weight.shape, generator=g).to(weight) * PREDICTOR_GAIN / fan_in ** 0.5)
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.05)

    def set_statistics(module, args):
        x = args[0].float()
        dims = [0, *range(2, x.dim())]
        # A channel that does not vary over one example (ASPP's globally pooled branch, a dead
        # channel) would be divided by sqrt(eps): 300x any float difference between runtimes. Floor
        # the variance at 1 % of the layer's mean square, as a channel varies across a dataset.
        floor = max(0.01 * float(x.pow(2).mean()), 1e-6)
        var = x.var(dims, unbiased=False).clamp(min=floor)
        # Outputs of mean +1 std (fresh weight 1, bias 0): about 84 % of the following ReLUs pass.
        # Centred at 0, half of them switch at random in every layer and the network is chaotic:
        # float rounding grows ~10 % a layer, 1e-3 relative at a ResNet-52's output, as large as
        # the logit gaps of the 0.1 % most ambiguous pixels; shifted, it stays ~1e-5.
        module.running_mean.copy_(x.mean(dims) - var.sqrt())
        module.running_var.copy_(var)

    norms = [m for m in model.modules() if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))]
    handles = [m.register_forward_pre_hook(set_statistics) for m in norms]
    try:
        network = network_for(model)
        with torch.no_grad():
            network(*network.example_inputs(height, width, seed))
    finally:
        for handle in handles:
            handle.remove()
    return model


def export_network(model, height, width, fmt="torch_export", outputs="logits"):
    """Export ``model``'s network at one input size with torch.export or TorchScript.

    ``fmt`` is ``"torch_export"`` (``torch.export``, saved with ``torch.export.save``; torch's
    recommended route) or ``"torchscript"`` (``torch.jit.trace``, for runtimes that load
    TorchScript); ONNX goes through :func:`export_onnx`. ``outputs``: see :func:`network_for`.
    Returns ``(exported, max_abs_diff)``: the exported program or module and, per output, the
    largest difference between it and the eager network on random inputs of that size (shapes
    inside the graph are those of this size, but SegDep's vocabulary size C' which stays dynamic).
    :func:`export_network_with_parity` also returns the parity figures.
    """
    exported, max_abs_diff, _ = export_network_with_parity(model, height, width, fmt, outputs)
    return exported, max_abs_diff


def export_network_with_parity(model, height, width, fmt="torch_export", outputs="logits"):
    """:func:`export_network`, plus the parity of the exported against the eager network (returns
    ``(exported, max_abs_diff, parity)``): ``{"HxW": parity_metrics(...)}`` on the example inputs and,
    for a network with dynamic non-image inputs (SegDep: another vocabulary size, ``has_prev`` False,
    other queries), ``"HxW#1"`` on a second set at the same size."""
    if fmt not in ("torch_export", "torchscript"):
        raise ValueError(f"Unknown export format {fmt!r}; expected 'torch_export' or 'torchscript' (ONNX: export_onnx)")
    network = network_for(model, outputs)
    _check_size(model, network, height, width)
    example = network.example_inputs(height, width)
    with torch.no_grad():
        if fmt == "torchscript":
            exported = torch.jit.trace(network, example, check_trace=False)
            run = exported
        else:
            exported = _torch_export(network, example)
            run = exported.module()
        reference = network(*example)
        exported_outputs = run(*example)
        max_abs_diff = {
            name: float((a.double() - b.double()).abs().max())
            for name, a, b in zip(network.output_names, reference, exported_outputs)
        }
        parity = {f"{height}x{width}": parity_metrics(network.output_names, reference, exported_outputs)}
        if hasattr(network, "torch_export_dynamic_shapes"):
            # a network with dynamic inputs (SegDep's vocabulary, its temporal switch): check other values too
            second = network.example_inputs(height, width, seed=1)
            parity[f"{height}x{width}#1"] = parity_metrics(network.output_names, network(*second), run(*second))
    return exported, max_abs_diff, parity


export_panoptic_depthlab = export_network  # the name earlier versions exported


def save_exported(exported, path):
    """Write what ``export_network`` returned, in its format's own file type."""
    if isinstance(exported, torch.export.ExportedProgram):
        torch.export.save(exported, path)
    else:
        torch.jit.save(exported, path)


# ---- parity: an exported network against the eager one ------------------------------------------------
def parity_metrics(names, reference, exported) -> Dict[str, float]:
    """Per output of ``names`` (``reference`` / ``exported``: the eager and the exported network's
    outputs, same order): ``max_abs_diff_<name>`` for every float output (``max_abs_diff_depth`` in
    metres), the label agreement of the semantic outputs (:data:`AGREEMENT_KEYS`: ``argmax_agreement``
    for ``sem_seg_logits`` or ``sem_seg_labels`` (the file's labels against the eager logits' argmax),
    ``open_vocab_argmax_agreement``, ``referring_mask_agreement`` (logit > 0)), ``output_shape``:
    the exported semantic output's shape (depth's for a family without one), and
    ``reference_depth_range_m``: the eager depth's [min, max]."""
    reference = dict(zip(names, reference))
    exported = dict(zip(names, exported))
    entry = {}
    for name, out in exported.items():
        ref = reference[name]
        if name in AGREEMENT_KEYS:
            entry[AGREEMENT_KEYS[name]] = float((_labels(name, ref) == _labels(name, out)).float().mean())
        if out.is_floating_point():
            entry[f"max_abs_diff_{name}"] = float((ref.double() - out.double()).abs().max())
    semantic = next((n for n in ("sem_seg_labels", "sem_seg_logits") if n in exported), "depth")
    entry["output_shape"] = list(exported[semantic].shape)
    if "depth" in reference:  # how much the compared depth varies (a constant map makes the check trivial)
        entry["reference_depth_range_m"] = [float(reference["depth"].min()), float(reference["depth"].max())]
    return entry


def _labels(name, out):
    if name == "referring_logits":
        return out > 0
    return out if not out.is_floating_point() else out.argmax(1)


def parity_summary(parity: Dict[str, Dict]) -> Dict:
    """Over every checked size of ``parity`` (``{"HxW": parity_metrics(...)}``): ``max_abs_diff_depth``
    (the largest), ``argmax_agreement`` (the smallest label agreement of any semantic output, None for a
    family without one), ``agreements`` (the smallest of each kind) and ``parity_ok``: depth within
    :data:`MAX_ABS_DIFF_DEPTH` and every agreement at least :data:`MIN_ARGMAX_AGREEMENT`."""
    entries = list(parity.values())
    max_diff = max(p["max_abs_diff_depth"] for p in entries)
    agreements = {}
    for key in sorted(set(AGREEMENT_KEYS.values())):
        values = [p[key] for p in entries if key in p]
        if values:
            agreements[key] = min(values)
    agreement = min(agreements.values()) if agreements else None
    ok = max_diff <= MAX_ABS_DIFF_DEPTH and (agreement is None or agreement >= MIN_ARGMAX_AGREEMENT)
    return {"max_abs_diff_depth": max_diff, "argmax_agreement": agreement, "agreements": agreements,
            "parity_ok": bool(ok)}


# ---------------------------------------------------------------------------------------------
# ONNX


def input_names_for(cfg, outputs="logits") -> Tuple[str, ...]:
    """The graph inputs of ``cfg``'s exported network (as its network class names them)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "DepthCompletion":
        labels = cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT == "labels"
        return (INPUT_NAME, "sparse_depth") + (("semantics",) if labels else ())
    if arch == "SegDep":
        return _segdep_names((INPUT_NAME, "text_embeddings"), ("prev_features", "has_prev"), ("query_embeddings",),
                             bool(cfg.MODEL.SEGDEP.TEMPORAL), outputs == "referring")
    return (INPUT_NAME,)


def output_names_for(cfg, outputs="logits") -> Tuple[str, ...]:
    """The graph outputs of ``cfg``'s exported network with ``outputs`` (() for an unknown family or kind)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    names = tuple(OUTPUT_KINDS.get(arch, {}).get(outputs, ()))
    if arch == "DepthCompletion" and names and cfg.MODEL.DEPTH_COMPLETION.PREDICT_CONFIDENCE:
        names += ("confidence_logits",)
    if arch == "SegDep" and names:
        names = _segdep_names(SEGDEP_OUTPUT_NAMES, ("features",), ("referring_logits",),
                              bool(cfg.MODEL.SEGDEP.TEMPORAL), outputs == "referring")
    return names


def _num_classes(cfg) -> int:
    """The classes the family's file is about: its semantic outputs' (SEM_SEG_HEAD.NUM_CLASSES), or for
    DepthCompletion the classes of its semantic input (0 without one: it predicts no classes)."""
    if cfg.MODEL.META_ARCHITECTURE == "DepthCompletion":
        node = cfg.MODEL.DEPTH_COMPLETION
        return 0 if node.SEMANTIC_INPUT == "none" else int(node.NUM_CLASSES or cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    return int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


def config_fingerprint(cfg, outputs="logits") -> Dict:
    """What an exported file must agree on with the config it is used with (stored in the ONNX
    file's metadata and in export.json): the family, its classes and outputs (``outputs``: which
    of the family's output sets the file has, see :func:`network_for`), the input format and the
    depth range (plus, for information, normalisation and padding, which live in the graph).
    DepthCompletion and SegDep add their graph inputs and, respectively, the semantic input (its
    ``num_classes`` is that input's classes, 0 without one) and the CLIP model whose text space the
    ``text_embeddings`` input lives in."""
    arch = cfg.MODEL.META_ARCHITECTURE
    fingerprint = {
        "meta_architecture": arch,
        "num_classes": _num_classes(cfg),
        "output_names": list(output_names_for(cfg, outputs)),
        "input_format": cfg.INPUT.FORMAT,
        "min_depth": float(cfg.MODEL.DEPTH_HEAD.MIN_DEPTH),
        "max_depth": float(cfg.MODEL.DEPTH_HEAD.MAX_DEPTH),
        "depth_output_type": cfg.MODEL.DEPTH_HEAD.OUTPUT_TYPE,
        "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
    }
    if arch in FAMILY_FINGERPRINT_KEYS:
        fingerprint["input_names"] = list(input_names_for(cfg, outputs))
    if arch == "DepthCompletion":
        fingerprint["semantic_input"] = cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT
        fingerprint["predict_confidence"] = bool(cfg.MODEL.DEPTH_COMPLETION.PREDICT_CONFIDENCE)
    if arch == "SegDep":
        fingerprint["clip_model"] = cfg.MODEL.SEGDEP.CLIP_MODEL
        fingerprint["temporal"] = bool(cfg.MODEL.SEGDEP.TEMPORAL)
    return fingerprint


def onnx_dynamic(model):
    """Whether the ONNX export gets dynamic height / width. HydraNet: always. PanopticDepthLab:
    when every ASPP pools globally (configs without a training crop); an ASPP with a fixed
    image-pooling kernel (cropped training, :class:`ImagePooling2d`) is traced with the kernel of
    the export size, so the export is static-size there. DepthCompletion and SegDep have no ASPP:
    dynamic (unless a guide run inside the graph has such an ASPP)."""
    if type(model).__name__ == "HydraNet":
        return True
    from .aspp import ImagePooling2d

    return not any(isinstance(m, ImagePooling2d) for m in model.modules())


def export_onnx(model, cfg, height, width, path, dynamic=True, opset=ONNX_OPSET, outputs="logits", rewrite=None):
    """Write ``model``'s network to ``path`` as ONNX (opset ``opset``), exported at ``height`` x
    ``width``. ``dynamic``: batch, height and width are dynamic axes of every image-sized input and
    output (SegDep: also the vocabulary size C' and the number of queries Q; its referring export
    keeps batch 1). ``outputs``: ``"logits"`` (default, every family: what ``model(inputs)`` computes),
    ``"labels"`` (HydraNet: ``sem_seg_labels`` + ``depth``, see :class:`HydraNetNetwork`) or
    ``"referring"`` (SegDep). ``rewrite``: apply :func:`rewrite_onnx_for_cpu` (exact reformulations
    for onnxruntime's CPU kernels); ``None`` = on for HydraNet, off for the other families. The
    config's fingerprint goes into the file's ``metadata_props`` (key :data:`FINGERPRINT_KEY`, JSON),
    with the rewrites applied (``segdep_d2.graph_rewrites``). Returns the network that was exported
    (eager, eval mode).

    The TorchScript-based exporter (``dynamo=False``) is used: it needs nothing beyond torch and
    ``onnx``, and traces the padding arithmetic into dynamic Shape ops.
    """
    import onnx

    network = network_for(model, outputs)
    _check_size(model, network, height, width)
    names = list(network.output_names)
    if rewrite is None:
        rewrite = type(model).__name__ == "HydraNet"
    dynamic_axes = network.dynamic_axes() if dynamic else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            network, network.example_inputs(height, width), path, dynamo=False, opset_version=opset,
            input_names=list(network.input_names), output_names=names, dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load(path)
    applied = rewrite_onnx_for_cpu(proto) if rewrite else {}
    entry = proto.metadata_props.add()
    entry.key, entry.value = FINGERPRINT_KEY, json.dumps(config_fingerprint(cfg, outputs), sort_keys=True)
    metadata = (("segdep_d2.dynamic_hw", str(bool(dynamic))), ("segdep_d2.export_size", f"{height}x{width}"),
                ("segdep_d2.outputs", outputs), ("segdep_d2.graph_rewrites", json.dumps(applied, sort_keys=True)))
    for key, value in metadata:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)
    # checked from the file: checking the proto would serialise it once more (seconds for a ResNet-52)
    onnx.checker.check_model(path)
    return network


# ---- exact graph rewrites for onnxruntime's CPU execution provider -------------------------------
# onnxruntime (1.32, CPUExecutionProvider, ORT_ENABLE_ALL) runs convolutions and max-pools in its
# blocked NCHWc layout (8 or 16 channels per block). Profiled on HydraNet at 480x640 it loses time
# where a graph leaves that layout or pads a tiny output to a block; these rewrites keep the
# arithmetic and change only how it is laid out:
#
# * ``relu6_nchwc``: a ReLU6 (``Clip``) that does not follow a convolution (the decoder's
#   ``relu6(sum)``) has no NCHWc kernel, so every Add and conv around it was reordered NCHWc <-> NCHW
#   (about 12 % of the graph's time in reorders, standalone Clips and NCHW Adds). An identity
#   depthwise 1x1 convolution before it (weights 1, no bias: exact) lets onnxruntime fuse
#   Conv + Clip and keep the decoder in NCHWc.
# * ``conv_taps``: a KxK convolution to fewer than 8 channels (HydraNet's 3x3 depth predictor,
#   256 -> 1) is computed by the NCHWc kernel for a whole block of outputs (8x the work). It becomes
#   a 1x1 convolution to the K*K*O taps (padded to 16 channels with zero weights) and a fixed
#   one-hot KxK convolution that sums the shifted taps (same products, other summation order).
# * ``nhwc_argmax``: ``ArgMax`` over the channels of a bilinear ``Resize`` (the labels output)
#   reads C strided planes per pixel and onnxruntime's NCHW bilinear Resize does not vectorise
#   over channels; the same Resize on the transposed low-resolution maps (NHWC) and ``ArgMax``
#   over the last axis compute the same labels about 3x faster.
# * ``separable_maxpool``: a KxK max-pool with stride 1 (Chained Residual Pooling's 5x5) is a 1xK
#   max-pool followed by a Kx1 one (the maximum over a rectangle is the maximum of the row maxima;
#   padded cells never win in either): 2K comparisons per output instead of K*K, bit-identical.
NCHWC_CHANNEL_MULTIPLE = 16  # channel counts that fit onnxruntime's NCHWc blocks (8 on AVX2, 16 on AVX-512)
CONV_TAPS = 16  # channels of the taps tensor in ``conv_taps`` (K*K*O rounded up to a block)


def _attribute(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def rewrite_onnx_for_cpu(proto) -> Dict[str, int]:
    """Apply the exact rewrites above to an ONNX ``ModelProto`` in place; returns how many times
    each was applied (``{"relu6_nchwc": 4, ...}``, absent when never)."""
    import numpy as np
    from onnx import helper, numpy_helper, shape_inference

    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: Dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    inferred = shape_inference.infer_shapes(proto)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]

    def channels(name, depth=0):
        shape = shapes.get(name)
        if shape and len(shape) == 4 and shape[1]:
            return shape[1]
        node = producer.get(name)  # e.g. Add(conv output, dynamically resized map): ask its inputs
        if node is not None and node.op_type in ("Add", "Sub", "Mul", "Sum") and depth < 4:
            found = [c for c in (channels(i, depth + 1) for i in node.input) if c]
            return max(found) if found else None
        return None

    counter = [0]

    def fresh(base):
        counter[0] += 1
        return f"{base}/segdep_{counter[0]}"

    def add_initializer(base, array):
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    applied: Dict[str, int] = {}
    replaced = set()  # weights of rewritten convolutions, dropped below unless still used
    new_nodes = []
    for node in graph.node:
        if node.op_type == "Clip":
            source = producer.get(node.input[0])
            c = channels(node.input[0])
            if source is not None and source.op_type != "Conv" and c and c % NCHWC_CHANNEL_MULTIPLE == 0:
                weight = add_initializer(node.input[0] + "/identity_weight", np.ones((c, 1, 1, 1), np.float32))
                out = fresh(node.input[0] + "/identity")
                new_nodes.append(helper.make_node("Conv", [node.input[0], weight], [out],
                                                  name=fresh(node.name + "/identity"), group=c, kernel_shape=[1, 1]))
                node.input[0] = out
                applied["relu6_nchwc"] = applied.get("relu6_nchwc", 0) + 1
        elif node.op_type == "Conv" and node.input[1] in initializers:
            w = numpy_helper.to_array(initializers[node.input[1]])
            k = list(w.shape[2:])
            if (w.ndim == 4 and _attribute(node, "group", 1) == 1 and w.shape[0] < 8 and k != [1, 1]
                    and w.shape[0] * k[0] * k[1] <= CONV_TAPS and w.shape[1] % NCHWC_CHANNEL_MULTIPLE == 0
                    and all(v == 1 for v in _attribute(node, "strides", [1, 1]))
                    and all(v == 1 for v in _attribute(node, "dilations", [1, 1]))
                    and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
                o, cin = w.shape[:2]
                taps = np.zeros((CONV_TAPS, cin, 1, 1), np.float32)
                shift = np.zeros((o, CONV_TAPS, k[0], k[1]), np.float32)
                for oc in range(o):
                    for y in range(k[0]):
                        for x in range(k[1]):
                            t = (oc * k[0] + y) * k[1] + x
                            taps[t, :, 0, 0] = w[oc, :, y, x]
                            shift[oc, t, y, x] = 1.0
                taps_name = add_initializer(node.input[1] + "/taps", taps)
                shift_name = add_initializer(node.input[1] + "/shift", shift)
                mid = fresh(node.output[0] + "/taps")
                new_nodes.append(helper.make_node("Conv", [node.input[0], taps_name], [mid],
                                                  name=fresh(node.name + "/taps"), kernel_shape=[1, 1]))
                replaced.add(node.input[1])
                node.input[0], node.input[1] = mid, shift_name
                applied["conv_taps"] = applied.get("conv_taps", 0) + 1
        elif (node.op_type == "MaxPool" and len(node.output) == 1 and len(_attribute(node, "kernel_shape", [])) == 2
              and _attribute(node, "kernel_shape")[0] == _attribute(node, "kernel_shape")[1] > 2
              and all(v == 1 for v in _attribute(node, "strides", [1, 1]))
              and all(v == 1 for v in _attribute(node, "dilations", [1, 1]))
              and _attribute(node, "ceil_mode", 0) == 0 and _attribute(node, "storage_order", 0) == 0
              and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
            k = _attribute(node, "kernel_shape")[0]
            top, left, bottom, right = _attribute(node, "pads", [0, 0, 0, 0])
            rows = fresh(node.output[0] + "/rows")
            new_nodes.append(helper.make_node("MaxPool", [node.input[0]], [rows], name=fresh(node.name + "/rows"),
                                              kernel_shape=[1, k], pads=[0, left, 0, right], strides=[1, 1]))
            node = helper.make_node("MaxPool", [rows], list(node.output), name=node.name,
                                    kernel_shape=[k, 1], pads=[top, 0, bottom, 0], strides=[1, 1])
            applied["separable_maxpool"] = applied.get("separable_maxpool", 0) + 1
        elif node.op_type == "ArgMax" and _attribute(node, "axis", 0) == 1 and _attribute(node, "keepdims", 1) == 0 \
                and _attribute(node, "select_last_index", 0) == 0:
            resize = producer.get(node.input[0])
            if (resize is not None and resize.op_type == "Resize" and len(consumers.get(resize.output[0], [])) == 1
                    and resize.output[0] not in graph_outputs and len(shapes.get(resize.input[0]) or []) == 4
                    and _attribute(resize, "coordinate_transformation_mode", b"half_pixel") != b"tf_crop_and_resize"):
                inputs = list(resize.input) + [""] * (4 - len(resize.input))
                target = 3 if inputs[3] else 2  # sizes, else scales: in NCHW order, permuted to NHWC
                if inputs[target]:
                    perm = add_initializer("nhwc_permutation", np.array([0, 2, 3, 1], np.int64))
                    nhwc = fresh(resize.input[0] + "/nhwc")
                    new_nodes.append(helper.make_node("Transpose", [resize.input[0]], [nhwc],
                                                      name=fresh(resize.name + "/nhwc"), perm=[0, 2, 3, 1]))
                    permuted = fresh(inputs[target] + "/nhwc")
                    new_nodes.append(helper.make_node("Gather", [inputs[target], perm], [permuted], axis=0,
                                                      name=fresh(resize.name + "/nhwc_size")))
                    inputs[0], inputs[target] = nhwc, permuted
                    del resize.input[:]
                    resize.input.extend(inputs[: target + 1])
                    for a in node.attribute:
                        if a.name == "axis":
                            a.i = 3
                    applied["nhwc_argmax"] = applied.get("nhwc_argmax", 0) + 1
        new_nodes.append(node)
    used = {i for n in new_nodes for i in n.input} | graph_outputs
    for name in replaced - used:
        graph.initializer.remove(next(t for t in graph.initializer if t.name == name))
    # The Transpose / Gather feeding a Resize moved to NHWC are emitted when its ArgMax is reached,
    # after that Resize: restore a topological order.
    del graph.node[:]
    graph.node.extend(_topological(new_nodes, graph))
    return applied


def _topological(nodes, graph):
    """``nodes`` in an order where every node follows the producers of its inputs (a node whose
    inputs are not ready yet moves behind the others)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(nodes)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"ONNX graph rewrite left a cycle or a dangling input at {rest[0].name}")
        pending = rest
    return ordered


def _session(path, threads=None, spinning=True, profile_prefix=None):
    """An onnxruntime CPU session with every graph optimisation; ``profile_prefix``: onnxruntime's
    profiler on, its JSON written under that prefix (``session.end_profiling()`` returns the file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not spinning:
        # onnxruntime's idle workers busy-wait after each run by default, taking cores from
        # PyTorch work in the same process (post-processing, other models).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_parity(network, onnx_network, sizes, seed=0) -> Dict[str, Dict[str, float]]:
    """onnxruntime against the eager network on random inputs per size ``(H, W)``
    (``network.example_inputs(H, W, seed + i)``): :func:`parity_metrics` of the file's outputs, e.g.
    ``max_abs_diff_depth`` (metres) and ``argmax_agreement`` (fraction of pixels whose semantic label
    is identical: the argmax of both logits, or the file's ``sem_seg_labels`` against the eager
    logits' argmax), ``max_abs_diff_sem_seg_logits`` when both have logits, and the shape of the
    file's semantic output. The eager ``network`` may have more outputs than the file (logits
    against a labels file): the file's are compared. Keyed ``"HxW"``."""
    results = {}
    for i, (height, width) in enumerate(sizes):
        example = network.example_inputs(height, width, seed + i)
        with torch.no_grad():
            reference = dict(zip(network.output_names, network(*example)))
        exported = onnx_network.network(*example)
        names = list(onnx_network.output_names)
        if "sem_seg_labels" in names and "sem_seg_labels" not in reference:
            reference["sem_seg_labels"] = reference["sem_seg_logits"].argmax(1)
        results[f"{height}x{width}"] = parity_metrics(names, [reference[n] for n in names], exported)
    return results


def read_onnx_metadata(path) -> Dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict (:func:`export_onnx` writes the fingerprint, the
    export size, the output set and the graph rewrites there)."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def read_onnx_fingerprint(path, metadata: Optional[Dict[str, str]] = None) -> Dict:
    """The config fingerprint stored in an ONNX file by :func:`export_onnx` (``{}`` if none);
    ``metadata``: the file's :func:`read_onnx_metadata`, when already read."""
    props = read_onnx_metadata(path) if metadata is None else metadata
    return json.loads(props[FINGERPRINT_KEY]) if FINGERPRINT_KEY in props else {}


def check_fingerprint(path, stored: Dict, cfg) -> None:
    """Raise ``ValueError`` naming every field where the file's config differs from ``cfg``'s."""
    if not stored:
        raise ValueError(
            f"{path} has no segdep_d2 config metadata ({FINGERPRINT_KEY!r}): it was not written by "
            f"tools/export_model.py --format onnx. Re-export it from the config you evaluate with."
        )
    # The file may carry any of the family's output sets ("logits" / "labels" / "referring"): compare with that one.
    arch = cfg.MODEL.META_ARCHITECTURE
    kinds = OUTPUT_KINDS.get(arch, {})
    outputs = next((k for k in kinds if list(output_names_for(cfg, k)) == list(stored.get("output_names", []))),
                   "logits")
    expected = config_fingerprint(cfg, outputs)
    # the family keys of the file's family and of the config's (a file of another family differs in both)
    keys = CHECKED_FINGERPRINT_KEYS + tuple(
        k for family in dict.fromkeys((arch, stored.get("meta_architecture")))
        for k in FAMILY_FINGERPRINT_KEYS.get(family, ()) if k not in CHECKED_FINGERPRINT_KEYS
    )
    differences = [
        f"{key}: file {stored.get(key)!r}, config {expected.get(key)!r}"
        for key in dict.fromkeys(keys)
        if stored.get(key) != expected.get(key)
    ]
    if differences:
        raise ValueError(
            f"{path} was exported from another config than the one given ("
            + "; ".join(differences)
            + "). Re-export it with tools/export_model.py from this config, or pass the config it came from."
        )


class OnnxInference:
    """An ONNX file run by onnxruntime, used like the model it came from.

    ``network(*inputs)`` maps the graph's inputs (torch tensors, in ``input_names`` order: the
    (N, 3, H, W) float pixels first) to the output tensors (torch, CPU) in ``output_names`` order;
    calling the object on detectron2 inputs (list of dicts with ``image``, plus ``sparse_depth``
    (+ ``sem_seg``) for DepthCompletion, ``class_names`` / ``queries`` / ``sequence_id`` +
    ``frame_index`` for SegDep) gives what ``model(inputs)`` gives, through :func:`exported_inference`
    (for a HydraNet ``"labels"`` file: ``sem_seg_labels`` (H, W) instead of the ``sem_seg`` logits).
    ``outputs`` says which output set the file has: ``"logits"``, ``"labels"`` or ``"referring"``.
    """

    def __init__(self, path, session, model, fingerprint, metadata=None):
        self.path = path
        self.session = session
        self.model = model
        self.fingerprint = fingerprint
        self.metadata = dict(metadata or {})  # the file's metadata_props (read_onnx_metadata)
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.outputs = ("labels" if "sem_seg_labels" in self.output_names
                        else "referring" if "referring_logits" in self.output_names else "logits")
        network_class = NETWORKS.get(fingerprint["meta_architecture"])
        self.pads_input = bool(network_class is not None and network_class.pads_input)
        # (H, W) of a static-size export (PanopticDepthLab with fixed ASPP pooling), else None.
        hw = session.get_inputs()[0].shape[2:]
        self.static_size = tuple(hw) if all(isinstance(v, int) for v in hw) else None

    def network(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            missing = list(self.input_names[len(inputs):])
            raise ValueError(
                f"{self.path} takes the inputs {list(self.input_names)}; got {len(inputs)} tensor(s)"
                + (f", missing {missing}" if missing else "")
            )
        images = inputs[0]
        if self.static_size is not None and tuple(images.shape[-2:]) != self.static_size:
            raise ValueError(
                f"{self.path} was exported at the static size {self.static_size[0]}x{self.static_size[1]}; "
                f"got images of {images.shape[-2]}x{images.shape[-1]} (export again at this size)"
            )
        feed = {name: _numpy_input(x) for name, x in zip(self.input_names, inputs)}
        return tuple(torch.from_numpy(o) for o in self.session.run(None, feed))

    def __call__(self, batched_inputs):
        return exported_inference(self.network, self.model, batched_inputs, pads_input=self.pads_input,
                                  outputs=self.outputs)


def _numpy_input(x: torch.Tensor):
    """A graph input as onnxruntime takes it: float tensors as float32, integer and bool ones as they are."""
    x = x.detach().to("cpu")
    if x.is_floating_point():
        x = x.to(torch.float32)
    return x.contiguous().numpy()


def load_onnx_model(path, cfg, model=None, threads=None, spinning=True) -> OnnxInference:
    """Open an ONNX file written by ``tools/export_model.py --format onnx`` for use with ``cfg``.

    Refuses (``ValueError`` naming the difference) a file without segdep_d2's metadata, a file
    exported from another config (family, number of classes, output names, input format, depth
    range; DepthCompletion / SegDep also their input names, semantic input / CLIP model) and a
    graph whose inputs or outputs are not the family's (either of HydraNet's output sets,
    ``sem_seg_logits`` / ``sem_seg_labels`` + ``depth``, is accepted, as is SegDep's referring set;
    the object's ``outputs`` says which the file has). ``model`` (built from ``cfg`` when not
    given) supplies the post-processing; its weights are not used, but for SegDep's text tower, which
    computes the vocabulary's embeddings (built with ``MODEL.SEGDEP.CLIP_WEIGHTS``; a trainable tower
    loads ``MODEL.WEIGHTS``). ``threads``:
    onnxruntime's intra-op threads (its default when None); ``spinning=False`` stops its idle
    workers from busy-waiting between runs (better when PyTorch shares the process).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file {path} does not exist; write it with tools/export_model.py --format onnx")
    metadata = read_onnx_metadata(path)
    stored = read_onnx_fingerprint(path, metadata)
    check_fingerprint(path, stored, cfg)
    session = _session(path, threads, spinning)
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    if names != list(stored["output_names"]):
        raise ValueError(f"{path}: graph outputs {names}, but its metadata and the config expect {stored['output_names']}")
    inputs = [i.name for i in session.get_inputs()]
    expected_inputs = list(stored.get("input_names", [INPUT_NAME]))
    if inputs != expected_inputs:
        raise ValueError(f"{path}: graph inputs {inputs}, but its metadata and the config expect {expected_inputs}")
    channels = outputs[names.index("sem_seg_logits")].shape[1] if "sem_seg_logits" in names else None
    if isinstance(channels, int) and channels != stored["num_classes"]:
        raise ValueError(
            f"{path}: the graph's sem_seg_logits has {channels} channels but the config has "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {stored['num_classes']}"
        )
    if model is None:
        from detectron2.modeling import build_model

        cpu_cfg = cfg.clone()
        cpu_cfg.defrost()
        cpu_cfg.MODEL.DEVICE = "cpu"
        model = build_model(cpu_cfg).eval()
        if stored["meta_architecture"] == "SegDep" and not cfg.MODEL.SEGDEP.FREEZE_TEXT_ENCODER and cfg.MODEL.WEIGHTS:
            # the text tower computes the vocabulary's embeddings; fine-tuned, its weights are the checkpoint's
            from detectron2.checkpoint import DetectionCheckpointer

            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return OnnxInference(path, session, model, stored, metadata)


def exported_inference(network, model, batched_inputs, pads_input=True, outputs="logits"):
    """Full inference through an exported (or any tensor-in / tensors-out) ``network``: per input,
    its ``image`` as a (1, 3, H, W) float batch (and the family's other graph inputs) -> ``network``
    -> ``model.postprocess`` at the image's size. For a network that does not pad itself
    (``pads_input=False``: PanopticDepthLab's) the pixels are padded to the size divisibility with
    the pixel mean, which normalises to the 0 that ``ImageList.from_tensors`` pads with.

    * DepthCompletion: the input's ``sparse_depth`` (H, W) metres (required, as the eager model
      requires it) and, with ``SEMANTIC_INPUT: "labels"``, its ``sem_seg`` (absent: all unlabelled);
    * SegDep: the vocabularies of the input's ``class_names`` (the training class names by default)
      through ``model.text_embeddings``, the network run once per vocabulary; with the temporal module
      the model's per-sequence state (``sequence_id`` / ``frame_index``) is read and written as eager
      inference does; ``outputs="referring"`` (a network exported so) answers the input's ``queries``.
    """
    family = type(model).__name__
    if family == "DepthCompletion":
        return [_depth_completion_inference(network, model, x) for x in batched_inputs]
    if family == "SegDep":
        return [_segdep_inference(network, model, x, outputs) for x in batched_inputs]
    results = []
    for x in batched_inputs:
        image = x["image"].to(torch.float32)[None]
        height, width = image.shape[-2:]
        d = model._size_divisibility()
        if not pads_input and d > 0:  # d = 0: the model pads nothing
            pad = (0, (d - width % d) % d, 0, (d - height % d) % d)
            if any(pad):
                mean = model.pixel_mean.to(image.device).view(1, -1, 1, 1)
                image = F.pad(image - mean, pad) + mean
        outputs = network(image)
        results.extend(model.postprocess(*outputs, [x], [(height, width)]))
    return results


def _depth_completion_inference(network, model, x):
    image = x["image"].to(model.device, torch.float32)[None]
    height, width = image.shape[-2:]
    if "sparse_depth" not in x:
        raise KeyError(
            "DepthCompletion's exported network needs 'sparse_depth' (H, W) metres in every input (an all-zero "
            "map for a sample without points): its graph inputs are images, sparse_depth"
            + (", semantics" if model.semantic_input == "labels" else "")
        )
    sparse = torch.as_tensor(x["sparse_depth"], device=model.device).float()
    if tuple(sparse.shape[-2:]) != (height, width):
        raise ValueError(f"sparse_depth {tuple(sparse.shape)} does not match the image {tuple(x['image'].shape)}")
    inputs = [image, sparse.reshape(1, height, width)]
    if model.semantic_input == "labels":
        if "sem_seg" in x:
            labels = torch.as_tensor(x["sem_seg"], device=model.device).long().reshape(1, height, width)
        else:  # as the eager model: no semantics for this input
            labels = torch.full((1, height, width), model.ignore_value, dtype=torch.long, device=model.device)
        inputs.append(labels)
    outputs = network(*inputs)
    confidence = outputs[1] if len(outputs) > 1 else None
    return model.postprocess(outputs[0], confidence, [x], [(height, width)])[0]


def _segdep_inference(network, model, x, outputs="logits"):
    from .meta_arch.hydranet import _crop_and_resize
    from .meta_arch.segdep import _query_texts

    image = x["image"].to(model.device, torch.float32)[None]
    height, width = image.shape[-2:]
    names = _segdep_names(SEGDEP_OUTPUT_NAMES, ("features",), ("referring_logits",), model.temporal,
                          outputs == "referring")
    texts = _query_texts(x)
    if texts and outputs != "referring":
        raise ValueError("this input has 'queries' but the network has no referring output: export it with "
                         "outputs='referring' (tools/export_model.py --outputs referring)")
    extra = []
    if model.temporal:
        shape = _segdep_feature_shape(model, height, width)
        previous = model.temporal_previous(x, shape)
        has_prev = previous is not None
        extra += [(previous if has_prev else torch.zeros(shape, device=model.device))[None].to(model.device),
                  torch.tensor([has_prev], device=model.device)]
    if outputs == "referring":
        # no query: one zero embedding keeps the graph's Q >= 1; its output is dropped
        queries = model.text_encoder.encode(texts) if texts else torch.zeros(1, model.text_encoder.embed_dim)
        extra.append(queries.to(model.device))
    open_vocab, first = OrderedDict(), None
    for key, vocabulary in model._vocabularies(x).items():
        out = dict(zip(names, network(image, model.text_embeddings(vocabulary), *extra)))
        open_vocab[key] = out["open_vocab_logits"][0]
        first = first or out
    if model.temporal:
        model.temporal_store(x, first["features"][0])
    result = model.postprocess(first["sem_seg_logits"], first["depth"], [open_vocab], [x], [(height, width)])[0]
    if texts:
        logits = _crop_and_resize(first["referring_logits"][0].float(), (height, width), *result["depth"].shape)
        result["referring"] = model._referring_answers(texts, logits, result["depth"])
    return result
