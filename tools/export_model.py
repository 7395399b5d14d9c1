#!/usr/bin/env python
"""Export a segdep_d2 network for deployment (torch.export, TorchScript or ONNX).

    python tools/export_model.py --config-file C --height 512 --width 1024 --output out/export \\
        MODEL.WEIGHTS path/to/model_final.pth MODEL.DEVICE cpu [--format torch_export|torchscript|onnx]

Writes ``model.pt2`` (``torch.export.load(path).module()``), ``model.ts`` (``torch.jit.load``) or
``model.onnx`` (onnxruntime; open it with ``segdep_d2.modeling.export.load_onnx_model(path, cfg)``,
which refuses a file exported from another config), and ``export.json``: the graph's inputs and
outputs, what post-processing needs, what stays outside the graph and the exported-vs-eager check.
The graph holds normalisation and the network; images go in as (N, 3, H, W) float pixels in
``cfg.INPUT.FORMAT`` (0-255). Per family (``segdep_d2.modeling.export`` has the details):

* PanopticDepthLab: semantic logits, center heatmap, offsets and depth (metres) at HxW (a multiple
  of the size divisibility). Panoptic grouping and per-segment depth stay in Python:
  ``model.postprocess(*outputs, inputs, image_sizes)`` on the exported outputs gives what
  ``model(inputs)`` gives. Its ONNX export has dynamic height / width when every ASPP pools
  globally (configs without a training crop), and is static-size otherwise (the ASPP
  image-pooling kernel is then fixed by the export size).
* HydraNet: semantic logits and depth (metres) at full resolution, the input padded inside the
  graph to a multiple of 32 (any HxW goes in; ``model.postprocess(sem, depth, inputs, [(H, W)])``
  crops the padding). Its ONNX export has dynamic batch, height and width (opset 17).
  ``--outputs labels`` exports the real-time deployment instead: ``sem_seg_labels`` (N, H, W)
  int64, the argmax of the full-resolution logits computed in the graph, and ``depth``; no
  C x H x W logit maps leave the graph (``model.postprocess`` then gives ``sem_seg_labels`` in
  place of ``sem_seg``). The default stays ``--outputs logits``: the same outputs as
  ``model(inputs)``, which evaluators and the demo read.
* DepthCompletion: images + ``sparse_depth`` (N, H, W metres, 0 = no point) (+ ``semantics``, the
  label map, with ``SEMANTIC_INPUT: "labels"``; a ``"guide"`` segmentation model runs inside the
  graph) -> ``depth`` (+ ``confidence_logits`` with ``PREDICT_CONFIDENCE``), padded in the graph;
  ``model.postprocess(depth, confidence_or_None, inputs, [(H, W)])`` crops and clamps.
* SegDep: images + ``text_embeddings`` (C', D; ``model.text_embeddings(names)``: the CLIP text tower
  stays outside the graph) -> closed-set logits, depth, open-vocabulary logits; temporal configs add
  ``prev_features`` / ``has_prev`` inputs and a ``features`` output (the caller keeps the state);
  ``--outputs referring`` adds ``query_embeddings`` -> ``referring_logits`` (batch 1).
  ``segdep_d2.modeling.export.exported_inference`` (or ``OnnxInference``) runs the whole path.

HydraNet's ONNX file gets exact graph rewrites for onnxruntime's CPU kernels
(``segdep_d2.modeling.export.rewrite_onnx_for_cpu``: the decoder stays in onnxruntime's blocked
layout, the 1-channel depth predictor is not padded to 8 outputs, the labels' upsampling and
argmax run channels-last, the 5x5 max-pools are split into 1x5 + 5x1); ``export.json`` lists them under ``onnx.graph_rewrites``, and
``--no-graph-rewrites`` writes the plain torch.onnx graph.

The parity check runs the exported network (for ONNX: onnxruntime on the file as written) against
PyTorch eager on random inputs at the export size and, for ONNX with dynamic height and width, at a
second size (``--check-size``; default about 3/4 of the export size, not a multiple of 32);
networks with other dynamic inputs (SegDep: the vocabulary size, ``has_prev``) get a second set of
those. Per output: ``max_abs_diff_depth`` (target <= 1e-3 m), the label agreement of the semantic
outputs (``argmax_agreement``, ``open_vocab_argmax_agreement``, ``referring_mask_agreement``; target
>= 0.999; for ``--outputs labels`` the file's labels compared exactly with the eager logits' argmax)
and the largest difference of every float output. They are printed (ONNX) and written; a miss exits
with status 1 (the files are still written).

Every shipped config (the walk)::

    python tools/export_model.py --all-configs --size small --output out/export_all [--format onnx ...]

exports every leaf config under ``projects/*/configs`` (each yaml not named ``Base-*``; those are partial
bases) in every format (or the ``--format`` ones, repeatable) at ``--size`` (repeatable): ``small``
(:data:`SMALL_SIZE`, 64x128: a multiple of every family's size divisibility), ``test`` (the config's
natural test size, :func:`natural_test_size`: its test dataset's native frame resized as inference
resizes it, rounded up to the size divisibility; Cityscapes 1024x2048, VKITTI2 / KITTI 384x1248, KITTI
depth completion 352x1216, NYUv2 480x640, Sidewalk 512x928) or ``HxW``. The models are built with
``MODEL.WEIGHTS ""`` and the overrides of :func:`walk_opts` (CPU, no pretrained-weight or data files,
nothing downloaded); random weights are made informative for the parity check first
(:func:`calibrate_random_weights`), and a SegDep trained on referring data also exports its
``--outputs referring`` set. It writes one folder per config / size / format and ``summary.json``: per
config, per size, per format ``ok``, the parity figures, the file size and the seconds, or the error.
"""
import argparse
import glob
import json
import logging
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from segdep_d2.modeling.export import (  # noqa: E402
    FORMATS,
    MAX_ABS_DIFF_DEPTH,
    MIN_ARGMAX_AGREEMENT,
    NETWORKS,
    ONNX_OPSET,
    calibrate_random_weights,
    config_fingerprint,
    export_network_with_parity,
    export_onnx,
    load_onnx_model,
    network_for,
    onnx_dynamic,
    onnx_parity,
    parity_summary,
    save_exported,
    size_divisibility_of,
)
from visualize_depth_panoptic import load_model, setup_cfg  # noqa: E402

logger = logging.getLogger("segdep_d2.export")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_check_size(height, width, divisibility=None):
    """A second size for the dynamic-shape check: about 3/4 of the export size; not a multiple of
    32 for a network that pads itself, else the nearest multiple of ``divisibility``."""
    h, w = (3 * height) // 4, (3 * width) // 4
    if divisibility:
        return max(divisibility, h - h % divisibility), max(divisibility, w - w % divisibility)
    return max(8, h + 5), max(8, w + 7)


def _postprocess_info(model):
    """What post-processing the exported outputs needs (export.json ``postprocess``)."""
    arch = type(model).__name__
    if arch == "PanopticDepthLab":
        return {
            "label_divisor": model.meta.label_divisor,
            "thing_ids": sorted(model.thing_ids),
            "stuff_area": model.stuff_area,
            "center_threshold": model.threshold,
            "nms_kernel": model.nms_kernel,
            "top_k": model.top_k,
        }
    if arch == "DepthCompletion":
        info = {
            "depth_range_m": [model.min_depth, model.max_depth],  # postprocess clamps depth to it
            "size_divisibility": model.size_divisibility,
            "semantic_input": model.semantic_input,
            "semantic_classes": model.num_classes if model.semantic_input != "none" else 0,
            "prefill": model.prefill,
        }
        if model.semantic_input == "labels":
            info["ignore_value"] = model.ignore_value
        if model.predict_confidence:
            info["depth_confidence"] = "sigmoid(confidence_logits)"
        return info
    info = {
        "num_classes": model.sem_seg_head.predictor.out_channels,
        "depth_output_type": model.depth_output_type,
        "depth_range_m": [model.min_depth, model.max_depth],
        "size_divisibility": size_divisibility_of(model),
    }
    if arch == "SegDep":
        encoder = model.text_encoder
        info.update({
            "class_names": list(model.class_names),
            "clip_model": encoder.model_name,
            "text_embed_dim": encoder.embed_dim,
            "prompt_templates": list(encoder.templates),
            "label_divisor": model.label_divisor,
            "thing_ids": sorted(model.thing_ids),
            "min_segment_area": model.min_segment_area,
        })
        if model.temporal:
            info.update({"feature_channels": model.neck.output_shape().channels,
                         "feature_stride": model.neck.output_shape().stride,
                         "temporal_max_frame_gap": model.temporal_max_frame_gap})
    return info


def _outside_graph(model, network):
    """What the exported graph leaves to the caller (export.json ``outside_graph``)."""
    arch = type(model).__name__
    crop = "crop of the padding and resize to the input's height x width: model.postprocess"
    if arch == "PanopticDepthLab":
        return ["padding to the size divisibility (exported_inference pads with the pixel mean)", crop,
                "panoptic grouping (get_panoptic_segmentation) and per-segment depth: model.postprocess"]
    if arch == "HydraNet":
        return [crop]
    if arch == "DepthCompletion":
        outside = [crop + ", with the clamp to the depth range"
                   + (" and sigmoid(confidence_logits)" if "confidence_logits" in network.output_names else ""),
                   "the coarser training predictions (strides 16 to 2): not outputs"]
        if network.semantics == "labels":
            outside.append("the labels' range check: the eager model raises on labels outside [0, K) other than "
                           "ignore_value, the graph counts them as unlabelled")
        return outside
    outside = [
        "the CLIP text tower: text_embeddings = model.text_embeddings(names), once per vocabulary",
        crop + "; closed-set panoptic regions and open-vocabulary named segments with their depth",
    ]
    if network.temporal:
        outside.append("the per-sequence temporal state: which stored frame a frame continues (sequence_id, "
                       "frame_index within TEMPORAL_MAX_FRAME_GAP, same feature size: model.temporal_previous) "
                       "gives prev_features + has_prev; the features output is stored (model.temporal_store)")
    if network.referring:
        outside.append("query_embeddings = model.text_encoder.encode(texts); the answers (mask = logit > 0, score, "
                       "area, depth over the mask): SegDep._referring_answers")
    else:
        outside.append("referring queries: not in this export (--outputs referring adds them)")
    return outside


_INPUT_MEANINGS = {
    "images": "float pixels 0-255 in INPUT.FORMAT",
    "sparse_depth": "float metres, 0 = no point",
    "semantics": "int64 labels, ignore_value = unlabelled (or float class maps)",
    "text_embeddings": "float (C', D) prompt embeddings: model.text_embeddings(names); C' dynamic",
    "prev_features": "float: the previous frame's features output",
    "has_prev": "bool (N,): refine with prev_features",
    "query_embeddings": "float (Q, D): model.text_encoder.encode(queries); Q dynamic",
}


def _inputs_info(network, example):
    return {name: {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""),
                   "meaning": _INPUT_MEANINGS.get(name, "")}
            for name, x in zip(network.input_names, example)}


def _print_parity(fmt, info):
    runtime = "onnxruntime" if fmt == "onnx" else fmt
    for size, p in info["parity"].items():
        line = (f"{runtime} vs eager at {size}: max |depth diff| {p['max_abs_diff_depth']:.2e} m "
                f"(<= {MAX_ABS_DIFF_DEPTH:g})")
        if "argmax_agreement" in p:
            line += f", argmax agreement {100 * p['argmax_agreement']:.3f}% (>= {100 * MIN_ARGMAX_AGREEMENT:g}%)"
        for key in ("open_vocab_argmax_agreement", "referring_mask_agreement"):
            if key in p:
                line += f", {key.replace('_', ' ')} {100 * p[key]:.3f}%"
        print(line)


def export(cfg, height, width, output_dir, fmt="torch_export", check_size=None, outputs="logits", rewrite=None,
           model=None):
    """Export the model of ``cfg`` at ``height`` x ``width``; write the model file and export.json.
    ``outputs``: ``"logits"``, (HydraNet) ``"labels"`` or (SegDep) ``"referring"``; ``rewrite``: ONNX
    graph rewrites (``None``: the family's default, on for HydraNet); ``model``: the model to export
    (eval mode), instead of building it from ``cfg`` and loading ``MODEL.WEIGHTS``."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in NETWORKS:
        raise ValueError(f"export supports {sorted(NETWORKS)}, not {arch!r}")
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; expected one of {sorted(FORMATS)}")
    if model is None:
        model = load_model(cfg)
    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, FORMATS[fmt])
    network = network_for(model, outputs)
    info = {
        "format": fmt,
        "meta_architecture": arch,
        "torch": torch.__version__,
        "weights": cfg.MODEL.WEIGHTS,
        "input": {"shape": [1, 3, height, width], "dtype": "float32", "pixel_format": cfg.INPUT.FORMAT,
                  "range": [0, 255]},
        "inputs": _inputs_info(network, network.example_inputs(height, width)),
        "outputs": list(network.output_names),
        "output_kind": outputs,
        "output_resolution": (
            "input size padded up to a multiple of the size divisibility (full resolution); "
            "model.postprocess crops the padding" if network.pads_input else "input size (a multiple of the size divisibility)"
        ),
        "postprocess": _postprocess_info(model),
        "outside_graph": _outside_graph(model, network),
    }
    thresholds = {"max_abs_diff_depth": MAX_ABS_DIFF_DEPTH, "argmax_agreement": MIN_ARGMAX_AGREEMENT}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        dynamic = onnx_dynamic(model)
        export_onnx(model, cfg, height, width, model_path, dynamic=dynamic, outputs=outputs, rewrite=rewrite)
        sizes = [(height, width)]
        if dynamic:
            divisibility = None if network.pads_input else size_divisibility_of(model)
            sizes.append(tuple(check_size) if check_size else default_check_size(height, width, divisibility))
        onnx_model = load_onnx_model(model_path, cfg, model=model)
        # against the eager logits (a labels file's labels against their argmax)
        parity = onnx_parity(network_for(model, "logits" if outputs == "labels" else outputs), onnx_model, sizes)
        info.update({
            "onnx": {"opset": ONNX_OPSET, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "dynamic_axes": ({"batch": 0, "height": 2, "width": 3} if dynamic else None),
                     # per graph input / output, {axis: name} (JSON keys are strings)
                     "graph_dynamic_axes": ({name: {str(a): n for a, n in axes.items()}
                                             for name, axes in network.dynamic_axes().items()} if dynamic else None),
                     "input_name": "images", "input_names": list(onnx_model.input_names),
                     "graph_rewrites": json.loads(onnx_model.metadata.get("segdep_d2.graph_rewrites", "{}"))},
            "config_fingerprint": config_fingerprint(cfg, outputs),
            "parity": parity,
            **parity_summary(parity),
            "thresholds": thresholds,
        })
    else:
        exported, max_abs_diff, parity = export_network_with_parity(model, height, width, fmt, outputs)
        save_exported(exported, model_path)
        info["max_abs_diff_exported_vs_eager"] = max_abs_diff
        info.update({"config_fingerprint": config_fingerprint(cfg, outputs), "parity": parity,
                     **parity_summary(parity), "thresholds": thresholds})
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    _print_parity(fmt, info)
    print(f"parity {'OK' if info['parity_ok'] else 'FAILED'}; wrote {model_path}")
    return model_path, info


# ---- the walk: every shipped config ------------------------------------------------------------------
SMALL_SIZE = (64, 128)  # a multiple of every family's size divisibility (32; PanopticDepthLab os16: 16 or none)
# The native frame size (H, W) of each dataset family, by the prefix of the config's DATASETS.TEST[0]
# (first match): what the test-time resize starts from (see natural_test_size).
NATIVE_SIZES = (
    ("cityscapes", (1024, 2048)),
    ("kitti_depth_completion_val_selection", (352, 1216)),  # the benchmark's cropped selection
    ("kitti_depth_completion_test", (352, 1216)),
    ("kitti", (375, 1242)),  # KITTI raw (drives differ by a few pixels)
    ("vkitti2", (375, 1242)),
    ("nyuv2", (480, 640)),
    ("sidewalk", (1080, 1920)),  # the ZED's FHD frames
)
# File-valued settings a walk clears: pretrained weights and data files (nothing is read or downloaded).
WALK_CLEARED_KEYS = ("MODEL.WEIGHTS", "MODEL.HYDRANET.BACKBONE_WEIGHTS", "MODEL.HYDRANET.CLASS_WEIGHTS_FILE",
                     "MODEL.SEGDEP.HRNET_WEIGHTS", "MODEL.SEGDEP.CLIP_WEIGHTS", "MODEL.DEPTH_COMPLETION.GUIDE_WEIGHTS")


def leaf_configs(root=REPO_ROOT):
    """Every config under ``root/projects/*/configs`` but the partial ``Base-*.yaml`` bases, sorted."""
    paths = glob.glob(os.path.join(root, "projects", "*", "configs", "**", "*.yaml"), recursive=True)
    return sorted(p for p in paths if not os.path.basename(p).startswith("Base-"))


def _config_value(cfg, key):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def walk_opts(config_file):
    """The overrides a walk builds ``config_file`` with: on the CPU, every weight / data file of
    :data:`WALK_CLEARED_KEYS` cleared (random weights: the pretrained files, a semantic guide's
    checkpoint, HydraNet's training class weights), and a guide config path resolved against the
    repository (configs name it relative to the repository root)."""
    cfg = setup_cfg(config_file)
    opts = ["MODEL.DEVICE", "cpu"]
    for key in WALK_CLEARED_KEYS:
        if _config_value(cfg, key):
            opts += [key, ""]
    guide = _config_value(cfg, "MODEL.DEPTH_COMPLETION.GUIDE_CONFIG")
    if guide and cfg.MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT == "guide" and not os.path.isfile(guide):
        opts += ["MODEL.DEPTH_COMPLETION.GUIDE_CONFIG", os.path.join(REPO_ROOT, guide)]
    return opts


def native_size(cfg):
    """:data:`NATIVE_SIZES`' (H, W) for the config's first test dataset, or None."""
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else ""
    return next((size for prefix, size in NATIVE_SIZES if name.startswith(prefix)), None)


def natural_test_size(cfg, divisibility):
    """A config's natural test size: the native frame of its first test dataset (:data:`NATIVE_SIZES`)
    resized as inference resizes it (``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``;
    MIN_SIZE_TEST x MAX_SIZE_TEST for a dataset not listed), rounded up to a multiple of the size
    divisibility (the padded size the network runs at): Cityscapes 1024x2048, VKITTI2 / KITTI
    384x1248, KITTI depth-completion selection 352x1216, NYUv2 480x640."""
    from detectron2.data.transforms import ResizeShortestEdge

    native = native_size(cfg)
    short, longest = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    if native is None:
        height, width = short, longest
    else:
        height, width = ResizeShortestEdge.get_output_shape(native[0], native[1], short, longest)
    d = max(int(divisibility), 1)
    return -(-height // d) * d, -(-width // d) * d


def _resolve_size(size, cfg, model):
    if size == "small":
        return SMALL_SIZE
    if size == "test":
        return natural_test_size(cfg, size_divisibility_of(model))
    return tuple(size)


def _size_label(size):
    return size if isinstance(size, str) else f"{size[0]}x{size[1]}"


def walk_output_kinds(model, referring=True):
    """The output sets a walk exports: ``"logits"``, and (``referring``) ``"referring"`` for a SegDep
    trained on referring data (its config's DATASETS.TRAIN holds referring queries)."""
    if referring and type(model).__name__ == "SegDep" and model.train_referring:
        return ["logits", "referring"]
    return ["logits"]


def _export_result(export_call, keep_files=True):
    """Run one export; ``ok`` (exported and parity met), the parity figures, the file (removed after
    measuring unless ``keep_files``: a walk's files run to gigabytes) and seconds, or the error."""
    start = time.perf_counter()
    try:
        path, info = export_call()
    except Exception as e:  # one config / format failing must not stop the walk: recorded, reported
        return {"ok": False, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=-4), "seconds": round(time.perf_counter() - start, 2)}
    size_mb = round(os.path.getsize(path) / 2 ** 20, 3)
    if not keep_files:
        os.remove(path)
    return {
        "ok": bool(info["parity_ok"]),
        "parity_ok": bool(info["parity_ok"]),
        "max_abs_diff_depth": info["max_abs_diff_depth"],
        "argmax_agreement": info["argmax_agreement"],
        "agreements": info["agreements"],
        "parity": info["parity"],
        "inputs": list(info["inputs"]),
        "onnx_dynamic_hw": (info["onnx"]["dynamic_axes"] is not None) if "onnx" in info else None,
        "outputs": info["outputs"],
        "file": path if keep_files else None,
        "file_mb": size_mb,
        "seconds": round(time.perf_counter() - start, 2),
    }


def export_config(config_file, sizes=("small",), formats=tuple(FORMATS), output_dir="output/export_all", opts=(),
                  referring=True, keep_files=True):
    """Export one config (built once, with :func:`walk_opts` and ``opts``; random weights calibrated by
    :func:`calibrate_random_weights` when ``MODEL.WEIGHTS`` is empty) at every size of ``sizes``
    (``"small"``, ``"test"`` or (H, W)) in every format, and with ``referring`` for a SegDep trained on
    referring data also its ``"referring"`` output set (keyed ``"<format>/referring"``). Returns the
    config's record: ``{"meta_architecture", "build_seconds", "sizes": {label: {"size": [H, W],
    "formats": {format: result}}}}`` (see :func:`_export_result`; ``keep_files=False`` removes each model
    file once measured, export.json stays), or ``{"error": ...}`` when the config does not build."""
    start = time.perf_counter()
    try:
        cfg = setup_cfg(config_file, [*walk_opts(config_file), *opts])
        torch.manual_seed(0)
        model = load_model(cfg)
        if not cfg.MODEL.WEIGHTS:
            calibrate_random_weights(model)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=-4)}
    record = {"meta_architecture": cfg.MODEL.META_ARCHITECTURE,
              "build_seconds": round(time.perf_counter() - start, 2), "sizes": {}}
    name = os.path.splitext(os.path.relpath(config_file, REPO_ROOT).replace(os.sep, "__"))[0]
    for size in sizes:
        height, width = _resolve_size(size, cfg, model)
        results = {}
        for kind in walk_output_kinds(model, referring):
            for fmt in formats:
                key = fmt if kind == "logits" else f"{fmt}/{kind}"
                folder = os.path.join(output_dir, name, f"{height}x{width}", key.replace("/", "_"))
                results[key] = _export_result(
                    lambda: export(cfg, height, width, folder, fmt, outputs=kind, model=model), keep_files
                )
        record["sizes"][_size_label(size)] = {"size": [height, width], "formats": results}
    return record


def record_failures(key, record, log=False):
    """``"config size format: why"`` for every export of an :func:`export_config` record that failed
    (an error, or the parity missed), and the build error; ``log``: print one line per export."""
    if "error" in record:
        if log:
            print(f"FAIL {key}: does not build: {record['error']}")
        return [f"{key}: does not build: {record['error']}"]
    failures = []
    for label, entry in record["sizes"].items():
        for fmt, result in entry["formats"].items():
            why = result.get("error") or (None if result["ok"] else
                                          f"parity missed (depth {result['max_abs_diff_depth']:.2e} m, "
                                          f"agreements {result['agreements']})")
            if why:
                failures.append(f"{key} {label} {fmt}: {why}")
            if log:
                print(f"{'ok  ' if not why else 'FAIL'} {key} {label} {fmt} ({result['seconds']:.1f} s)"
                      + (f": {why}" if why else ""))
    return failures


def export_all_configs(config_paths=None, sizes=("small",), formats=tuple(FORMATS), output_dir="output/export_all",
                       opts=(), referring=True, keep_files=True):
    """:func:`export_config` for every config of ``config_paths`` (default: :func:`leaf_configs`, every
    leaf config under projects/*/configs; ``referring``, ``keep_files``: as there); writes
    ``output_dir/summary.json`` and returns it:
    ``{"sizes", "formats", "configs": {config (relative to the repository): record}, "failures":
    ["config size format: why", ...], "seconds"}``."""
    config_paths = leaf_configs() if config_paths is None else list(config_paths)
    start = time.perf_counter()
    configs, failures = {}, []
    for path in config_paths:
        key = os.path.relpath(os.path.abspath(path), REPO_ROOT)
        record = export_config(path, sizes, formats, output_dir, opts, referring, keep_files)
        configs[key] = record
        failures += record_failures(key, record, log=True)
    summary = {"sizes": [_size_label(s) for s in sizes], "formats": list(formats), "configs": configs,
               "failures": failures, "seconds": round(time.perf_counter() - start, 1)}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 357x487; got {text!r}")
    return h, w


def _walk_size(text):
    return text if text in ("test", "small") else _size(text)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="path to config file (one export)")
    parser.add_argument("--height", type=int, help="input height the network is exported at")
    parser.add_argument("--width", type=int, help="input width the network is exported at")
    parser.add_argument("--format", action="append", choices=sorted(FORMATS),
                        help="torch.export (default), TorchScript or ONNX; with --all-configs repeatable "
                             "(default: all three)")
    parser.add_argument("--check-size", type=_size, default=None, metavar="HxW",
                        help="ONNX with dynamic H/W: the second size checked (default ~3/4 of the export size)")
    parser.add_argument("--outputs", default="logits", choices=("logits", "labels", "referring"),
                        help="logits (default: what model(inputs) gives); HydraNet: labels, the per-pixel "
                             "argmax in the graph + depth (the real-time deployment); SegDep: referring, "
                             "logits + the referring head's mask logits for query embeddings")
    parser.add_argument("--no-graph-rewrites", action="store_true",
                        help="ONNX: write the plain torch.onnx graph, without the exact rewrites for onnxruntime's CPU kernels")
    parser.add_argument("--all-configs", action="store_true",
                        help="export every leaf config under projects/*/configs (random weights); "
                             "writes summary.json")
    parser.add_argument("--size", action="append", type=_walk_size, metavar="test|small|HxW",
                        help="--all-configs: the size(s) (default: small)")
    parser.add_argument("--output", required=True, help="folder for the model file and export.json")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logger(name="segdep_d2")
    if args.all_configs:
        summary = export_all_configs(None, args.size or ["small"], args.format or list(FORMATS), args.output, args.opts)
        print(f"{len(summary['configs'])} configs, {len(summary['failures'])} failures; "
              f"wrote {os.path.join(args.output, 'summary.json')}")
        if summary["failures"]:
            sys.exit(1)
        return summary
    if not args.config_file or args.height is None or args.width is None:
        parser.error("--config-file, --height and --width are required (or --all-configs)")
    if args.format and len(args.format) > 1:
        parser.error("one --format per export (several only with --all-configs)")
    fmt = args.format[0] if args.format else "torch_export"
    _, info = export(setup_cfg(args.config_file, args.opts), args.height, args.width, args.output, fmt,
                     args.check_size, args.outputs, False if args.no_graph_rewrites else None)
    if info.get("parity_ok") is False:
        sys.exit(1)
    return info


if __name__ == "__main__":
    main()
