#!/usr/bin/env python
"""Speed and memory of a model family: PanopticDepthLab against what a user would otherwise run,
HydraNet across runtimes, SegDep across vocabulary sizes, DepthCompletion against interpolation.

In one run, same backbone, same input size, same machine (``--model panoptic_depthlab``, the
default; 512x1024 and 1024x2048 unless ``--sizes`` says otherwise):

* ``panoptic_depthlab``: our model, full inference (panoptic post-processing + per-segment depth);
* ``panoptic_depthlab_channels_last``: the same in ``torch.channels_last`` memory format;
* ``panoptic_deeplab``: detectron2's stock Panoptic-DeepLab built from the same config, with our
  size-adaptive ASPP image pooling (the cost of the depth branch is the difference);
* ``panoptic_deeplab_stock``: the same, exactly as detectron2 builds it (its ASPP pools with the
  training crop's fixed kernel; dropped, with the reason, below the crop size);
* ``two_networks``: stock Panoptic-DeepLab plus a separate depth network with the same backbone
  and the same depth decoder, then per-segment depth (stitching two models by hand);
* ``deployed`` (CPU): our model as ``tools/export_model.py --format onnx`` exports it at the input
  size, run by onnxruntime through ``segdep_d2.modeling.deployed.load_deployed`` (what
  ``--deployed PATH`` runs in train_net / visualize), post-processing included;
* ``segment_depths``: the per-segment depth step alone, on our model's output.

Besides ``vs_panoptic_deeplab``, ``vs_two_networks`` and ``segment_depth_fraction`` it writes
``deployed_vs_stock_eager`` (deployed median / ``panoptic_deeplab_stock`` median; issue 15's target
< 1.0), ``deployed_vs_stock_eager_same_pooling`` (over ``panoptic_deeplab``), ``deployed_vs_eager``
(eager median / deployed median: the speed-up), ``channels_last_vs_eager`` (eager median /
channels-last median), ``deployed_parity`` (deployed against eager on the
benchmark's input: argmax and panoptic agreement, relative depth difference, segment distances) and
``targets``.

Variants are timed interleaved (A, B, C, A, B, C, ...) so that machine drift hits them equally,
and repetition i of every variant forms a pair. Each variant gets its median, min, max and
interquartile range; each ratio its ratio of medians (what to quote) plus the range and IQR of the
per-repetition paired ratios. When a ratio's paired IQR does not exclude 1.0 (the spread is not
narrower than the difference claimed), a warning is printed and recorded in the JSON. Peak memory is
measured once per variant (see :func:`peak_memory_mb`).

``--model`` picks a benchmark family from :data:`BENCHMARKS` (a model family adds its entry with
:func:`register_benchmark`). ``--config`` defaults to the family's config in this repository, found
from the script's location (the tool runs from any folder).

    python tools/benchmark.py --model panoptic_depthlab --height 512 --width 1024 --runs 5 \
        --output output/benchmark/panoptic_depthlab.json

``--model hydranet`` (default config: NYUDv2-40) times one HydraNet in several runtimes, full
inference each (uint8 image -> network -> crop / resize to the input size): ``eager_nchw``,
``eager_channels_last`` (``eager`` is the faster of the two), ``onnxruntime`` (tools/export_model.py's
default ONNX graph: ``sem_seg_logits`` + ``depth``, the outputs of ``model(inputs)``, with the
exact graph rewrites for onnxruntime's CPU kernels), ``onnxruntime_labels`` (``--outputs labels``:
the real-time deployment, ``sem_seg_labels`` + ``depth`` with the argmax in the graph),
``onnxruntime_plain`` (the logits graph without the rewrites), ``onnxruntime_deployed`` (the labels
graph loaded as ``tools/demo.py --onnx`` loads it: onnxruntime's idle workers spin between runs,
its default; the others sleep) and ``compile`` (``torch.compile``,
inductor; dropped with the reason when it fails). It measures 480x640 and 375x1242 in one run
(``--sizes`` to change; the first size's figures are at the top level, every size's under
``sizes``) and writes, beside the device and settings: ``latency_ms`` (lists per runtime),
``params``, ``gflops`` (fvcore, one multiply-add counted once), ``onnxruntime_vs_eager`` (eager
median / onnxruntime median; > 1: onnxruntime is faster; like for like, both output the logits),
``onnxruntime_labels_vs_eager``, ``onnxruntime_deployed_vs_eager``, ``graph_rewrites_speedup``
(plain / rewritten graph), ``spinning_speedup`` (labels / deployed), ``compile`` (used or why not),
``fastest_runtime`` (over eager, compile, onnxruntime, onnxruntime_labels and onnxruntime_deployed),
``stream`` (that runtime timed again frame after frame, as a video stream runs it: its latencies and
spread) and, at 480x640, the targets (<= 150 ms in the fastest runtime, interleaved and streamed;
onnxruntime_vs_eager >= 1.3).

    python tools/benchmark.py --model hydranet --height 480 --width 640 --output benchmarks/hydranet_mbv2_640x480_cpu.json

``--model segdep`` (default config: VKITTI2, hrnet_w32 + the ViT-B-32 text tower, random weights;
default size 256x512) times SegDep's full inference (``model(inputs)``: closed-set logits, depth,
open-vocabulary scores for the input's ``class_names``, post-processing) with ``names19`` (Cityscapes'
19 class names) and ``names100`` (those 19 + 81 VKITTI2 / COCO panoptic names), the text cache warm;
``names100_cold`` (the cache emptied before every call: 100 names x the prompt templates encoded each
time); ``separate``, the hand-stitched baseline (:class:`SeparateNetworks`: a segmentation network, a
depth network and a CLIP-style open-vocabulary network, each with its own HRNet + FPN, the last with its
own CLIP text tower); ``names19_motion`` (with the motion module, consecutive frames of one sequence:
flow, warp and gated fusion on every call); on the CPU ``names19_deployed`` (names19 through the ONNX
export in onnxruntime, as ``--deployed`` runs it); and, when the model has the referring head, ``queries1`` /
``queries20`` (the 19 names plus 1 / 20 referring queries). It writes ``latency_ms``,
``latency_stats_ms``, ``median_ms``, ``names100_vs_names19`` (target <= 1.3), ``cold_vs_warm_names100``,
``segdep_vs_separate`` (SegDep names19 / separate), ``motion_vs_plain`` (names19_motion / names19),
``deployed_vs_eager`` (names19 / names19_deployed) with ``deployed_parity``,
``motion_module_params``, ``queries20_vs_queries1`` (with the referring head), ``text_cache_hit_rate``
(over the warm variants' calls), ``text_cache`` (lookups per variant), ``params`` (total, trainable),
``targets``, ``notes``, the device and settings.

    python tools/benchmark.py --model segdep --height 256 --width 512 --runs 15 --output benchmarks/segdep_256x512.json

``--model depth_completion`` (default config: KITTI depth completion, random weights; default size
352x1216, one KITTI val_selection frame) times DepthCompletion on a random image plus a deterministic
LiDAR-like sparse depth map (:func:`lidar_like_sparse_depth`: 64 scan lines in the lower two-thirds,
~4.5 % of the pixels, 5-80 m) against interpolating that map: ``eager`` (``model(inputs)`` in eval mode
under no_grad, as ``Predictor`` runs a model), ``eager_semantic_guide`` (the semantic-guide config's
frozen HydraNet guide added, guide included; when the config has no semantic input of its own),
``nearest_fill`` and ``bilinear_fill`` (the evaluation's trivial baselines, numpy), and on the CPU
``deployed`` / ``deployed_semantic_guide`` (the two eager models exported to ONNX at the input size and
run by onnxruntime through ``load_deployed``, as ``--deployed PATH`` runs them). It writes
``latency_ms``, ``latency_stats_ms``, ``median_ms``, ``eager_vs_nearest_fill``, ``eager_vs_bilinear_fill``,
``semantic_guide_vs_eager``, ``deployed_vs_eager`` and ``semantic_guide_deployed_vs_eager`` (ratios of
medians; eager / deployed for the last two; paired spread under ``ratio_spread``), ``deployed_parity``
(largest relative and absolute depth differences, deployed against eager), ``params`` and
``gflops`` (fvcore, one multiply-add counted once) of the network, ``semantic_guide_params`` /
``semantic_guide_gflops``, ``sparse_input`` (the pattern's points and density), ``peak_memory_mb``
(the two eager variants), ``notes``, the device and settings.

    python tools/benchmark.py --model depth_completion --output benchmarks/depth_completion_kitti_352x1216_cpu.json
"""
import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import segdep_d2  # noqa: E402,F401
from segdep_d2 import add_segdep_config  # noqa: E402
from segdep_d2.evaluation import segment_depths  # noqa: E402
from segdep_d2.modeling import adapt_aspp_pooling, build_depth_head  # noqa: E402
from segdep_d2.modeling.heads.depth_head import depth_from_logits  # noqa: E402

# Interleaved repetitions by default. On a shared 2-thread CPU a 512x1024 forward of the R52 model
# varies from run to run by tens of percent (other jobs come and go), more than the ~1.15x the
# depth branch costs. With 5 pairs each quartile of the paired ratios is a single pair (the earlier
# 5-run figure: paired IQR 1.09-1.27, one load spike away from 1.0). 15 pairs (~20 s each for the
# three variants at 512x1024 on CPU: 6-10 minutes in all) gave a paired IQR clear of 1.0 for both
# comparisons on a moderately loaded machine (benchmarks/panoptic_depthlab_R52_512x1024_cpu.json);
# when it does not, the report says so.
DEFAULT_RUNS = 15


class DepthNetwork(nn.Module):
    """The separate monocular depth network of the two-network baseline: the same backbone and
    the same depth decoder as PanopticDepthLab, with weights of its own."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.depth_head = build_depth_head(cfg, self.backbone.output_shape())
        adapt_aspp_pooling(self)  # as PanopticDepthLab's own depth head
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.size_divisibility = max(cfg.MODEL.PANOPTIC_DEEPLAB.SIZE_DIVISIBILITY, self.backbone.size_divisibility)

    def forward(self, batched_inputs):
        images = [(x["image"].to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        depth, _ = self.depth_head(self.backbone(images.tensor))
        return [{"depth": d[0, : s[0], : s[1]]} for d, s in zip(depth, images.image_sizes)]


@dataclass(frozen=True)
class BenchmarkFamily:
    """How to benchmark one model family (an entry of :data:`BENCHMARKS`).

    ``build(cfg)`` returns ``{variant: callable(inputs) -> outputs}`` for every name in
    ``variants`` (timed interleaved, in this order; the first is the family's own model).
    ``followups(variant, outputs)`` returns ``{step: zero-argument callable}``: steps timed right
    after that variant's run, on its outputs (recorded as latencies of their own, paired with it).
    ``describe(outputs)`` gives per-image facts about the first variant's outputs (their median is
    reported). ``ratios`` maps a ratio's name to ``(numerator, denominator)`` latencies; those in
    ``compared_to_one`` claim a difference from 1.0 that their spread is checked against.

    Optional, for families that compare runtimes (HydraNet):

    * ``optional_variants``: variants allowed to fail (e.g. ``torch.compile`` without a working
      compiler): an exception in their first (warm-up) call drops them from the run and records
      why under ``unavailable``;
    * ``fastest_of``: ``{name: (variant, ...)}``: ``name``'s latencies are those of the listed
      variant with the lowest median (e.g. ``eager`` = the faster memory format), recorded under
      ``chosen``; ratios may use ``name``;
    * ``streamed``: after the interleaved runs, the fastest of these variants (lowest median) is
      run again ``--warmup`` + ``--runs`` times back to back, as a video stream runs one model
      frame after frame (interleaving puts the other variants, and their use of the caches,
      between its calls); recorded under ``stream``;
    * ``facts(cfg, runners, height, width)``: per-size facts about the model (parameters, FLOPs);
    * ``summarize(report, args, height, width)``: extra keys computed from a size's report;
    * ``memory_variants``: the variants whose peak memory is measured (default: all; torch's
      profiler does not see what onnxruntime allocates);
    * ``default_size`` / ``extra_sizes``: ``--height``/``--width`` defaults and the sizes also
      measured in the same run unless ``--sizes`` is given; ``default_runs``: ``--runs`` default;
    * ``inputs(args, cfg, height, width)``: the list[dict] every variant gets (default
      :func:`make_inputs`: a random uint8 image; DepthCompletion adds its sparse depth).

    ``build``'s dict may hold entries that are not variants (SegDep: the model, its text-cache log),
    for ``facts`` to read; only the names in ``variants`` are timed.
    """

    default_config: str  # relative to the repository root
    variants: Tuple[str, ...]
    build: Callable
    ratios: Dict[str, Tuple[str, str]]
    compared_to_one: Tuple[str, ...] = ()
    followups: Optional[Callable] = None
    describe: Optional[Callable] = None
    cfg_overrides: Tuple[str, ...] = ()
    optional_variants: Tuple[str, ...] = ()
    fastest_of: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    streamed: Tuple[str, ...] = ()
    facts: Optional[Callable] = None
    summarize: Optional[Callable] = None
    memory_variants: Optional[Tuple[str, ...]] = None
    default_size: Tuple[int, int] = (512, 1024)
    extra_sizes: Tuple[Tuple[int, int], ...] = ()
    default_runs: int = 0  # 0: DEFAULT_RUNS
    inputs: Optional[Callable] = None  # (args, cfg, height, width) -> list[dict]; None: make_inputs


BENCHMARKS: Dict[str, BenchmarkFamily] = {}


def register_benchmark(name, family):
    """Make ``family`` available as ``tools/benchmark.py --model <name>``."""
    if name in BENCHMARKS:
        raise KeyError(f"benchmark {name!r} is already registered")
    BENCHMARKS[name] = family
    return family


def build_panoptic_depthlab_variants(cfg):
    """Callables running one inference of each variant on a list of inputs.

    All variants share the same weights (ours, loaded from MODEL.WEIGHTS when set): the stock
    models get our backbone and panoptic heads, the depth network our backbone and depth head.
    Identical predictions make the panoptic post-processing cost identical, so the difference in
    time is the architecture's (or the runtime's) alone.

    * ``panoptic_depthlab``: our model in PyTorch eager, ``model(inputs)``;
    * ``panoptic_depthlab_channels_last``: the same weights in ``torch.channels_last`` (oneDNN then
      convolves without reordering every activation to and from its blocked layout);
    * ``panoptic_deeplab``: detectron2's PanopticDeepLab with our size-adaptive ASPP image pooling
      (:func:`segdep_d2.modeling.adapt_aspp_pooling`, the same module as ours): like for like at
      every size, the depth branch's cost is the difference;
    * ``panoptic_deeplab_stock``: detectron2's PanopticDeepLab exactly as detectron2 builds it
      (``nn.AvgPool2d`` of the training crop's kernel: it runs at sizes no smaller than the crop and
      is dropped, with detectron2's error, below it);
    * ``two_networks``: stock Panoptic-DeepLab plus a separate depth network, then per-segment depth;
    * ``deployed``: our model as users deploy it: ``tools/export_model.py --format onnx`` of these
      weights, exported at the input's (padded) size on the first (warm-up) call, opened with
      :func:`segdep_d2.modeling.deployed.load_deployed` (onnxruntime, ``--threads`` intra-op
      threads) and called like the model: network in onnxruntime, panoptic grouping and
      per-segment depth in Python.
    """
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(ours).load(cfg.MODEL.WEIGHTS)
    stock_cfg = cfg.clone()
    stock_cfg.defrost()
    stock_cfg.MODEL.META_ARCHITECTURE = "PanopticDeepLab"
    stock_unmodified = build_model(stock_cfg).eval()
    stock_unmodified.load_state_dict(ours.state_dict(), strict=False)
    stock = build_model(stock_cfg).eval()
    adapt_aspp_pooling(stock)
    stock.load_state_dict(ours.state_dict(), strict=False)
    depth_net = DepthNetwork(cfg).to(cfg.MODEL.DEVICE).eval()
    depth_net.load_state_dict(ours.state_dict(), strict=False)

    def two_networks(inputs):
        panoptic = stock(inputs)
        depth = depth_net(inputs)
        for p, d in zip(panoptic, depth):
            segment_depths(p["panoptic_seg"][0], d["depth"])
        return panoptic, depth

    runners = {"panoptic_depthlab": ours,
               "panoptic_depthlab_channels_last": copy.deepcopy(ours).to(memory_format=torch.channels_last),
               "panoptic_deeplab": stock, "panoptic_deeplab_stock": stock_unmodified, "two_networks": two_networks}
    if cfg.MODEL.DEVICE == "cpu":  # onnxruntime's CPU provider; a GPU run times the eager variants
        runners["deployed"] = _deployed_runner(cfg, ours)
    return runners


def _deployed_runner(cfg, model):
    """``deployed``: on its first call, export ``model`` to ONNX at the call's padded image size
    (a cropped-training config's ONNX file is static-size) into a temporary folder and open it with
    ``load_deployed``; every call then runs the deployed model."""
    import atexit
    import shutil
    import tempfile

    from segdep_d2.modeling.deployed import load_deployed
    from segdep_d2.modeling.export import export_onnx, onnx_dynamic, size_divisibility_of

    deployed = {}

    def prepare(inputs):
        d = size_divisibility_of(model)
        h, w = inputs[0]["image"].shape[-2:]
        size = (h, w) if d <= 0 else (-(-h // d) * d, -(-w // d) * d)
        if size not in deployed:
            folder = tempfile.mkdtemp(prefix="segdep_benchmark_deployed_")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            path = os.path.join(folder, "model.onnx")
            export_onnx(model, cfg, *size, path, dynamic=onnx_dynamic(model))
            deployed[size] = load_deployed(path, cfg, model=model, threads=torch.get_num_threads())
        return deployed[size]

    def run(inputs):
        return prepare(inputs)(inputs)

    run.prepare = prepare  # measure() exports before timing
    return run


build_variants = build_panoptic_depthlab_variants  # the name earlier versions exported


def _segment_depth_step(variant, outputs):
    if variant != "panoptic_depthlab":
        return {}
    ids, _ = outputs[0]["panoptic_seg"]
    return {"segment_depths": lambda: segment_depths(ids, outputs[0]["depth"])}


def deployed_parity(eager_outputs, deployed_outputs):
    """How far the deployed model's outputs are from the eager model's on one input: semantic
    argmax agreement, the largest relative depth difference, whether the panoptic segments are the
    same, and the largest difference of a segment's distance (metres) over the shared segments."""
    eager, deployed = eager_outputs[0], deployed_outputs[0]
    depth_error = ((deployed["depth"] - eager["depth"]).abs() / eager["depth"].abs().clamp(min=1e-6)).max()
    eager_segments = {s["id"]: s for s in eager["panoptic_seg"][1]}
    deployed_segments = {s["id"]: s for s in deployed["panoptic_seg"][1]}
    shared = eager_segments.keys() & deployed_segments.keys()
    return {
        "argmax_agreement": float((eager["sem_seg"].argmax(0) == deployed["sem_seg"].argmax(0)).float().mean()),
        "max_rel_diff_depth": float(depth_error),
        "panoptic_agreement": float((eager["panoptic_seg"][0] == deployed["panoptic_seg"][0]).float().mean()),
        "same_segments": eager_segments.keys() == deployed_segments.keys(),
        "num_segments": len(eager_segments),
        "max_abs_diff_segment_depth_m": max(
            (abs(eager_segments[i]["depth"] - deployed_segments[i]["depth"]) for i in shared), default=0.0),
    }


def panoptic_depthlab_facts(cfg, runners, height, width):
    """The deployed model against the eager one on the benchmark's input (``deployed_parity``)."""
    if "deployed" not in runners:
        return {}
    inputs = make_inputs(argparse.Namespace(height=height, width=width))
    with torch.no_grad():
        return {"deployed_parity": deployed_parity(runners["panoptic_depthlab"](inputs), runners["deployed"](inputs))}


def panoptic_depthlab_summary(report, args, height, width):
    """Issue 15's target: the deployed model (panoptic + depth + per-segment distances) costs less
    than detectron2's stock Panoptic-DeepLab (panoptic only) in eager mode."""
    ratios = report["ratios"]
    if "deployed_vs_stock_eager" not in ratios:
        return {}
    return {key: ratios[key] for key in DEPLOYED_RATIOS if key in ratios} | {"targets": {
        "deployed_vs_stock_eager_below_1": ratios["deployed_vs_stock_eager"] < 1.0,
        "note": "issue 15: deployed PanopticDepthLab median / stock Panoptic-DeepLab eager median < 1.0",
    }}


DEPLOYED_RATIOS = ("deployed_vs_stock_eager", "deployed_vs_stock_eager_same_pooling", "deployed_vs_eager",
                   "channels_last_vs_eager")
register_benchmark(
    "panoptic_depthlab",
    BenchmarkFamily(
        default_config="projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/"
        "panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml",
        variants=("panoptic_depthlab", "panoptic_depthlab_channels_last", "panoptic_deeplab", "panoptic_deeplab_stock",
                  "two_networks", "deployed"),
        build=build_panoptic_depthlab_variants,
        ratios={
            "vs_panoptic_deeplab": ("panoptic_depthlab", "panoptic_deeplab"),
            "vs_two_networks": ("panoptic_depthlab", "two_networks"),
            "segment_depth_fraction": ("segment_depths", "panoptic_depthlab"),
            # deployed median / stock eager median (< 1: the deployed model is cheaper)
            "deployed_vs_stock_eager": ("deployed", "panoptic_deeplab_stock"),
            "deployed_vs_stock_eager_same_pooling": ("deployed", "panoptic_deeplab"),
            # eager median / deployed median: the speed-up of deploying (> 1: faster)
            "deployed_vs_eager": ("panoptic_depthlab", "deployed"),
            "channels_last_vs_eager": ("panoptic_depthlab", "panoptic_depthlab_channels_last"),
        },
        compared_to_one=("vs_panoptic_deeplab", "vs_two_networks", *DEPLOYED_RATIOS),
        followups=_segment_depth_step,
        describe=lambda outputs: {"segments_per_image": len(outputs[0]["panoptic_seg"][1])},
        cfg_overrides=("MODEL.PANOPTIC_DEEPLAB.PREDICT_INSTANCES", "False"),
        # detectron2's own ASPP raises below the training crop's pooling kernel
        optional_variants=("panoptic_deeplab_stock",),
        facts=panoptic_depthlab_facts,
        summarize=panoptic_depthlab_summary,
        # torch's profiler does not see onnxruntime's allocations
        memory_variants=("panoptic_depthlab", "panoptic_depthlab_channels_last", "panoptic_deeplab",
                         "panoptic_deeplab_stock", "two_networks"),
        extra_sizes=((1024, 2048),),
    ),
)
# ---- HydraNet: one network in three runtimes -----------------------------------------------------
# The paper's figure (6.5 GFLOPs at 640x480) and issue 11's targets on the 2-core CPU.
HYDRANET_PAPER_GFLOPS = 6.5
HYDRANET_TARGET_MS = 150.0  # fastest runtime, one 640x480 frame
HYDRANET_TARGET_ORT_SPEEDUP = 1.3  # onnxruntime_vs_eager
HYDRANET_ONNX_EXPORT_SIZE = (256, 256)  # any: the graph's height and width are dynamic
# The ONNX runtimes: (export_onnx's outputs, rewrite, spinning workers) per variant.
HYDRANET_ONNX_VARIANTS = {
    "onnxruntime": ("logits", True, False),  # tools/export_model.py --format onnx (the default outputs)
    "onnxruntime_labels": ("labels", True, False),  # --outputs labels: the real-time deployment's graph
    "onnxruntime_plain": ("logits", False, False),  # --no-graph-rewrites: what the rewrites buy
    # The labels graph loaded as tools/demo.py --onnx loads it (load_onnx_model's defaults):
    # onnxruntime's idle workers spin between runs, which suits a process doing nothing else.
    "onnxruntime_deployed": ("labels", True, True),
}
# fastest_runtime is one of these
HYDRANET_RUNTIMES = ("eager", "compile", "onnxruntime", "onnxruntime_labels", "onnxruntime_deployed")
_ONNX_FILES: Dict[str, Dict[Tuple[str, bool], str]] = {}  # config dump -> {(outputs, rewrite): file}, per process


def build_hydranet_variants(cfg):
    """One HydraNet (random weights unless MODEL.WEIGHTS), full inference (uint8 image -> network
    -> ``model.postprocess``: crop and resize to the input size) in each runtime:

    * ``eager_nchw``: ``model(inputs)``, PyTorch eager, the default NCHW memory format;
    * ``eager_channels_last``: the same weights in ``torch.channels_last`` (DESIGN.md 6: depthwise
      convolutions in NCHW are very slow on CPU); ``eager`` is the faster of the two;
    * ``onnxruntime``: the network exported to ONNX as tools/export_model.py exports it by default
      (``sem_seg_logits`` + ``depth``: the outputs ``model(inputs)`` has; dynamic H/W; the exact
      graph rewrites for onnxruntime's CPU kernels), CPUExecutionProvider, intra-op threads =
      ``--threads``, no spinning, loaded with ``load_onnx_model``;
    * ``onnxruntime_labels``: the real-time deployment (``--outputs labels``): the same network
      ending in the per-pixel argmax and depth, so no 40 full-resolution logit maps are computed
      past the argmax or copied out; its post-processing returns ``sem_seg_labels``;
    * ``onnxruntime_plain``: the ``onnxruntime`` graph without the rewrites (what they buy);
    * ``onnxruntime_deployed``: the ``onnxruntime_labels`` file loaded with ``load_onnx_model``'s
      defaults, as ``tools/demo.py --onnx`` runs it: idle workers spin between runs (onnxruntime's
      default: lower latency when nothing else in the process needs the cores);
    * ``compile``: ``torch.compile`` (inductor, static shapes) of the channels-last network; its
      first warm-up call compiles (tens of seconds on CPU) and a failure drops it, with the reason.

    The ONNX files are exported once per config and process (the graph's height and width are
    dynamic; every size of a run uses the same files; the two labels variants share one).
    """
    import atexit
    import shutil
    import tempfile

    from segdep_d2.modeling.export import HydraNetNetwork, export_onnx, exported_inference, load_onnx_model

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    cl_network = HydraNetNetwork(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
    compiled = torch.compile(cl_network, dynamic=False)

    def channels_last(images):
        return cl_network(images.contiguous(memory_format=torch.channels_last))

    def compiled_network(images):
        return compiled(images.contiguous(memory_format=torch.channels_last))

    key = cfg.dump()
    if key not in _ONNX_FILES:
        folder = tempfile.mkdtemp(prefix="segdep_benchmark_onnx_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        files = {}
        for outputs, rewrite, _ in HYDRANET_ONNX_VARIANTS.values():
            if (outputs, rewrite) not in files:
                path = os.path.join(folder, f"{outputs}{'' if rewrite else '_plain'}.onnx")
                export_onnx(model, cfg, *HYDRANET_ONNX_EXPORT_SIZE, path, dynamic=True, outputs=outputs, rewrite=rewrite)
                files[outputs, rewrite] = path
        _ONNX_FILES[key] = files
    # Without spinning, idle workers sleep: PyTorch runs in the same process (post-processing, the
    # other variants). onnxruntime_deployed keeps onnxruntime's default (spinning), as the demo does.
    onnx_models = {
        name: load_onnx_model(_ONNX_FILES[key][outputs, rewrite], cfg, model=model, threads=torch.get_num_threads(),
                              spinning=spinning)
        for name, (outputs, rewrite, spinning) in HYDRANET_ONNX_VARIANTS.items()
    }
    return {
        "eager_nchw": model,
        "eager_channels_last": lambda inputs: exported_inference(channels_last, model, inputs),
        **onnx_models,
        "compile": lambda inputs: exported_inference(compiled_network, model, inputs),
    }


def hydranet_facts(cfg, runners, height, width):
    """Parameters and fvcore FLOPs (one multiply-add counted once) of the exported network at this
    size: normalisation, padding to 32, encoder, decoder, both heads and the bilinear upsampling
    of both outputs to full resolution."""
    from fvcore.nn import FlopCountAnalysis

    from segdep_d2.modeling.export import HydraNetNetwork

    model = runners["eager_nchw"]
    flops = FlopCountAnalysis(HydraNetNetwork(model).eval(), torch.zeros(1, 3, height, width, device=model.device))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": flops.total() / 1e9,
        "gflops_paper_640x480": HYDRANET_PAPER_GFLOPS,
        "onnxruntime_profile": onnxruntime_profile(runners["onnxruntime_deployed"].path, height, width,
                                                   torch.get_num_threads()),
    }


def onnxruntime_profile(path, height, width, threads, runs=5):
    """Where onnxruntime's kernel time goes in one ONNX file at this size: its profiler over ``runs``
    calls (after one warm-up) on a session with the benchmark's settings, summed per operator type,
    convolutions split by the network part their node belongs to (``Conv /backbone``, ``Conv
    /decoder``, ``Conv /sem_seg_head``, ...). ``kernel_ms_per_run`` and ``share`` (of the kernel
    time) per category, largest first. Profiling slows the run a little; the shares are what count."""
    import json as json_module
    import tempfile

    import numpy as np

    from segdep_d2.modeling.export import _session

    with tempfile.TemporaryDirectory(prefix="segdep_ort_profile_") as folder:
        session = _session(path, threads, spinning=False, profile_prefix=os.path.join(folder, "profile"))
        feed = {session.get_inputs()[0].name: np.zeros((1, 3, height, width), np.float32)}
        session.run(None, feed)  # warm-up: allocations, kernel selection
        started = time.perf_counter()
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json_module.load(f)
    # The profile starts with the session: skip the kernels of the warm-up call (the first model_run).
    warm_up_end = min((e["ts"] + e["dur"] for e in events if e.get("name") == "model_run"), default=-1)
    totals: Dict[str, float] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < warm_up_end:
            continue
        op = event["args"]["op_name"]
        if op == "Conv":
            part = event["name"].split("/")[1] if event["name"].startswith("/") else "other"
            op = f"Conv /{part}"
        totals[op] = totals.get(op, 0.0) + event["dur"] / 1000.0
    per_run = {op: ms / runs for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])}
    kernel = sum(per_run.values())
    return {"file_outputs": "labels", "runs": runs, "kernel_ms_per_run": per_run,
            "share": {op: ms / kernel for op, ms in per_run.items()},
            "wall_ms_per_run_profiled": (time.perf_counter() - started) * 1000.0 / runs}


def hydranet_summary(report, args, height, width):
    """The keys other tools read (``onnxruntime_vs_eager``), which eager memory format and runtime
    won, whether torch.compile helped (and why not), and issue 11's targets at 640x480.

    ``fastest_runtime`` is the fastest of :data:`HYDRANET_RUNTIMES`: eager, compile, onnxruntime
    (the same outputs as ``model(inputs)``) and onnxruntime_labels (the real-time deployment:
    labels + depth, the argmax in the graph); ``onnxruntime_vs_eager`` compares like with like
    (both output the logits), ``onnxruntime_labels_vs_eager`` the deployment with eager."""
    medians = report["median_ms"]
    runtimes = {name: medians[name] for name in HYDRANET_RUNTIMES if name in medians}
    fastest = min(runtimes, key=runtimes.get)
    if "compile" in report.get("unavailable", {}):
        compile_status = {"used": False, "reason": f"torch.compile failed: {report['unavailable']['compile']}"}
    elif medians["compile"] >= medians["eager"]:
        compile_status = {"used": False, "reason": f"slower than eager: median {medians['compile']:.1f} ms vs "
                                                   f"{medians['eager']:.1f} ms"}
    else:
        compile_status = {"used": True, "reason": f"faster than eager: median {medians['compile']:.1f} ms vs "
                                                  f"{medians['eager']:.1f} ms"}
    summary = {
        "onnxruntime_vs_eager": report["ratios"]["onnxruntime_vs_eager"],
        **{key: report["ratios"][key] for key in ("onnxruntime_labels_vs_eager", "onnxruntime_deployed_vs_eager")
           if key in report["ratios"]},
        "eager_memory_format": {"eager_channels_last": "channels_last", "eager_nchw": "nchw"}[report["chosen"]["eager"]],
        "compile": compile_status,
        "fastest_runtime": fastest,
        "fastest_median_ms": runtimes[fastest],
        "onnxruntime_settings": {"provider": "CPUExecutionProvider", "intra_op_threads": args.threads if args else None,
                                 "graph_optimization_level": "ORT_ENABLE_ALL",
                                 "allow_spinning": {name: v[2] for name, v in HYDRANET_ONNX_VARIANTS.items()},
                                 "graph_rewrites": {name: v[1] for name, v in HYDRANET_ONNX_VARIANTS.items()},
                                 "outputs": {name: v[0] for name, v in HYDRANET_ONNX_VARIANTS.items()}},
    }
    if (height, width) == (480, 640):
        summary["targets"] = {
            "fastest_median_ms_max": HYDRANET_TARGET_MS,
            "fastest_median_ms_met": runtimes[fastest] <= HYDRANET_TARGET_MS,
            "onnxruntime_vs_eager_min": HYDRANET_TARGET_ORT_SPEEDUP,
            "onnxruntime_vs_eager_met": report["ratios"]["onnxruntime_vs_eager"] >= HYDRANET_TARGET_ORT_SPEEDUP,
            "note": "targets of issue 11 for the 2-core CPU; fastest over " + ", ".join(runtimes)
                    + "; fastest_median_ms: interleaved with the other runtimes; stream_median_ms: the fastest "
                      "runtime frame after frame (a video stream)",
        }
        if "stream" in report:
            summary["targets"].update(stream_runtime=report["stream"]["runtime"],
                                      stream_median_ms=report["stream"]["median"],
                                      stream_median_ms_met=report["stream"]["median"] <= HYDRANET_TARGET_MS)
    notes = [f"eager = {report['chosen']['eager']} (the faster memory format)",
             f"torch.compile: {compile_status['reason']}", f"fastest: {fastest} ({runtimes[fastest]:.1f} ms)",
             "onnxruntime: tools/export_model.py's default ONNX export (sem_seg_logits + depth, as model(inputs)) "
             "with the exact graph rewrites; onnxruntime_labels: --outputs labels (sem_seg_labels + depth, the "
             "argmax in the graph: the real-time deployment); onnxruntime_plain: the logits graph without the "
             "rewrites; onnxruntime_deployed: the labels graph with spinning workers (as tools/demo.py --onnx "
             "loads it); fastest_runtime is over " + ", ".join(HYDRANET_RUNTIMES)]
    if "targets" in summary:
        t = summary["targets"]
        met = {True: "met", False: "NOT met"}
        streamed = (f"; streamed ({t['stream_runtime']}, frame after frame): {t['stream_median_ms']:.1f} ms, "
                    f"{met[t['stream_median_ms_met']]}" if "stream_median_ms" in t else "")
        notes.append(f"targets: fastest <= {HYDRANET_TARGET_MS:g} ms interleaved {met[t['fastest_median_ms_met']]}"
                     f"{streamed}; onnxruntime_vs_eager >= {HYDRANET_TARGET_ORT_SPEEDUP} "
                     f"{met[t['onnxruntime_vs_eager_met']]}")
    summary["notes"] = notes
    return summary


register_benchmark(
    "hydranet",
    BenchmarkFamily(
        default_config="projects/HydraNet/configs/NYUv2-HydraNet/hydranet_mbv2_nyuv2_40.yaml",
        variants=("eager_nchw", "eager_channels_last", "onnxruntime", "onnxruntime_labels", "onnxruntime_plain",
                  "onnxruntime_deployed", "compile"),
        build=build_hydranet_variants,
        ratios={
            "onnxruntime_vs_eager": ("eager", "onnxruntime"),
            "onnxruntime_labels_vs_eager": ("eager", "onnxruntime_labels"),
            "onnxruntime_deployed_vs_eager": ("eager", "onnxruntime_deployed"),
            "spinning_speedup": ("onnxruntime_labels", "onnxruntime_deployed"),
            "labels_vs_logits_onnxruntime": ("onnxruntime", "onnxruntime_labels"),
            "graph_rewrites_speedup": ("onnxruntime_plain", "onnxruntime"),
            "compile_vs_eager": ("eager", "compile"),
            "channels_last_vs_nchw": ("eager_nchw", "eager_channels_last"),
        },
        compared_to_one=("onnxruntime_vs_eager", "onnxruntime_labels_vs_eager", "onnxruntime_deployed_vs_eager",
                         "spinning_speedup", "labels_vs_logits_onnxruntime",
                         "graph_rewrites_speedup", "compile_vs_eager", "channels_last_vs_nchw"),
        optional_variants=("compile",),
        fastest_of={"eager": ("eager_channels_last", "eager_nchw")},
        streamed=HYDRANET_RUNTIMES,
        facts=hydranet_facts,
        summarize=hydranet_summary,
        memory_variants=("eager_nchw", "eager_channels_last"),
        default_size=(480, 640),
        extra_sizes=((375, 1242),),
        default_runs=20,
    ),
)


# ---- SegDep: vocabulary size, the text cache, and three separate networks ------------------------
# Issue 12's target: 100 class names cost at most 1.3x 19 names once the text cache is warm.
SEGDEP_TARGET_NAMES_RATIO = 1.3
# Referring queries asked in the queries1 / queries20 variants (when the model answers queries): the
# first one, then all twenty. Street-scene sentences of the kinds the referring data holds.
SEGDEP_QUERIES = (
    "the nearest car", "the car on the left", "the car on the right", "the farthest car",
    "the van in front of us", "the truck on the right", "the second car from the left",
    "the traffic light above the road", "the traffic sign on the right", "the pole closest to the camera",
    "the tree on the left", "the building on the right", "the road ahead", "the sidewalk on the left",
    "the person crossing the street", "the bicycle near the sidewalk", "the car more than 30 metres away",
    "the van parked on the right", "the truck farthest away", "the sky above the buildings",
)
# SegDep's variants whose text cache is warm (text_cache_hit_rate is over their calls).
SEGDEP_WARM_VARIANTS = ("names19", "names100", "queries1", "queries20", "names19_motion", "names19_deployed")
TEXT_CACHE_LOG = "text_cache_log"  # runners' entry holding every call's cache lookups (not a variant)


def segdep_vocabularies(size_small=19, size_large=100):
    """``{"names19": [...], "names100": [...]}``, deterministic: Cityscapes' 19 classes (detectron2's
    builtin metadata), then the other VKITTI2 classes and COCO panoptic's things and stuff in COCO's
    order, cleaned (``canonical_name``; COCO's ``-other`` / ``-merged`` / ``-stuff`` suffixes dropped)
    and unique, up to ``size_large`` names. The 19 are the first 19 of the 100."""
    import re

    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES, _get_builtin_metadata

    from segdep_d2.data.datasets.vkitti2_categories import VKITTI2_CATEGORIES
    from segdep_d2.data.vocabularies import canonical_name

    raw = (list(_get_builtin_metadata("cityscapes")["stuff_classes"]) + [c["name"] for c in VKITTI2_CATEGORIES]
           + [re.sub(r"-(other|merged|stuff)\b", "", c["name"]) for c in COCO_CATEGORIES])
    names = list(dict.fromkeys(canonical_name(n) for n in raw))
    if len(names) < size_large:
        raise ValueError(f"only {len(names)} distinct class names available, {size_large} asked for")
    return {f"names{size_small}": names[:size_small], f"names{size_large}": names[:size_large]}


def _upsample_to(x, size):
    """Bilinear upsampling to ``size`` (as SegDep's own outputs are upsampled)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SeparateNetworks(nn.Module):
    """``--model segdep``'s baseline: what a user stitches by hand instead of SegDep, three networks
    on the same input, each with an image encoder of its own (three backbones in all):

    * a segmentation network: HRNet + the FPN (the same config as SegDep's) + a closed-set head;
    * a depth network: a second HRNet + FPN + a depth head;
    * a CLIP-style open-vocabulary network (LSeg-like): a third HRNet + FPN, pixel embeddings from its
      own projection into the text space (:class:`OpenVocabHead`), scored against its own CLIP text
      tower's class embeddings (a :class:`ClipTextEncoder` with its own prompt cache, warm). No
      text-vision fusion: that is SegDep's addition, so the baseline does strictly less work there.

    Every module is a copy of the SegDep model's (same architecture and weights, so the closed-set and
    depth predictions are identical); the outputs then go through SegDep's own post-processing (crop /
    resize, panoptic regions with per-segment depth, named segments with depth), so both sides produce
    the same results and the difference in time is the architecture's.
    """

    def __init__(self, segdep):
        super().__init__()

        def encoder():
            return nn.Sequential(copy.deepcopy(segdep.backbone), copy.deepcopy(segdep.neck))

        self.seg_encoder, self.seg_head = encoder(), copy.deepcopy(segdep.sem_seg_head)
        self.depth_encoder, self.depth_head = encoder(), copy.deepcopy(segdep.depth_head)
        self.clip_encoder, self.clip_head = encoder(), copy.deepcopy(segdep.open_vocab_head)
        self.text_encoder = copy.deepcopy(segdep.text_encoder)
        self.__dict__["segdep"] = segdep  # pre- / post-processing only; not a submodule (no parameters)

    def forward(self, batched_inputs):
        segdep = self.__dict__["segdep"]
        images = segdep.preprocess_image(batched_inputs)
        x = images.tensor
        size = x.shape[-2:]
        sem = _upsample_to(self.seg_head(self.seg_encoder(x)), size)
        depth = depth_from_logits(_upsample_to(self.depth_head(self.depth_encoder(x)), size),
                                  segdep.depth_output_type, segdep.min_depth, segdep.max_depth)
        pixels = self.clip_head(self.clip_encoder(x))
        open_vocab = []
        for i, inputs in enumerate(batched_inputs):
            scores = OrderedDict()
            for key, names in segdep._vocabularies(inputs).items():
                text = self.text_encoder.class_embeddings(names).to(pixels.device)
                scores[key] = _upsample_to(self.clip_head.logits(pixels[i:i + 1], text), size)[0]
            open_vocab.append(scores)
        return segdep.postprocess(sem, depth, open_vocab, batched_inputs, images.image_sizes)


def _with_own_text_cache(model):
    """``model`` with the same modules and weights, except a text encoder object whose prompt cache
    (and its statistics) is its own (its text tower is the same module): clearing it before every
    cold run leaves the warm variants' cache untouched."""

    encoder = copy.copy(model.text_encoder)
    encoder._cache = OrderedDict()
    encoder.reset_cache_stats()
    clone = copy.copy(model)
    clone._modules = OrderedDict(model._modules)
    clone.text_encoder = encoder
    return clone


def segdep_supports_queries(model):
    """Whether this SegDep answers referring ``queries`` (the referring head)."""
    return hasattr(model, "referring_head") and callable(getattr(model, "answer", None))


def build_segdep_variants(cfg):
    """One SegDep (random weights unless MODEL.WEIGHTS), full inference (``model(inputs)``: closed-set
    logits, depth, open-vocabulary scores for the input's ``class_names`` and every post-processing
    step) per variant:

    * ``names19`` / ``names100``: with the 19 / 100 class names of :func:`segdep_vocabularies`, the
      text cache warm (every prompt it needs was encoded before timing starts);
    * ``names100_cold``: 100 names, the text cache emptied before each call, so each call encodes
      100 names x the prompt templates (the same model and weights, a text encoder object with a cache
      of its own: see :func:`_with_own_text_cache`);
    * ``separate``: :class:`SeparateNetworks` with the 19 names (its text cache warm);
    * ``queries1`` / ``queries20`` (only when the model has the referring head): the 19 names plus the
      first 1 / all 20 of :data:`SEGDEP_QUERIES` (query embeddings cached, as names);
    * ``names19_motion``: the same model with the motion module (``MODEL.SEGDEP.TEMPORAL``; the
      config's own when it has one, else one built from this config with it switched on and every
      shared weight copied), 19 names, each call the next frame of one sequence, so every timed
      call estimates the flow from the stored previous frame, warps and fuses (see
      :func:`_with_motion_module`);
    * ``names19_deployed`` (CPU): names19 with the network exported to ONNX at the input's size and
      run by onnxruntime through :func:`segdep_d2.modeling.deployed.load_deployed` (text embeddings
      from the same encoder and cache), as ``--deployed PATH`` runs it.

    Random weights are calibrated (:func:`~segdep_d2.modeling.export.calibrate_random_weights`: the
    same operations; logits and depth that depend on the network) so that ``deployed_parity``
    compares something. Every call's text-cache lookups (hits / misses, from
    ``ClipTextEncoder.cache_info``) are logged under ``runners[TEXT_CACHE_LOG]`` for
    :func:`segdep_facts`.
    """
    from segdep_d2.modeling.export import calibrate_random_weights

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:  # outputs that depend on the network, as a trained model's: deployed_parity compares something
        calibrate_random_weights(model)
    separate = SeparateNetworks(model).eval()
    cold = _with_own_text_cache(model)
    vocabularies = segdep_vocabularies()
    log: Dict[str, List[Dict[str, int]]] = {}

    def runner(name, network, encoder, extra, clear=False):
        def run(inputs):
            if clear:
                encoder.clear_cache()
            before = encoder.cache_info()
            outputs = network([{**x, **extra} for x in inputs])
            after = encoder.cache_info()
            log.setdefault(name, []).append({k: after[k] - before[k] for k in ("hits", "misses")})
            return outputs
        return run

    names19, names100 = vocabularies["names19"], vocabularies["names100"]
    runners = {
        "names19": runner("names19", model, model.text_encoder, {"class_names": names19}),
        "names100": runner("names100", model, model.text_encoder, {"class_names": names100}),
        "names100_cold": runner("names100_cold", cold, cold.text_encoder, {"class_names": names100}, clear=True),
        "separate": runner("separate", separate, separate.text_encoder, {"class_names": names19}),
    }
    motion = _with_motion_module(cfg, model)
    frames = itertools.count()
    run_motion = runner("names19_motion", motion, motion.text_encoder, {"class_names": names19, "sequence_id": "bench"})
    runners["names19_motion"] = lambda inputs: run_motion([{**x, "frame_index": next(frames)} for x in inputs])
    if segdep_supports_queries(model):
        for q in (1, 20):
            runners[f"queries{q}"] = runner(f"queries{q}", model, model.text_encoder,
                                            {"class_names": names19, "queries": list(SEGDEP_QUERIES[:q])})
    if cfg.MODEL.DEVICE == "cpu":  # onnxruntime's CPU provider; a GPU run times the eager variants
        deployed = runners["segdep_deployed"] = _deployed_runner(cfg, model)
        runners["names19_deployed"] = runner("names19_deployed", deployed, model.text_encoder, {"class_names": names19})
        runners["names19_deployed"].prepare = deployed.prepare  # measure() exports before timing
    # Warm the caches: one call of every warm variant on a small image encodes every prompt (names,
    # templates, the training vocabulary the referring head fuses with, the queries) it will need.
    # (names19_deployed shares names19's encoder and cache; called here it would export a 64x64 graph.)
    small = [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64}]
    with torch.no_grad():
        for name, run in runners.items():
            if name not in ("names100_cold", "names19_deployed", "segdep_deployed"):
                run(small)
    log.clear()
    motion.reset_temporal_state()  # the warm-up frame was another size: the first timed warm-up stores one
    runners[TEXT_CACHE_LOG] = log
    runners["segdep"], runners["separate_networks"] = model, separate  # for segdep_facts (not variants)
    runners["segdep_motion"] = motion
    refined = runners["motion_refinements"] = []  # one entry per motion-head call (a refined frame)
    motion.motion_head.register_forward_hook(lambda *_: refined.append(1))
    runners["vocabularies"] = vocabularies
    return runners


def _with_motion_module(cfg, model):
    """SegDep with the motion module: ``model`` itself when its config has ``MODEL.SEGDEP.TEMPORAL``,
    else a model built from ``cfg`` with it switched on, carrying every weight the two share (the
    motion head and gate keep their initialisation), in eval mode with an empty sequence state."""
    if model.temporal:
        return model
    motion_cfg = cfg.clone()
    motion_cfg.defrost()
    motion_cfg.MODEL.SEGDEP.TEMPORAL = True
    torch.manual_seed(0)
    motion = build_model(motion_cfg).eval()
    missing, unexpected = motion.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith(("motion_head.", "temporal_fusion.")) for k in missing):
        raise RuntimeError(f"the motion-module model does not share SegDep's weights: missing {missing}, "
                           f"unexpected {unexpected}")
    motion.text_encoder = model.text_encoder  # one text tower and cache (warm for names19)
    return motion


def _cache_summary(calls):
    hits, misses = sum(c["hits"] for c in calls), sum(c["misses"] for c in calls)
    return {"calls": len(calls), "hits": hits, "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0}


def segdep_facts(cfg, runners, height, width):
    """Parameters (SegDep's, total and trainable, and the separate networks'), the text cache's
    lookups per variant and ``text_cache_hit_rate`` over SegDep's warm variants (every call after
    the caches were filled, warm-ups included), the names and queries asked."""
    model, separate = runners["segdep"], runners["separate_networks"]
    log = runners[TEXT_CACHE_LOG]
    warm = [c for name in SEGDEP_WARM_VARIANTS for c in log.get(name, [])]
    facts = {
        "params": {"total": sum(p.numel() for p in model.parameters()),
                   "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   "text_encoder": sum(p.numel() for p in model.text_encoder.parameters())},
        "separate_params": {"total": sum(p.numel() for p in separate.parameters())},
        "text_cache": {name: _cache_summary(calls) for name, calls in log.items()},
        "text_cache_hit_rate": _cache_summary(warm)["hit_rate"],
        "class_names": dict(runners["vocabularies"]),
        "prompt_templates": len(model.text_encoder.templates),
    }
    if "queries20" in runners:
        facts["queries"] = list(SEGDEP_QUERIES)
    motion = runners["segdep_motion"]
    facts["motion_calls"] = _cache_summary(log.get("names19_motion", []))["calls"]
    facts["motion_refined_calls"] = len(runners["motion_refinements"])  # every call but the first warm-up
    facts["motion_module_params"] = sum(p.numel() for name, p in motion.named_parameters()
                                        if name.startswith(("motion_head.", "temporal_fusion.")))
    if "segdep_deployed" in runners:  # names19 eager against names19 deployed, outside the cache log
        inputs = [{**x, "class_names": runners["vocabularies"]["names19"]}
                  for x in make_inputs(argparse.Namespace(height=height, width=width))]
        with torch.no_grad():
            eager, deployed = model(inputs)[0], runners["segdep_deployed"](inputs)[0]
        facts["deployed_parity"] = {
            "argmax_agreement": float((eager["sem_seg"].argmax(0) == deployed["sem_seg"].argmax(0)).float().mean()),
            "open_vocab_argmax_agreement": float(
                (eager["open_vocab_seg"].argmax(0) == deployed["open_vocab_seg"].argmax(0)).float().mean()),
            **depth_parity(eager["depth"], deployed["depth"]),
        }
    return facts


def segdep_summary(report, args, height, width):
    """The keys other tools read: ``names100_vs_names19``, ``cold_vs_warm_names100``,
    ``segdep_vs_separate`` (and ``queries20_vs_queries1`` with the referring head) as ratios of
    medians (their paired spread under ``ratio_spread``), issue 12's target and notes."""
    ratios = report["ratios"]
    summary = {key: ratios[key] for key in ("names100_vs_names19", "cold_vs_warm_names100", "segdep_vs_separate",
                                            "queries20_vs_queries1", "queries1_vs_names19", "motion_vs_plain",
                                            "deployed_vs_eager")
               if key in ratios}
    spread = report["ratio_spread"]["names100_vs_names19"]
    summary["targets"] = {
        "names100_vs_names19_max": SEGDEP_TARGET_NAMES_RATIO,
        "names100_vs_names19_met": ratios["names100_vs_names19"] <= SEGDEP_TARGET_NAMES_RATIO,
        # also within the target over most repetitions: the paired ratios' third quartile
        "names100_vs_names19_paired_q3_met": spread["paired_q3"] <= SEGDEP_TARGET_NAMES_RATIO,
        "note": "issue 12: 100 class names <= 1.3x 19 names, text cache warm (ratio of medians)",
    }
    names = {key: len(v) for key, v in report["class_names"].items()}
    notes = [
        f"names19 / names100: SegDep's full inference with {names['names19']} / {names['names100']} class names "
        "(Cityscapes' 19, then VKITTI2 and COCO panoptic names), text cache warm; names100_cold: the cache "
        f"emptied before every call ({names['names100']} names x {report['prompt_templates']} prompt templates "
        "encoded each time)",
        "separate: three networks on the same input, each with its own HRNet + FPN (SegDep's config): "
        "segmentation head; depth head; CLIP-style pixel embeddings scored by its own CLIP text tower (cache "
        "warm, no text-vision fusion), with the 19 names; SegDep's post-processing on the outputs",
        f"text_cache_hit_rate {report['text_cache_hit_rate']:.3f}: lookups of SegDep's warm variants, every "
        "call after the caches were filled (warm-ups included)",
        f"target: names100_vs_names19 <= {SEGDEP_TARGET_NAMES_RATIO} "
        + ("met" if summary["targets"]["names100_vs_names19_met"] else "NOT met")
        + f" ({ratios['names100_vs_names19']:.3f})",
    ]
    notes.append(f"names19_motion: names19 with the motion module ({report['motion_module_params']} parameters: "
                 "flow from the previous frame's features, warp, gated fusion), consecutive frames of one sequence; "
                 "motion_vs_plain = names19_motion / names19")
    if "names19_deployed" in report["latency_ms"]:
        notes.append("names19_deployed: names19 with the network exported to ONNX at this size (text embeddings an "
                     "input, the CLIP tower and its cache outside), run by onnxruntime through load_deployed as "
                     "--deployed runs it; deployed_vs_eager = names19 / names19_deployed (the speed-up); "
                     "differences under deployed_parity")
    if "queries20" in report["latency_ms"]:
        notes.append("queries1 / queries20: names19 plus 1 / 20 referring queries (SEGDEP_QUERIES), "
                     "query embeddings cached")
    else:
        notes.append("queries1 / queries20 not measured: this SegDep has no referring head")
    summary["notes"] = notes
    return summary


register_benchmark(
    "segdep",
    BenchmarkFamily(
        default_config="projects/SegDep/configs/VKITTI2-SegDep/segdep_hrnet32_vkitti2.yaml",
        variants=("names19", "names100", "names100_cold", "separate", "queries1", "queries20", "names19_motion",
                  "names19_deployed"),
        build=build_segdep_variants,
        ratios={
            # eager median / deployed median: the speed-up of deploying (> 1: faster)
            "deployed_vs_eager": ("names19", "names19_deployed"),
            "motion_vs_plain": ("names19_motion", "names19"),
            "names100_vs_names19": ("names100", "names19"),
            "cold_vs_warm_names100": ("names100_cold", "names100"),
            "segdep_vs_separate": ("names19", "separate"),
            "queries20_vs_queries1": ("queries20", "queries1"),
            "queries1_vs_names19": ("queries1", "names19"),
        },
        compared_to_one=("cold_vs_warm_names100", "segdep_vs_separate", "deployed_vs_eager"),
        facts=segdep_facts,
        summarize=segdep_summary,
        memory_variants=("names19", "names100", "separate"),
        default_size=(256, 512),
    ),
)


# ---- DepthCompletion: the network against interpolating the sparse points -----------------------
# One KITTI depth completion frame (the val_selection frames' size, height x width) and issue 14's
# sparse input: a 64-beam LiDAR-like pattern at ~4.5 % of the pixels (velodyne_raw has ~18k points,
# ~4.2 %, on a 352x1216 frame).
DEPTH_COMPLETION_SIZE = (352, 1216)
DEPTH_COMPLETION_SPARSE = {"scan_rows": 64, "density": 0.045, "min_depth": 5.0, "max_depth": 80.0, "seed": 0}
# The semantic-guide variant: depth_completion_kitti_semantic_guide.yaml's settings (a frozen HydraNet,
# 19 Cityscapes classes, their probabilities embedded in 2 channels), random weights.
DEPTH_COMPLETION_GUIDE_CONFIG = "projects/HydraNet/configs/KITTI-HydraNet/hydranet_mbv2_kitti_asymmetric.yaml"
DEPTH_COMPLETION_GUIDE_OPTS = (
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19",
    "MODEL.DEPTH_COMPLETION.NUM_CLASSES", "0",
    "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "guide",
    "MODEL.DEPTH_COMPLETION.SEMANTIC_ENCODING", "embedding",
    "MODEL.DEPTH_COMPLETION.SEMANTIC_CHANNELS", "2",
    "MODEL.DEPTH_COMPLETION.GUIDE_WEIGHTS", "",
)
DEPTH_COMPLETION_NOT_DEPLOYED = "deployed (onnxruntime) not measured: onnxruntime runs on the CPU only here"


def lidar_like_sparse_depth(height, width, seed=0, scan_rows=64, density=0.045, min_depth=5.0, max_depth=80.0):
    """A deterministic LiDAR-like sparse depth map: float32 (H, W) metres, 0 = no point.

    What a 64-beam scanner projected into a KITTI camera looks like: ``scan_rows`` scan lines spread
    evenly over the lower two-thirds of the image (rows H/3 .. H-1; fewer distinct lines when the image
    has fewer rows), each bent by up to 2 rows towards the sides, with a point every few pixels (the
    spacing chosen so that about ``density`` of all pixels hold one), columns jittered by up to a
    quarter of the spacing and 5 % of the returns dropped. Depths: a ground plane (``max_depth`` at the
    top of the scanned band, ``min_depth`` at the bottom, inversely with the row, as a flat road
    projects) with a few nearer upright boxes (cars, walls) in front of it, 1 % noise, clipped to
    [``min_depth``, ``max_depth``]. The same ``seed`` gives the same map.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    top = height // 3
    rows = np.unique(np.round(np.linspace(top, height - 1, scan_rows)).astype(np.int64))
    keep = 0.95  # 5 % dropped returns
    per_row = density * height * width / (len(rows) * keep)
    step = max(width / per_row, 1.0)
    # upright boxes: (first column, last column, top row, depth)
    boxes = []
    for _ in range(8):
        c0 = int(rng.integers(0, width))
        c1 = c0 + int(rng.integers(width // 40 + 1, width // 8 + 2))
        box_top = int(rng.integers(top, top + (height - top) // 2 + 1))
        boxes.append((c0, c1, box_top, float(rng.uniform(min_depth, max_depth / 2))))
    sparse = np.zeros((height, width), np.float32)
    band = max(height - 1 - top, 1)
    for row in rows:
        cols = rng.uniform(0, step) + step * np.arange(int(np.ceil(width / step)))
        cols = cols + rng.uniform(-step / 4, step / 4, cols.shape)
        cols = np.clip(np.round(cols), 0, width - 1).astype(np.int64)
        bend = int(rng.integers(0, 3))
        r = np.clip(row + np.round(bend * ((cols - width / 2) / (width / 2)) ** 2), 0, height - 1).astype(np.int64)
        t = (r - top) / band  # 0 at the top of the band (far), 1 at the bottom (near)
        depth = min_depth * max_depth / (min_depth + (max_depth - min_depth) * np.clip(t, 0.0, 1.0))
        for c0, c1, box_top, box_depth in boxes:
            inside = (cols >= c0) & (cols <= c1) & (r >= box_top)
            depth = np.where(inside, np.minimum(depth, box_depth), depth)
        depth = np.clip(depth * rng.normal(1.0, 0.01, depth.shape), min_depth, max_depth)
        kept = rng.random(cols.shape) < keep
        sparse[r[kept], cols[kept]] = depth[kept]
    return torch.from_numpy(sparse)


def depth_completion_inputs(args, cfg, height, width):
    """One frame: :func:`make_inputs`' random image plus :func:`lidar_like_sparse_depth` (
    :data:`DEPTH_COMPLETION_SPARSE`) and, when the config's model reads ``sem_seg`` (SEMANTIC_INPUT
    "labels"), random labels of its classes."""
    inputs = make_inputs(args, height, width)
    sparse = lidar_like_sparse_depth(height, width, **DEPTH_COMPLETION_SPARSE)
    for x in inputs:
        x["sparse_depth"] = sparse
        if cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT == "labels":
            classes = cfg.MODEL.DEPTH_COMPLETION.NUM_CLASSES or cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
            g = torch.Generator().manual_seed(1)
            x["sem_seg"] = torch.randint(0, classes, (height, width), generator=g)
    return inputs


def _repo_path(path):
    """A config path as given when it exists (relative to the current folder), else relative to this repository."""
    return path if not path or os.path.isfile(path) else os.path.join(REPO_ROOT, path)


def depth_completion_guide_cfg(cfg):
    """``cfg`` with depth_completion_kitti_semantic_guide.yaml's semantic guide (:data:`DEPTH_COMPLETION_GUIDE_OPTS`,
    :data:`DEPTH_COMPLETION_GUIDE_CONFIG` found from this repository), random weights."""
    guided = cfg.clone()
    guided.defrost()
    guided.merge_from_list(list(DEPTH_COMPLETION_GUIDE_OPTS))
    guided.MODEL.DEPTH_COMPLETION.GUIDE_CONFIG = os.path.join(REPO_ROOT, DEPTH_COMPLETION_GUIDE_CONFIG)
    guided.MODEL.WEIGHTS = ""
    return guided


def _fill_runner(fill):
    """A trivial baseline as a variant: ``fill`` (numpy, CPU) on each input's sparse map -> ``depth`` (H, W)."""
    def run(inputs):
        return [{"depth": torch.from_numpy(fill(x["sparse_depth"]))} for x in inputs]
    return run


def _failing(error):
    """A variant that could not be built: its first call raises ``error`` (an optional variant is then
    dropped and the reason recorded under ``unavailable``)."""
    def run(inputs):
        raise error
    return run


def build_depth_completion_variants(cfg):
    """DepthCompletion (random weights unless MODEL.WEIGHTS) against interpolating its sparse input:

    * ``eager``: the config's model in eval mode, ``model(inputs)`` under ``no_grad`` as ``Predictor``
      runs a model: list[dict] (uint8 image + sparse depth) -> normalisation, padding, network,
      crop -> ``depth`` (H, W) metres; random weights are calibrated
      (:func:`~segdep_d2.modeling.export.calibrate_random_weights`: the same operations, outputs that
      depend on the network) so that ``deployed_parity`` compares something;
    * ``eager_semantic_guide`` (when the config has no semantic input of its own): the same config
      with depth_completion_kitti_semantic_guide.yaml's guide (a frozen HydraNet, 19 classes, its
      class probabilities embedded in 2 channels; :func:`depth_completion_guide_cfg`), guide included
      in the time; its own random weights (two more input channels); dropped with the reason when it
      cannot be built;
    * ``nearest_fill`` / ``bilinear_fill``: the evaluation's trivial baselines
      (:func:`segdep_d2.evaluation.nearest_fill` / :func:`~segdep_d2.evaluation.bilinear_fill`: nearest
      measured point; linear on the points' Delaunay triangulation) on the same sparse map, numpy on
      the CPU;
    * ``deployed`` / ``deployed_semantic_guide`` (CPU): ``eager`` / ``eager_semantic_guide`` as users
      deploy them (``tools/export_model.py --format onnx`` at the input's padded size, guide inside the
      graph, opened with :func:`segdep_d2.modeling.deployed.load_deployed`; as panoptic_depthlab's
      ``deployed``).
    """
    from segdep_d2.evaluation.depth_completion import bilinear_fill, nearest_fill
    from segdep_d2.modeling.export import calibrate_random_weights

    if cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT == "guide":  # a guide config of its own: found from any folder
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEPTH_COMPLETION.GUIDE_CONFIG = _repo_path(cfg.MODEL.DEPTH_COMPLETION.GUIDE_CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:  # a fresh build outputs its input fill, in any runtime: deployed_parity would compare nothing
        calibrate_random_weights(model)
    runners = {"eager": model, "nearest_fill": _fill_runner(nearest_fill), "bilinear_fill": _fill_runner(bilinear_fill),
               "depth_completion": model}
    if cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT == "none":
        try:
            torch.manual_seed(0)
            guided = calibrate_random_weights(build_model(depth_completion_guide_cfg(cfg)).eval())
        except Exception as e:  # noqa: BLE001 -- an optional variant: recorded as unavailable with the reason
            runners["eager_semantic_guide"] = _failing(e)
        else:
            runners["eager_semantic_guide"] = runners["semantic_guide_model"] = guided
    if cfg.MODEL.DEVICE == "cpu":  # onnxruntime's CPU provider; a GPU run times the eager variants
        runners["deployed"] = _deployed_runner(cfg, model)
        if "semantic_guide_model" in runners:
            runners["deployed_semantic_guide"] = _deployed_runner(depth_completion_guide_cfg(cfg), guided)
    return runners


def _gflops(module, inputs):
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(module.eval(), inputs)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return flops.total() / 1e9


def depth_completion_facts(cfg, runners, height, width):
    """Parameters and fvcore FLOPs (one multiply-add counted once) of the network at this size (padded
    to its size divisibility: :class:`~segdep_d2.modeling.export.DepthCompletionNetwork` with the class
    maps as input: sparse stem, semantic embedding, encoder, decoder and the predictions the exported
    depth needs; no crop), the same for the semantic-guide variant (its completion
    network with the 19 class maps, plus the guide HydraNet's exported network), and the sparse
    input's facts."""
    from segdep_d2.modeling.export import DepthCompletionNetwork, network_for

    model = runners["depth_completion"]
    d = model.size_divisibility
    ph, pw = -(-height // d) * d, -(-width // d) * d
    device = model.device
    images, sparse = torch.zeros(1, 3, ph, pw, device=device), torch.zeros(1, ph, pw, device=device)
    semantics = None
    if model.semantic_input != "none":
        semantics = torch.zeros(1, model.num_classes, ph, pw, device=device)
    guide_ids = {id(p) for p in model.guide.parameters()} if model.guide is not None else set()
    with torch.no_grad():
        # the completion network's own parameters (a config's own guide, if any, not counted)
        facts = {"params": sum(p.numel() for p in model.parameters() if id(p) not in guide_ids),
                 "gflops": _gflops(DepthCompletionNetwork(model, semantics=None if semantics is None else "probabilities"),
                                   (images, sparse) if semantics is None else (images, sparse, semantics))}
        guided = runners.get("semantic_guide_model")
        if guided is not None:
            guide_params = sum(p.numel() for p in guided.guide.parameters())
            network = _gflops(DepthCompletionNetwork(guided, semantics="probabilities"),
                              (images, sparse, torch.zeros(1, guided.num_classes, ph, pw, device=device)))
            guide = _gflops(network_for(guided.guide), torch.zeros(1, 3, height, width, device=device))
            facts["semantic_guide_params"] = {"total": sum(p.numel() for p in guided.parameters()),
                                              "guide": guide_params}
            facts["semantic_guide_gflops"] = {"total": network + guide, "completion_network": network, "guide": guide}
    s = lidar_like_sparse_depth(height, width, **DEPTH_COMPLETION_SPARSE)
    measured = s > 0
    settings = DEPTH_COMPLETION_SPARSE
    facts["sparse_input"] = {
        "seed": settings["seed"], "scan_rows": settings["scan_rows"], "target_density": settings["density"],
        "depth_range_m": [settings["min_depth"], settings["max_depth"]],
        "points": int(measured.sum()),
        "density": float(measured.float().mean()),
        "rows_with_points": int(measured.any(dim=1).sum()),
        "depth_min_m": float(s[measured].min()), "depth_max_m": float(s[measured].max()),
        "pattern": "LiDAR-like scan lines in the lower two-thirds (tools/benchmark.py lidar_like_sparse_depth)",
    }
    parity = {}
    inputs = depth_completion_inputs(argparse.Namespace(height=height, width=width), cfg, height, width)
    with torch.no_grad():
        for deployed, eager in (("deployed", "eager"), ("deployed_semantic_guide", "eager_semantic_guide")):
            if deployed in runners and eager in runners:
                parity[deployed] = depth_parity(runners[eager](inputs)[0]["depth"],
                                                runners[deployed](inputs)[0]["depth"])
    if parity:
        facts["deployed_parity"] = parity
    return facts


def depth_parity(eager_depth, deployed_depth):
    """How far a deployed depth map is from the eager one: the largest relative and absolute
    differences (metres) over the frame."""
    difference = (deployed_depth - eager_depth).abs()
    return {"max_relative_depth_error": float((difference / eager_depth.abs().clamp(min=1e-6)).max()),
            "max_abs_depth_error_m": float(difference.max())}


def depth_completion_summary(report, args, height, width):
    """The keys other tools read (the ratios of medians ``eager_vs_nearest_fill``,
    ``eager_vs_bilinear_fill``, ``semantic_guide_vs_eager``; their paired spread under ``ratio_spread``)
    and notes."""
    ratios, medians, stats = report["ratios"], report["median_ms"], report["latency_stats_ms"]
    summary = {key: ratios[key] for key in DEPTH_COMPLETION_RATIOS if key in ratios}
    sparse = report["sparse_input"]
    notes = [
        f"eager: {medians['eager']:.1f} ms per {height}x{width} frame (median; IQR {stats['eager']['iqr']:.1f} ms), "
        "model(inputs) in eval mode under no_grad as Predictor runs it (normalisation, padding, network, crop)",
        f"sparse input: {sparse['points']} points ({100 * sparse['density']:.1f} % of the pixels) on "
        f"{sparse['rows_with_points']} rows, {sparse['depth_min_m']:.1f}-{sparse['depth_max_m']:.1f} m, seed "
        f"{sparse['seed']}: a LiDAR-like pattern, not a real scan",
        "nearest_fill / bilinear_fill: the evaluation's trivial baselines (segdep_d2.evaluation.nearest_fill / "
        "bilinear_fill, numpy on the CPU) on the same sparse map; eager_vs_*_fill = eager / fill (how many "
        "times the network costs the interpolation)",
    ]
    if "eager_semantic_guide" in medians:
        notes.append("eager_semantic_guide: depth_completion_kitti_semantic_guide.yaml's setting (a frozen HydraNet "
                     "guide, 19 class probabilities embedded in 2 channels), guide included; semantic_guide_vs_eager "
                     "= eager_semantic_guide / eager")
    elif "eager_semantic_guide" not in report.get("unavailable", {}):
        notes.append("eager_semantic_guide not measured: the config has a semantic input of its own (eager is it)")
    if "deployed" in medians:
        notes.append("deployed / deployed_semantic_guide: the same weights exported to ONNX at this size (guide "
                     "inside the graph), run by onnxruntime through load_deployed as --deployed runs them; "
                     "deployed_vs_eager = eager / deployed (the speed-up); differences under deployed_parity")
    else:
        notes.append(DEPTH_COMPLETION_NOT_DEPLOYED)
    summary["notes"] = notes
    return summary


DEPTH_COMPLETION_RATIOS = ("eager_vs_nearest_fill", "eager_vs_bilinear_fill", "semantic_guide_vs_eager",
                           "deployed_vs_eager", "semantic_guide_deployed_vs_eager")
register_benchmark(
    "depth_completion",
    BenchmarkFamily(
        default_config="projects/DepthCompletion/configs/KITTI-DepthCompletion/depth_completion_kitti.yaml",
        variants=("eager", "eager_semantic_guide", "nearest_fill", "bilinear_fill", "deployed",
                  "deployed_semantic_guide"),
        build=build_depth_completion_variants,
        ratios={
            "eager_vs_nearest_fill": ("eager", "nearest_fill"),
            "eager_vs_bilinear_fill": ("eager", "bilinear_fill"),
            "semantic_guide_vs_eager": ("eager_semantic_guide", "eager"),
            # eager median / deployed median: the speed-up of deploying (> 1: faster)
            "deployed_vs_eager": ("eager", "deployed"),
            "semantic_guide_deployed_vs_eager": ("eager_semantic_guide", "deployed_semantic_guide"),
        },
        compared_to_one=DEPTH_COMPLETION_RATIOS,
        # latency does not depend on the weights; the guide config's output/... weights need not exist
        cfg_overrides=("MODEL.DEPTH_COMPLETION.GUIDE_WEIGHTS", ""),
        optional_variants=("eager_semantic_guide", "deployed_semantic_guide"),
        facts=depth_completion_facts,
        summarize=depth_completion_summary,
        # torch's profiler does not see numpy's allocations (the fills)
        memory_variants=("eager", "eager_semantic_guide"),
        default_size=DEPTH_COMPLETION_SIZE,
        inputs=depth_completion_inputs,
    ),
)


DEFAULT_MODEL = "panoptic_depthlab"
DEFAULT_CONFIG = BENCHMARKS[DEFAULT_MODEL].default_config
VARIANTS = BENCHMARKS[DEFAULT_MODEL].variants


def config_path(args):
    """``--config`` as given (relative to the current folder), else the family's default config,
    relative to this repository whatever the current folder."""
    if getattr(args, "config", None):
        return os.path.abspath(args.config)
    return os.path.join(REPO_ROOT, BENCHMARKS[getattr(args, "model", DEFAULT_MODEL)].default_config)


def setup_cfg(args):
    family = BENCHMARKS[getattr(args, "model", DEFAULT_MODEL)]
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(config_path(args))
    # Latency does not depend on the weights, and the configs' ImageNet/model-zoo URLs cannot be
    # fetched offline: start from random weights unless MODEL.WEIGHTS is given on the command line.
    cfg.merge_from_list(["MODEL.DEVICE", args.device, *family.cfg_overrides, "MODEL.WEIGHTS", ""])
    cfg.merge_from_list(args.opts)
    return cfg


def make_inputs(args, height=None, width=None):
    height, width = height or args.height, width or args.width
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    return [{"image": image, "height": height, "width": width}]


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device):
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        result = fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1000.0, result


def peak_memory_mb(run, inputs, device):
    """Peak memory of one inference above what was allocated before it.

    CUDA: the caching allocator's peak. CPU: the running sum of torch's allocations and frees in
    profiler order (process RSS would mostly show the allocator's reuse, not the model's need).
    """
    with torch.no_grad():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run(inputs)
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(inputs)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    return max(itertools.accumulate(e.self_cpu_memory_usage for e in events), default=0) / 2**20


def spread(values):
    """Median, min, max, first and third quartiles and IQR (q3 - q1) of ``values``.

    Quartiles interpolate linearly between order statistics (``statistics.quantiles(...,
    method="inclusive")``, numpy's default), so min <= q1 <= median <= q3 <= max always.
    """
    values = list(values)
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "q1": q1, "q3": q3,
            "iqr": q3 - q1}


def ratio_spread(numerator, denominator, compared_to_one):
    """A ratio of latencies: the ratio of medians (what to quote) and the spread of the paired
    per-repetition ratios ``numerator[i] / denominator[i]``. For a ratio ``compared_to_one``, also
    whether that spread is narrower than the claimed difference from 1.0: the paired IQR lies
    entirely on the side of 1.0 the ratio of medians is on (never so for a single pair, which has
    no spread to judge by)."""
    paired = [a / b for a, b in zip(numerator, denominator, strict=True)]
    entry = {"ratio_of_medians": statistics.median(numerator) / statistics.median(denominator), "paired": paired,
             **{f"paired_{k}": v for k, v in spread(paired).items()}}
    if compared_to_one:
        r = entry["ratio_of_medians"]
        entry["spread_narrower_than_difference"] = len(paired) > 1 and bool(
            (r > 1 and entry["paired_q1"] > 1) or (r < 1 and entry["paired_q3"] < 1)
        )
    return entry


def measure(args, family, cfg, height, width):
    """One input size: every variant timed interleaved, their spread, ratios and memory."""
    inputs = family.inputs(args, cfg, height, width) if family.inputs is not None else make_inputs(args, height, width)
    runners = family.build(cfg)
    variants = [name for name in family.variants if name in runners]
    for name in variants:  # one-time set-up at this input (an export), never timed
        if hasattr(runners[name], "prepare"):
            runners[name].prepare(inputs)
    latencies = {name: [] for name in variants}
    unavailable = {}
    facts = {}
    for i in range(args.warmup + args.runs):
        for name in list(variants):
            try:
                ms, result = time_call(lambda: runners[name](inputs), args.device)
            except Exception as e:  # noqa: BLE001 -- an optional runtime may fail; say why
                if name not in family.optional_variants or i > 0:
                    raise
                unavailable[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
                variants.remove(name)
                del latencies[name]
                continue
            if i < args.warmup:
                continue
            latencies[name].append(ms)
            if name == family.variants[0] and family.describe is not None:
                for key, value in family.describe(result).items():
                    facts.setdefault(key, []).append(value)
            for step, fn in (family.followups(name, result) if family.followups else {}).items():
                ms, _ = time_call(fn, args.device)
                latencies.setdefault(step, []).append(ms)

    chosen = {}
    for name, candidates in family.fastest_of.items():
        timed = [c for c in candidates if c in latencies]
        if timed:
            chosen[name] = min(timed, key=lambda c: statistics.median(latencies[c]))
            latencies[name] = list(latencies[chosen[name]])
    stats = {name: spread(values) for name, values in latencies.items()}
    ratio_spreads = {
        key: ratio_spread(latencies[num], latencies[den], key in family.compared_to_one)
        for key, (num, den) in family.ratios.items()
        if num in latencies and den in latencies
    }
    warnings = [
        f"{key}: ratio of medians {r['ratio_of_medians']:.3f} but the paired ratios' IQR "
        f"[{r['paired_q1']:.3f}, {r['paired_q3']:.3f}] does not exclude 1.0"
        + (" (a single repetition has no spread)" if args.runs == 1 else "")
        + "; more --runs or a quieter machine"
        for key, r in ratio_spreads.items()
        if r.get("spread_narrower_than_difference") is False
    ]
    report = {
        "latency_ms": latencies,
        "median_ms": {name: s["median"] for name, s in stats.items()},
        "latency_stats_ms": stats,
        **{key: statistics.median(values) for key, values in facts.items()},
        "ratios": {key: r["ratio_of_medians"] for key, r in ratio_spreads.items()},
        "ratio_spread": ratio_spreads,
        "spread_narrower_than_difference": not warnings,
        "warnings": warnings,
    }
    if chosen:
        report["chosen"] = chosen
    streamable = [name for name in family.streamed if name in latencies]
    if streamable:
        fastest = min(streamable, key=lambda name: statistics.median(latencies[name]))
        frames = [time_call(lambda: runners[fastest](inputs), args.device)[0] for _ in range(args.warmup + args.runs)]
        report["stream"] = {"runtime": fastest, "latency_ms": frames[args.warmup:],
                            **spread(frames[args.warmup:])}
    if unavailable:
        report["unavailable"] = unavailable
    if family.facts is not None:
        report.update(family.facts(cfg, runners, height, width))
    if not args.skip_memory:
        measured = family.memory_variants if family.memory_variants is not None else family.variants
        report["peak_memory_mb"] = {
            name: peak_memory_mb(runners[name], inputs, args.device) for name in measured if name in variants
        }
    if family.summarize is not None:
        report.update(family.summarize(report, args, height, width))
    return report


def sizes_to_measure(args):
    """``--sizes`` when given, else ``--height`` x ``--width`` followed by the family's extra sizes."""
    family = BENCHMARKS[args.model]
    if getattr(args, "sizes", None):
        return list(args.sizes)
    first = (args.height, args.width)
    return [first] + [size for size in family.extra_sizes if size != first]


def benchmark(args):
    family = BENCHMARKS[args.model]
    if args.runs is None:
        args.runs = family.default_runs or DEFAULT_RUNS
    args.height = args.height or family.default_size[0]
    args.width = args.width or family.default_size[1]
    if args.runs < 1 or args.warmup < 0:
        raise ValueError(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    sizes = sizes_to_measure(args)
    args.height, args.width = sizes[0]
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args)
    per_size = {f"{h}x{w}": measure(args, family, cfg, h, w) for h, w in sizes}

    config = config_path(args)
    if os.path.commonpath([config, REPO_ROOT]) == REPO_ROOT:
        config = os.path.relpath(config, REPO_ROOT)
    settings = {
        "config": config, "height": args.height, "width": args.width, "runs": args.runs,
        "warmup": args.warmup, "threads": args.threads, "opts": args.opts,
    }
    if len(sizes) > 1:
        settings["sizes"] = [f"{h}x{w}" for h, w in sizes]
    report = {
        "model": args.model,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
        "torch": torch.__version__,
        "settings": settings,
        **per_size[f"{args.height}x{args.width}"],  # the first size's figures at the top level
    }
    if len(sizes) > 1:
        report["sizes"] = per_size
    return report


def parse_sizes(text) -> List[Tuple[int, int]]:
    """``"480x640,375x1242"`` -> ``[(480, 640), (375, 1242)]`` (height x width)."""
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected HxW[,HxW...] (height x width), got {text!r}")
        sizes.append((h, w))
    return sizes


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(BENCHMARKS), help="model family to benchmark")
    parser.add_argument("--config", default=None,
                        help="config file (default: the family's config in this repository, from any folder)")
    parser.add_argument("--height", type=int, default=None, help="input height (default: the family's: 512, hydranet 480, segdep 256, depth_completion 352)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the family's: 1024, hydranet 640, segdep 512, depth_completion 1216)")
    parser.add_argument("--sizes", type=parse_sizes, default=None, metavar="HxW[,HxW...]",
                        help="sizes measured in one run, first reported at the top level (default: --height x "
                             "--width, then the family's extra sizes: hydranet adds 375x1242)")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"interleaved repetitions of every variant (default {DEFAULT_RUNS}; the family's own if set)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    report = benchmark(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    per_size = report.get("sizes", {f"{args.height}x{args.width}": report})
    for size, sized in per_size.items():
        print(f"device: {report['device']}  input {size}, {args.runs} interleaved runs")
        for name, s in sized["latency_stats_ms"].items():
            mem = sized.get("peak_memory_mb", {}).get(name)
            print(
                f"  {name:20s} median {s['median']:9.2f} ms  range {s['min']:9.2f}-{s['max']:9.2f}  IQR {s['iqr']:8.2f}"
                + (f"   peak memory {mem:8.1f} MB" if mem is not None else "")
            )
        for key, r in sized["ratio_spread"].items():
            print(
                f"  {key:22s} ratio of medians {r['ratio_of_medians']:.3f}; paired ratios: range "
                f"{r['paired_min']:.3f}-{r['paired_max']:.3f}, IQR {r['paired_q1']:.3f}-{r['paired_q3']:.3f}"
            )
        for name, why in sized.get("unavailable", {}).items():
            print(f"  {name}: not measured ({why})")
        for line in sized.get("notes", []):
            print(f"  note: {line}")
        for warning in sized["warnings"]:
            print(f"WARNING: {warning}")
    print(f"written: {args.output}")
    return report


if __name__ == "__main__":
    main()
