#!/usr/bin/env python
"""Speed and memory of PanopticDepthLab against what a user would otherwise run.

In one run, same backbone, same input size, same machine:

* ``panoptic_depthlab``: our model, full inference (panoptic post-processing + per-segment depth);
* ``panoptic_deeplab``: detectron2's stock Panoptic-DeepLab built from the same config (the cost
  of the depth branch is the difference);
* ``two_networks``: stock Panoptic-DeepLab plus a separate depth network with the same backbone
  and the same depth decoder, then per-segment depth (stitching two models by hand);
* ``segment_depths``: the per-segment depth step alone, on our model's output.

Variants are timed interleaved (A, B, C, A, B, C, ...) so that machine drift hits them equally,
and repetition i of every variant forms a pair. Each variant gets its median, min, max and
interquartile range; each ratio its ratio of medians (what to quote) plus the range and IQR of the
per-repetition paired ratios. When a ratio's paired IQR does not exclude 1.0 (the spread is not
narrower than the difference claimed), a warning is printed and recorded in the JSON. Peak memory is
measured once per variant (see :func:`peak_memory_mb`).

``--model`` picks a benchmark family from :data:`BENCHMARKS` (a model family adds its entry with
:func:`register_benchmark`). ``--config`` defaults to the family's config in this repository, found
from the script's location (the tool runs from any folder).

    python tools/benchmark.py --model panoptic_depthlab --height 512 --width 1024 \
        --output output/benchmark/panoptic_depthlab.json
"""
import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

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
    """

    default_config: str  # relative to the repository root
    variants: Tuple[str, ...]
    build: Callable
    ratios: Dict[str, Tuple[str, str]]
    compared_to_one: Tuple[str, ...] = ()
    followups: Optional[Callable] = None
    describe: Optional[Callable] = None
    cfg_overrides: Tuple[str, ...] = ()


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
    model gets our backbone and panoptic heads, the depth network our backbone and depth head.
    Identical predictions make the panoptic post-processing cost identical, so the difference in
    time is the architecture's alone. The stock model's ASPPs get the same size-adaptive image
    pooling as ours (:func:`segdep_d2.modeling.adapt_aspp_pooling`), so every size compares like
    for like.
    """
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(ours).load(cfg.MODEL.WEIGHTS)
    stock_cfg = cfg.clone()
    stock_cfg.defrost()
    stock_cfg.MODEL.META_ARCHITECTURE = "PanopticDeepLab"
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

    return {"panoptic_depthlab": ours, "panoptic_deeplab": stock, "two_networks": two_networks}


build_variants = build_panoptic_depthlab_variants  # the name earlier versions exported


def _segment_depth_step(variant, outputs):
    if variant != "panoptic_depthlab":
        return {}
    ids, _ = outputs[0]["panoptic_seg"]
    return {"segment_depths": lambda: segment_depths(ids, outputs[0]["depth"])}


register_benchmark(
    "panoptic_depthlab",
    BenchmarkFamily(
        default_config="projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/"
        "panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml",
        variants=("panoptic_depthlab", "panoptic_deeplab", "two_networks"),
        build=build_panoptic_depthlab_variants,
        ratios={
            "vs_panoptic_deeplab": ("panoptic_depthlab", "panoptic_deeplab"),
            "vs_two_networks": ("panoptic_depthlab", "two_networks"),
            "segment_depth_fraction": ("segment_depths", "panoptic_depthlab"),
        },
        compared_to_one=("vs_panoptic_deeplab", "vs_two_networks"),
        followups=_segment_depth_step,
        describe=lambda outputs: {"segments_per_image": len(outputs[0]["panoptic_seg"][1])},
        cfg_overrides=("MODEL.PANOPTIC_DEEPLAB.PREDICT_INSTANCES", "False"),
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


def make_inputs(args):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8, generator=g)
    return [{"image": image, "height": args.height, "width": args.width}]


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


def benchmark(args):
    if args.runs < 1 or args.warmup < 0:
        raise ValueError(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    family = BENCHMARKS[args.model]
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args)
    inputs = make_inputs(args)
    runners = family.build(cfg)
    latencies = {name: [] for name in family.variants}
    facts = {}
    for i in range(args.warmup + args.runs):
        for name in family.variants:
            ms, result = time_call(lambda: runners[name](inputs), args.device)
            if i < args.warmup:
                continue
            latencies[name].append(ms)
            if name == family.variants[0] and family.describe is not None:
                for key, value in family.describe(result).items():
                    facts.setdefault(key, []).append(value)
            for step, fn in (family.followups(name, result) if family.followups else {}).items():
                ms, _ = time_call(fn, args.device)
                latencies.setdefault(step, []).append(ms)

    stats = {name: spread(values) for name, values in latencies.items()}
    ratio_spreads = {
        key: ratio_spread(latencies[num], latencies[den], key in family.compared_to_one)
        for key, (num, den) in family.ratios.items()
    }
    warnings = [
        f"{key}: ratio of medians {r['ratio_of_medians']:.3f} but the paired ratios' IQR "
        f"[{r['paired_q1']:.3f}, {r['paired_q3']:.3f}] does not exclude 1.0"
        + (" (a single repetition has no spread)" if args.runs == 1 else "")
        + "; more --runs or a quieter machine"
        for key, r in ratio_spreads.items()
        if r.get("spread_narrower_than_difference") is False
    ]
    config = config_path(args)
    if os.path.commonpath([config, REPO_ROOT]) == REPO_ROOT:
        config = os.path.relpath(config, REPO_ROOT)
    report = {
        "model": args.model,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
        "torch": torch.__version__,
        "settings": {
            "config": config, "height": args.height, "width": args.width, "runs": args.runs,
            "warmup": args.warmup, "threads": args.threads, "opts": args.opts,
        },
        "latency_ms": latencies,
        "median_ms": {name: s["median"] for name, s in stats.items()},
        "latency_stats_ms": stats,
        **{key: statistics.median(values) for key, values in facts.items()},
        "ratios": {key: r["ratio_of_medians"] for key, r in ratio_spreads.items()},
        "ratio_spread": ratio_spreads,
        "spread_narrower_than_difference": not warnings,
        "warnings": warnings,
    }
    if not args.skip_memory:
        report["peak_memory_mb"] = {name: peak_memory_mb(runners[name], inputs, args.device) for name in family.variants}
    return report


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(BENCHMARKS), help="model family to benchmark")
    parser.add_argument("--config", default=None,
                        help="config file (default: the family's config in this repository, from any folder)")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="interleaved repetitions of every variant")
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
    print(f"device: {report['device']}  input {args.height}x{args.width}, {args.runs} interleaved runs")
    for name, s in report["latency_stats_ms"].items():
        mem = report.get("peak_memory_mb", {}).get(name)
        print(
            f"  {name:18s} median {s['median']:9.2f} ms  range {s['min']:9.2f}-{s['max']:9.2f}  IQR {s['iqr']:8.2f}"
            + (f"   peak memory {mem:8.1f} MB" if mem is not None else "")
        )
    for key, r in report["ratio_spread"].items():
        print(
            f"  {key:22s} ratio of medians {r['ratio_of_medians']:.3f}; paired ratios: range "
            f"{r['paired_min']:.3f}-{r['paired_max']:.3f}, IQR {r['paired_q1']:.3f}-{r['paired_q3']:.3f}"
        )
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")
    print(f"written: {args.output}")
    return report


if __name__ == "__main__":
    main()
