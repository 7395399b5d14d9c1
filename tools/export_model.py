#!/usr/bin/env python
"""Export a PanopticDepthLab network for deployment (torch.export or TorchScript).

    python tools/export_model.py --config-file C --height 512 --width 1024 --output out/export \\
        MODEL.WEIGHTS path/to/model_final.pth MODEL.DEVICE cpu [--format torch_export|torchscript]

Writes ``model.pt2`` (``torch.export.load(path).module()``) or ``model.ts`` (``torch.jit.load``):
normalisation, backbone and the three decoders at HxW; input (1, 3, H, W) float pixels in
``cfg.INPUT.FORMAT``, outputs semantic logits, center heatmap, offsets and depth in metres. And
``export.json``: input size and format, output names, what post-processing needs (label divisor,
thing ids, thresholds) and the exported-vs-eager check. Panoptic grouping and per-segment depth
stay in Python: ``model.postprocess(*outputs, inputs, image_sizes)`` on the exported outputs gives
what ``model(inputs)`` gives.
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

from segdep_d2.modeling.export import FORMATS, OUTPUT_NAMES, export_panoptic_depthlab, save_exported  # noqa: E402
from visualize_depth_panoptic import load_model, setup_cfg  # noqa: E402

logger = logging.getLogger("segdep_d2.export")


def export(cfg, height, width, output_dir, fmt="torch_export"):
    """Export the model of ``cfg`` at ``height`` x ``width``; write the model file and export.json."""
    if cfg.MODEL.META_ARCHITECTURE != "PanopticDepthLab":
        raise ValueError(f"export supports PanopticDepthLab, not {cfg.MODEL.META_ARCHITECTURE!r}")
    model = load_model(cfg)
    exported, max_abs_diff = export_panoptic_depthlab(model, height, width, fmt)
    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, FORMATS[fmt])
    save_exported(exported, model_path)
    info = {
        "format": fmt,
        "torch": torch.__version__,
        "weights": cfg.MODEL.WEIGHTS,
        "input": {"shape": [1, 3, height, width], "dtype": "float32", "pixel_format": cfg.INPUT.FORMAT,
                  "range": [0, 255]},
        "outputs": list(OUTPUT_NAMES),
        "postprocess": {
            "label_divisor": model.meta.label_divisor,
            "thing_ids": sorted(model.thing_ids),
            "stuff_area": model.stuff_area,
            "center_threshold": model.threshold,
            "nms_kernel": model.nms_kernel,
            "top_k": model.top_k,
        },
        "max_abs_diff_exported_vs_eager": max_abs_diff,
    }
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    logger.info("Wrote %s; exported vs eager max |diff|: %s", model_path, max_abs_diff)
    return model_path, info


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--height", type=int, required=True, help="input height the network is exported at")
    parser.add_argument("--width", type=int, required=True, help="input width the network is exported at")
    parser.add_argument("--format", default="torch_export", choices=sorted(FORMATS), help="torch.export (default) or TorchScript")
    parser.add_argument("--output", required=True, help="folder for the model file and export.json")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="segdep_d2")
    export(setup_cfg(args.config_file, args.opts), args.height, args.width, args.output, args.format)


if __name__ == "__main__":
    main()
