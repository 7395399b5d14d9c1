#!/usr/bin/env python
"""Run a depth-panoptic model on images and draw what it sees: every segment labelled
"class 12.3 m", the dense depth with a colour bar, and (where ground truth exists) the AbsRel error.

    # image files, folders or glob patterns
    python tools/visualize_depth_panoptic.py --config-file C --input a.png dir/ "frames/*.jpg" \\
        --output out/vis MODEL.WEIGHTS path/to/model_final.pth
    # the first N samples of a registered dataset (adds the error panel where GT depth exists)
    python tools/visualize_depth_panoptic.py --config-file C --dataset vkitti2_val --num-images 8 \\
        --output out/vis MODEL.WEIGHTS path/to/model_final.pth

Writes per image ``<stem>_panoptic.png``, ``<stem>_depth.png``, ``<stem>_error.png`` (GT only)
and ``<stem>_panel.png`` (input, panoptic, depth and error side by side). Class names and colours
come from ``MetadataCatalog.get(cfg.DATASETS.TEST[0])``, the classes the model was trained on.
"""
import argparse
import glob
import logging
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from PIL import Image  # noqa: E402

import segdep_d2  # noqa: E402,F401  (registers datasets and models)
from segdep_d2 import add_segdep_config  # noqa: E402
from segdep_d2.data import DepthPanopticDatasetMapper, read_depth  # noqa: E402
from segdep_d2.utils.visualizer import (  # noqa: E402
    DepthPanopticVisualizer,
    depth_panel,
    display_depth_range,
    error_panel,
    side_by_side,
)

logger = logging.getLogger("segdep_d2.visualize")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_NUM_DATASET_IMAGES = 8


def setup_cfg(config_file, opts=()):
    """Config as tools/train_net.py builds it, frozen."""
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def load_model(cfg):
    """The model of ``cfg`` in eval mode, with ``cfg.MODEL.WEIGHTS`` loaded when set."""
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: visualising a randomly initialised model")
    return model.eval()


def expand_inputs(paths):
    """Image files from files, folders (their images, sorted) and glob patterns, in order."""
    files = []
    for path in paths:
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            files += sorted(
                os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(path):
            files.append(path)
        else:
            matches = sorted(glob.glob(path))
            if not matches:
                raise FileNotFoundError(f"--input {path!r}: no such file, folder or glob match")
            files += [m for m in matches if m.lower().endswith(IMAGE_EXTENSIONS)]
    return [{"file_name": f} for f in files]


def _predictor_input(cfg, dataset_dict, augmentation):
    """DefaultPredictor's preprocessing: resize the shortest edge, keep the original size as
    ``height`` / ``width`` so the outputs come back at the input resolution."""
    image = utils.read_image(dataset_dict["file_name"], format=cfg.INPUT.FORMAT)
    height, width = image.shape[:2]
    resized = augmentation.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    return {"image": tensor, "height": height, "width": width}


def _stem(dataset_dict, used):
    """A file-name stem, unique within this run: the dataset ``image_id`` or the file stem."""
    if "image_id" in dataset_dict:
        stem = str(dataset_dict["image_id"])
    else:
        stem = os.path.splitext(os.path.basename(dataset_dict["file_name"]))[0]
    stem = re.sub(r"[^\w.-]+", "_", stem)
    unique, k = stem, 1
    while unique in used:
        unique, k = f"{stem}_{k}", k + 1
    used.add(unique)
    return unique


def _save(image, path):
    Image.fromarray(image).save(path)
    return path


def render(image_rgb, output, metadata, gt_depth=None, depth_range=None):
    """Images for one prediction: ``{"panoptic", "depth", ["error"], "panel"}`` -> RGB uint8."""
    lo, hi = depth_range or display_depth_range(metadata)
    ids, segments_info = output["panoptic_seg"]
    visualizer = DepthPanopticVisualizer(image_rgb, metadata, near=lo, far=hi)
    images = {"panoptic": visualizer.draw_panoptic_depth(ids.cpu(), segments_info).get_image()}
    depth = output["depth"].detach().cpu().numpy()
    images["depth"] = depth_panel(depth, lo, hi)
    if gt_depth is not None:
        # error only where GT is valid for the metrics too (metadata depth_range: e.g. VKITTI2 sky
        # is stored as 655.35 m and is no measurement).
        gt_lo, gt_hi = metadata.get("depth_range", (0.0, float("inf")))
        images["error"] = error_panel(depth, gt_depth, gt_lo, gt_hi)
    panels = [image_rgb] + list(images.values())
    images["panel"] = side_by_side(panels, max_columns=2)
    return images


def visualize(cfg, model, inputs, output_dir, *, mapper=None, metadata=None, depth_range=None):
    """Run ``model`` on each input and write its pictures to ``output_dir``.

    Args:
        inputs (list[dict]): detectron2 dataset dicts; only ``file_name`` is required. A dict with
            ``depth_file_name`` (+ ``depth_format``) also gets an error panel.
        mapper: callable dataset dict -> model input (e.g. ``DepthPanopticDatasetMapper(cfg,
            False)`` for dataset samples); by default DefaultPredictor-style resizing.
        metadata: class names / colours / ``depth_range``; default ``cfg.DATASETS.TEST[0]``'s.
        depth_range: (near, far) metres of the depth colours; default from the metadata.

    Returns:
        list[str]: the paths written, in order.
    """
    if metadata is None:
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    augmentation = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    os.makedirs(output_dir, exist_ok=True)
    written, used = [], set()
    for dataset_dict in inputs:
        model_input = mapper(dataset_dict) if mapper else _predictor_input(cfg, dataset_dict, augmentation)
        with torch.no_grad():
            output = model([model_input])[0]
        image_rgb = utils.read_image(dataset_dict["file_name"], format="RGB")
        gt_depth = read_depth(dataset_dict) if "depth_file_name" in dataset_dict else None
        stem = _stem(dataset_dict, used)
        for kind, image in render(image_rgb, output, metadata, gt_depth, depth_range).items():
            written.append(_save(image, os.path.join(output_dir, f"{stem}_{kind}.png")))
        logger.info(f"{dataset_dict['file_name']} -> {os.path.join(output_dir, stem)}_*.png")
    return written


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    source.add_argument("--dataset", help="a registered dataset name, e.g. vkitti2_val")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument(
        "--num-images", type=int, default=None,
        help=f"at most this many images (default: all files; {DEFAULT_NUM_DATASET_IMAGES} dataset samples)",
    )
    parser.add_argument(
        "--depth-range", type=float, nargs=2, default=None, metavar=("NEAR", "FAR"),
        help="metres of the colour-map ends (default: from the dataset's depth_range)",
    )
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="segdep_d2")
    setup_logger(name="detectron2", abbrev_name="d2")  # checkpointer messages
    cfg = setup_cfg(args.config_file, args.opts)
    model = load_model(cfg)
    if args.dataset:
        inputs = DatasetCatalog.get(args.dataset)[: args.num_images or DEFAULT_NUM_DATASET_IMAGES]
        mapper = DepthPanopticDatasetMapper(cfg, is_train=False)
    else:
        inputs = expand_inputs(args.input)[: args.num_images]
        mapper = None
    if not inputs:
        raise SystemExit("no input images")
    written = visualize(cfg, model, inputs, args.output, mapper=mapper, depth_range=args.depth_range)
    logger.info(f"wrote {len(written)} files to {args.output}")
    return written


if __name__ == "__main__":
    main()
