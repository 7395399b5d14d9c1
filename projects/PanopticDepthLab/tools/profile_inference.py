#!/usr/bin/env python
"""Where a PanopticDepthLab forward spends its time, at two input sizes (torch.profiler).

    python projects/PanopticDepthLab/tools/profile_inference.py \\
        --output benchmarks/panoptic_depthlab_profile_cpu.json [--sizes 512x1024,1024x2048] [--threads 2]

Profiles one inference (after a warm-up call) of our model and of detectron2's stock
Panoptic-DeepLab built from the same config (same weights; its ASPPs as detectron2 builds them),
random weights unless MODEL.WEIGHTS is given, and writes per model and size:

* ``stages_ms``: normalisation + backbone, each decoder (semantic, instance, depth) and the
  post-processing (``model.postprocess``: panoptic grouping and per-segment depth);
* ``top_ops``: the operators with the most self time (ms, calls) and ``top_ops_by_shape`` the same
  per input shape (which convolution, which pooling);
* ``scaling``: per stage and per operator, time at the larger size / time at the smaller one, beside
  the pixel ratio: what grows faster than the pixels.

The numbers are from one profiled call each on a shared machine: read them as shares and ratios,
not as latencies (``tools/benchmark.py`` measures those, interleaved, with their spread).
"""
import argparse
import json
import os
import platform
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from benchmark import BENCHMARKS, parse_sizes  # noqa: E402

STAGES = ("backbone", "semantic_decoder", "instance_decoder", "depth_decoder", "postprocess")
TOP = 12


def staged_inference(model, inputs, depth=True):
    """``model(inputs)`` for one image, stage by stage, each under a ``record_function``."""
    x = inputs[0]["image"].to(model.device).float()[None]
    h, w = x.shape[-2:]
    with record_function("backbone"):
        features = model.backbone((x - model.pixel_mean) / model.pixel_std)
    with record_function("semantic_decoder"):
        sem, _ = model.sem_seg_head(features)
    with record_function("instance_decoder"):
        center, offset, _, _ = model.ins_embed_head(features)
    if depth:
        with record_function("depth_decoder"):
            depth_map, _ = model.depth_head(features)
        with record_function("postprocess"):
            return model.postprocess(sem, center, offset, depth_map, inputs, [(h, w)])
    with record_function("postprocess"):  # detectron2's PanopticDeepLab.forward, after its decoders
        from detectron2.projects.panoptic_deeplab.post_processing import get_panoptic_segmentation

        return get_panoptic_segmentation(
            sem[0].argmax(dim=0, keepdim=True), center[0], offset[0], thing_ids=set(model.meta.thing_dataset_id_to_contiguous_id.values()),
            label_divisor=model.meta.label_divisor, stuff_area=model.stuff_area, void_label=-1,
            threshold=model.threshold, nms_kernel=model.nms_kernel, top_k=model.top_k)


def profile_once(model, inputs, depth=True):
    with torch.no_grad():
        staged_inference(model, inputs, depth)  # warm-up: allocations, oneDNN primitive creation
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            staged_inference(model, inputs, depth)
    events = prof.key_averages()
    stages = {e.key: e.cpu_time_total / 1e3 for e in events if e.key in STAGES}
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3, e.count) for e in events if e.key not in STAGES),
                 key=lambda t: -t[1])
    by_shape = sorted(
        ((e.key, [list(s) for s in e.input_shapes[:2]], e.self_cpu_time_total / 1e3, e.count)
         for e in prof.key_averages(group_by_input_shape=True) if e.key not in STAGES),
        key=lambda t: -t[2])
    total = sum(stages.values())
    return {
        "stages_ms": stages,
        "total_ms": total,
        "stage_share": {k: v / total for k, v in stages.items()},
        "ops_ms": {k: {"self_ms": ms, "calls": n} for k, ms, n in ops},
        "top_ops": [{"op": k, "self_ms": ms, "calls": n} for k, ms, n in ops[:TOP]],
        "top_ops_by_shape": [{"op": k, "input_shapes": s, "self_ms": ms, "calls": n} for k, s, ms, n in by_shape[:TOP]],
    }


def scaling(small, large, pixel_ratio, min_ms=20.0):
    """Time at the larger size / time at the smaller, per stage and per operator above ``min_ms``."""
    out = {"pixel_ratio": pixel_ratio,
           "stages": {k: large["stages_ms"][k] / small["stages_ms"][k] for k in small["stages_ms"] if k in large["stages_ms"]}}
    ops = {}
    for k, v in large["ops_ms"].items():
        if v["self_ms"] >= min_ms and k in small["ops_ms"] and small["ops_ms"][k]["self_ms"] > 0:
            ops[k] = v["self_ms"] / small["ops_ms"][k]["self_ms"]
    out["ops"] = dict(sorted(ops.items(), key=lambda kv: -large["ops_ms"][kv[0]]["self_ms"]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="config (default: the Cityscapes R52 config, as tools/benchmark.py)")
    parser.add_argument("--sizes", type=parse_sizes, default=[(512, 1024), (1024, 2048)], metavar="HxW,HxW")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import benchmark

    bench_args = argparse.Namespace(model="panoptic_depthlab", config=args.config, device="cpu", opts=args.opts)
    cfg = benchmark.setup_cfg(bench_args)
    runners = BENCHMARKS["panoptic_depthlab"].build(cfg)
    models = {"panoptic_depthlab": runners["panoptic_depthlab"], "panoptic_deeplab_stock": runners["panoptic_deeplab_stock"]}
    report = {"config": os.path.relpath(benchmark.config_path(bench_args), REPO_ROOT), "threads": args.threads,
              "device": f"cpu ({platform.processor() or platform.machine()}, {args.threads} threads)",
              "torch": torch.__version__, "sizes": [f"{h}x{w}" for h, w in args.sizes], "profiles": {}}
    for name, model in models.items():
        per_size = {}
        for h, w in args.sizes:
            inputs = benchmark.make_inputs(argparse.Namespace(height=h, width=w))
            try:
                per_size[f"{h}x{w}"] = profile_once(model, inputs, depth=name == "panoptic_depthlab")
            except ValueError as e:  # detectron2's ASPP below the crop size
                per_size[f"{h}x{w}"] = {"error": str(e)}
            print(f"{name} {h}x{w}: " + json.dumps(per_size[f"{h}x{w}"].get("stages_ms", per_size[f"{h}x{w}"])))
        report["profiles"][name] = per_size
        if len(args.sizes) > 1:
            (h0, w0), (h1, w1) = args.sizes[0], args.sizes[-1]
            small, large = per_size[f"{h0}x{w0}"], per_size[f"{h1}x{w1}"]
            if "error" not in small and "error" not in large:
                report["profiles"][name]["scaling"] = scaling(small, large, (h1 * w1) / (h0 * w0))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"written: {args.output}")
    return report


if __name__ == "__main__":
    main()
