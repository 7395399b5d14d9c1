#!/usr/bin/env python
"""Export a segdep_d2 network for deployment (torch.export, TorchScript or ONNX).

    python tools/export_model.py --config-file C --height 512 --width 1024 --output out/export \\
        MODEL.WEIGHTS path/to/model_final.pth MODEL.DEVICE cpu [--format torch_export|torchscript|onnx]

Writes ``model.pt2`` (``torch.export.load(path).module()``), ``model.ts`` (``torch.jit.load``) or
``model.onnx`` (onnxruntime; open it with ``segdep_d2.modeling.export.load_onnx_model(path, cfg)``,
which refuses a file exported from another config), and ``export.json``: input size and format,
output names, what post-processing needs and the exported-vs-eager check. The graph holds
normalisation and the network; input (1, 3, H, W) float pixels in ``cfg.INPUT.FORMAT`` (0-255).

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

HydraNet's ONNX file gets exact graph rewrites for onnxruntime's CPU kernels
(``segdep_d2.modeling.export.rewrite_onnx_for_cpu``: the decoder stays in onnxruntime's blocked
layout, the 1-channel depth predictor is not padded to 8 outputs, the labels' upsampling and
argmax run channels-last, the 5x5 max-pools are split into 1x5 + 5x1); ``export.json`` lists them under ``onnx.graph_rewrites``, and
``--no-graph-rewrites`` writes the plain torch.onnx graph.

For ONNX the check runs onnxruntime (the file as written) against PyTorch eager at the export
size and, when the height and width are dynamic, at a second size (``--check-size``; default about
3/4 of the export size, not a multiple of 32): ``max_abs_diff_depth`` (target <= 1e-3 m) and
``argmax_agreement`` (target >= 0.999; for ``--outputs labels`` the file's labels compared exactly
with the eager logits' argmax) are printed and written; a miss exits with status 1 (the files are
still written).
"""
import argparse
import json
import logging
import os
import sys

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
    config_fingerprint,
    export_network,
    export_onnx,
    load_onnx_model,
    network_for,
    onnx_parity,
    save_exported,
)
from visualize_depth_panoptic import load_model, setup_cfg  # noqa: E402

logger = logging.getLogger("segdep_d2.export")

def onnx_dynamic(model):
    """Whether the ONNX export gets dynamic height / width. HydraNet: always. PanopticDepthLab:
    when every ASPP pools globally (configs without a training crop); an ASPP with a fixed
    image-pooling kernel (cropped training, :class:`ImagePooling2d`) is traced with the kernel of
    the export size, so the export is static-size there."""
    if type(model).__name__ == "HydraNet":
        return True
    from segdep_d2.modeling import ImagePooling2d

    return not any(isinstance(m, ImagePooling2d) for m in model.modules())


def default_check_size(height, width, divisibility=None):
    """A second size for the dynamic-shape check: about 3/4 of the export size; not a multiple of
    32 for a network that pads itself, else the nearest multiple of ``divisibility``."""
    h, w = (3 * height) // 4, (3 * width) // 4
    if divisibility:
        return max(divisibility, h - h % divisibility), max(divisibility, w - w % divisibility)
    return max(8, h + 5), max(8, w + 7)


def _postprocess_info(model):
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
    return {
        "num_classes": model.sem_seg_head.predictor.out_channels,
        "depth_output_type": model.depth_output_type,
        "depth_range_m": [model.min_depth, model.max_depth],
        "size_divisibility": model._size_divisibility(),
    }


def export(cfg, height, width, output_dir, fmt="torch_export", check_size=None, outputs="logits", rewrite=None):
    """Export the model of ``cfg`` at ``height`` x ``width``; write the model file and export.json.
    ``outputs``: ``"logits"`` or (HydraNet) ``"labels"``; ``rewrite``: ONNX graph rewrites (``None``:
    the family's default, on for HydraNet)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in NETWORKS:
        raise ValueError(f"export supports {sorted(NETWORKS)}, not {arch!r}")
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; expected one of {sorted(FORMATS)}")
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
        "outputs": list(network.output_names),
        "output_kind": outputs,
        "output_resolution": (
            "input size padded up to a multiple of the size divisibility (full resolution); "
            "model.postprocess crops the padding" if network.pads_input else "input size (a multiple of the size divisibility)"
        ),
        "postprocess": _postprocess_info(model),
    }
    if fmt == "onnx":
        import onnx
        import onnxruntime

        dynamic = onnx_dynamic(model)
        export_onnx(model, cfg, height, width, model_path, dynamic=dynamic, outputs=outputs, rewrite=rewrite)
        props = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}
        sizes = [(height, width)]
        if dynamic:
            divisibility = None if network.pads_input else model._size_divisibility()
            sizes.append(tuple(check_size) if check_size else default_check_size(height, width, divisibility))
        onnx_model = load_onnx_model(model_path, cfg, model=model)
        parity = onnx_parity(network_for(model), onnx_model, sizes)  # against the eager logits
        max_diff = max(p["max_abs_diff_depth"] for p in parity.values())
        agreement = min(p["argmax_agreement"] for p in parity.values())
        info.update({
            "onnx": {"opset": ONNX_OPSET, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "dynamic_axes": ({"batch": 0, "height": 2, "width": 3} if dynamic else None),
                     "input_name": "images",
                     "graph_rewrites": json.loads(props.get("segdep_d2.graph_rewrites", "{}"))},
            "config_fingerprint": config_fingerprint(cfg, outputs),
            "parity": parity,
            "max_abs_diff_depth": max_diff,
            "argmax_agreement": agreement,
            "thresholds": {"max_abs_diff_depth": MAX_ABS_DIFF_DEPTH, "argmax_agreement": MIN_ARGMAX_AGREEMENT},
            "parity_ok": bool(max_diff <= MAX_ABS_DIFF_DEPTH and agreement >= MIN_ARGMAX_AGREEMENT),
        })
    else:
        exported, max_abs_diff = export_network(model, height, width, fmt, outputs)
        save_exported(exported, model_path)
        info["max_abs_diff_exported_vs_eager"] = max_abs_diff
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    if fmt == "onnx":
        for size, p in info["parity"].items():
            print(f"onnxruntime vs eager at {size}: max |depth diff| {p['max_abs_diff_depth']:.2e} m "
                  f"(<= {MAX_ABS_DIFF_DEPTH:g}), argmax agreement {100 * p['argmax_agreement']:.3f}% "
                  f"(>= {100 * MIN_ARGMAX_AGREEMENT:g}%)")
        print(f"parity {'OK' if info['parity_ok'] else 'FAILED'}; wrote {model_path}")
    else:
        logger.info("Wrote %s; exported vs eager max |diff|: %s", model_path, info["max_abs_diff_exported_vs_eager"])
    return model_path, info


def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 357x487; got {text!r}")
    return h, w


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--height", type=int, required=True, help="input height the network is exported at")
    parser.add_argument("--width", type=int, required=True, help="input width the network is exported at")
    parser.add_argument("--format", default="torch_export", choices=sorted(FORMATS),
                        help="torch.export (default), TorchScript or ONNX")
    parser.add_argument("--check-size", type=_size, default=None, metavar="HxW",
                        help="ONNX with dynamic H/W: the second size checked (default ~3/4 of the export size)")
    parser.add_argument("--outputs", default="logits", choices=("logits", "labels"),
                        help="logits (default: what model(inputs) gives) or, HydraNet, labels: the per-pixel "
                             "argmax in the graph + depth (the real-time deployment)")
    parser.add_argument("--no-graph-rewrites", action="store_true",
                        help="ONNX: write the plain torch.onnx graph, without the exact rewrites for onnxruntime's CPU kernels")
    parser.add_argument("--output", required=True, help="folder for the model file and export.json")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="segdep_d2")
    _, info = export(setup_cfg(args.config_file, args.opts), args.height, args.width, args.output, args.format,
                     args.check_size, args.outputs, False if args.no_graph_rewrites else None)
    if info.get("parity_ok") is False:
        sys.exit(1)
    return info


if __name__ == "__main__":
    main()
