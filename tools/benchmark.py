#!/usr/bin/env python
"""Speed and memory of PanopticDepthLab against what a user would otherwise run.

In one run, same backbone, same input size, same machine:

* ``panoptic_depthlab``: our model, full inference (panoptic post-processing + per-segment depth);
* ``panoptic_deeplab``: detectron2's stock Panoptic-DeepLab built from the same config (the cost
  of the depth branch is the difference);
* ``two_networks``: stock Panoptic-DeepLab plus a separate depth network with the same backbone
  and the same depth decoder, then per-segment depth (stitching two models by hand);
* ``segment_depths``: the per-segment depth step alone, on our model's output.

Variants are timed interleaved (A, B, C, A, B, C, ...) so that machine drift hits them equally;
the ratios of medians are what to quote. Peak memory is measured once per variant (see
:func:`peak_memory_mb`).

    python tools/benchmark.py --model panoptic_depthlab --config C --height 512 --width 1024 \
        --runs 10 --output output/benchmark/panoptic_depthlab.json
"""
import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
from segdep_d2.modeling import build_depth_head  # noqa: E402

DEFAULT_CONFIG = "projects/PanopticDepthLab/configs/Cityscapes-PanopticDepth/panoptic_depthlab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024.yaml"
VARIANTS = ("panoptic_depthlab", "panoptic_deeplab", "two_networks")


class DepthNetwork(nn.Module):
    """The separate monocular depth network of the two-network baseline: the same backbone and
    the same depth decoder as PanopticDepthLab, with weights of its own."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.depth_head = build_depth_head(cfg, self.backbone.output_shape())
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.size_divisibility = max(cfg.MODEL.PANOPTIC_DEEPLAB.SIZE_DIVISIBILITY, self.backbone.size_divisibility)

    def forward(self, batched_inputs):
        images = [(x["image"].to(self.pixel_mean.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.size_divisibility)
        depth, _ = self.depth_head(self.backbone(images.tensor))
        return [{"depth": d[0, : s[0], : s[1]]} for d, s in zip(depth, images.image_sizes)]


def setup_cfg(args):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(args.config)
    # Latency does not depend on the weights, and the configs' ImageNet/model-zoo URLs cannot be
    # fetched offline: start from random weights unless MODEL.WEIGHTS is given on the command line.
    cfg.merge_from_list(["MODEL.DEVICE", args.device, "MODEL.PANOPTIC_DEEPLAB.PREDICT_INSTANCES", "False", "MODEL.WEIGHTS", ""])
    cfg.merge_from_list(args.opts)
    return cfg


def build_variants(cfg):
    """Callables running one inference of each variant on a list of inputs.

    All variants share the same weights (ours, loaded from MODEL.WEIGHTS when set): the stock
    model gets our backbone and panoptic heads, the depth network our backbone and depth head.
    Identical predictions make the panoptic post-processing cost identical, so the difference in
    time is the architecture's alone.
    """
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(ours).load(cfg.MODEL.WEIGHTS)
    stock_cfg = cfg.clone()
    stock_cfg.defrost()
    stock_cfg.MODEL.META_ARCHITECTURE = "PanopticDeepLab"
    stock = build_model(stock_cfg).eval()
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


def benchmark(args):
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args)
    inputs = make_inputs(args)
    runners = build_variants(cfg)
    latencies = {name: [] for name in (*VARIANTS, "segment_depths")}
    num_segments = []
    for i in range(args.warmup + args.runs):
        for name in VARIANTS:
            ms, result = time_call(lambda: runners[name](inputs), args.device)
            if i < args.warmup:
                continue
            latencies[name].append(ms)
            if name == "panoptic_depthlab":
                ids, segments = result[0]["panoptic_seg"]
                num_segments.append(len(segments))
                ms, _ = time_call(lambda: segment_depths(ids, result[0]["depth"]), args.device)
                latencies["segment_depths"].append(ms)

    median = {name: statistics.median(values) for name, values in latencies.items()}
    report = {
        "model": args.model,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
        "torch": torch.__version__,
        "settings": {
            "config": args.config, "height": args.height, "width": args.width, "runs": args.runs,
            "warmup": args.warmup, "threads": args.threads, "opts": args.opts,
        },
        "latency_ms": latencies,
        "median_ms": median,
        "segments_per_image": statistics.median(num_segments),
        "ratios": {
            "vs_panoptic_deeplab": median["panoptic_depthlab"] / median["panoptic_deeplab"],
            "vs_two_networks": median["panoptic_depthlab"] / median["two_networks"],
            "segment_depth_fraction": median["segment_depths"] / median["panoptic_depthlab"],
        },
    }
    if not args.skip_memory:
        report["peak_memory_mb"] = {name: peak_memory_mb(runners[name], inputs, args.device) for name in VARIANTS}
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="panoptic_depthlab", choices=["panoptic_depthlab"])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--output", required=True, help="JSON file to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    report = benchmark(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    r, m = report["ratios"], report["median_ms"]
    print(f"device: {report['device']}  input {args.height}x{args.width}, {args.runs} runs")
    for name in (*VARIANTS, "segment_depths"):
        mem = report.get("peak_memory_mb", {}).get(name)
        print(f"  {name:18s} median {m[name]:9.2f} ms" + (f"   peak memory {mem:8.1f} MB" if mem is not None else ""))
    print(
        f"PanopticDepthLab / Panoptic-DeepLab = {r['vs_panoptic_deeplab']:.3f}x; "
        f"/ two networks = {r['vs_two_networks']:.3f}x; per-segment depth = {100 * r['segment_depth_fraction']:.2f}% of forward"
    )
    print(f"written: {args.output}")
    return report


if __name__ == "__main__":
    main()
