#!/usr/bin/env python
"""Run a model of any family on images and draw what it sees: every segment (or, without panoptic
output, every semantic region) labelled "class 12.3 m", the dense depth with a colour bar, and
(where ground truth exists) the AbsRel error.

    # image files, folders or glob patterns
    python tools/visualize_depth_panoptic.py --config-file C --input a.png dir/ "frames/*.jpg" \\
        --output out/vis MODEL.WEIGHTS path/to/model_final.pth
    # the first N samples of a registered dataset (adds the error panel where GT depth exists)
    python tools/visualize_depth_panoptic.py --config-file C --dataset vkitti2_val --num-images 8 \\
        --output out/vis MODEL.WEIGHTS path/to/model_final.pth

    # a depth-completion model also needs the sparse depth of each image (matched by file stem, else
    # by order; decoded as --sparse-depth-format, default kitti_png256); --dataset reads the records' own
    python tools/visualize_depth_panoptic.py --config-file C --input images/ --sparse-depth velodyne_raw/ \
        --output out/vis MODEL.WEIGHTS path/to/model_final.pth

    # the deployed model instead of the eager one: a tools/export_model.py file or folder
    python tools/visualize_depth_panoptic.py --config-file C --dataset vkitti2_val --output out/vis \
        --deployed out/export/model.onnx

Writes per image ``<stem>_panoptic.png`` (``<stem>_sem_seg.png`` for a model without panoptic
output, e.g. HydraNet), ``<stem>_depth.png``, ``<stem>_error.png`` (GT only) and ``<stem>_panel.png``
(input, overlay, depth and error side by side). A depth-completion model (no segmentation) gives
``<stem>_points.png`` (its sparse input points on the image, in the depth panel's colours) instead
of the overlay, ``<stem>_confidence.png`` where it predicts ``depth_confidence``, and a panel of
points | depth | error | confidence in one row. The drawing is
:func:`segdep_d2.engine.inference.render`. Class names and colours come from
``MetadataCatalog.get(cfg.DATASETS.TEST[0])``, the classes the model was trained on.
For videos and frames-per-second figures see ``tools/demo.py --input / --video-input``.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from PIL import Image  # noqa: E402

import segdep_d2  # noqa: E402,F401  (registers datasets and models)
from segdep_d2 import add_segdep_config  # noqa: E402
from segdep_d2.data import DepthPanopticDatasetMapper, read_depth  # noqa: E402
from segdep_d2.data.depth_io import DEPTH_FORMATS  # noqa: E402
from segdep_d2.data.mappers.depth_panoptic_mapper import read_sparse_input  # noqa: E402
from segdep_d2.engine.inference import IMAGE_EXTENSIONS, Predictor, image_files, render, unique_stem  # noqa: E402
from segdep_d2.modeling.meta_arch import reads_sparse_depth  # noqa: E402

logger = logging.getLogger("segdep_d2.visualize")

DEFAULT_NUM_DATASET_IMAGES = 8
# --sparse-depth-format: the encodings read from the file alone (the disparity ones need a camera file)
SPARSE_DEPTH_FORMATS = tuple(f for f in DEPTH_FORMATS if f not in ("cityscapes_disparity", "zed_disp16"))
SPARSE_DEPTH_EXTENSIONS = IMAGE_EXTENSIONS + (".npy",)


def setup_cfg(config_file, opts=()):
    """Config as tools/train_net.py builds it, frozen."""
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        # detectron2's default device is cuda; on a CPU-only machine these inference tools run
        # on the CPU instead of failing deep in torch.
        logger.warning("MODEL.DEVICE is %s but CUDA is not available: running on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
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
    """Dataset dicts (``file_name``) of the images in files, folders and glob patterns, in order
    (:func:`segdep_d2.engine.inference.image_files`: a missing path raises ``FileNotFoundError``)."""
    return [{"file_name": f} for f in image_files(paths)]


def attach_sparse_depth(inputs, paths, depth_format="kitti_png256"):
    """Give each input dict its sparse depth file (``sparse_depth_file_name`` + ``sparse_depth_format``)
    from files, folders and glob patterns (PNG or ``.npy``): matched by file stem when every input's
    stem names exactly one sparse file, else by order when the counts agree. Raises ``ValueError``
    otherwise (naming an input without a match)."""
    files = image_files(paths, extensions=SPARSE_DEPTH_EXTENSIONS)
    stem = lambda p: os.path.splitext(os.path.basename(p))[0]  # noqa: E731
    by_stem = {}
    for f in files:
        by_stem.setdefault(stem(f), []).append(f)
    if all(len(by_stem.get(stem(d["file_name"]), ())) == 1 for d in inputs):
        matched = [by_stem[stem(d["file_name"])][0] for d in inputs]
    elif len(files) == len(inputs):
        matched = files
    else:
        missing = next(d["file_name"] for d in inputs if len(by_stem.get(stem(d["file_name"]), ())) != 1)
        raise ValueError(
            f"--sparse-depth: {len(files)} files for {len(inputs)} images, and {missing!r} has no sparse depth "
            "file of the same stem; give one file per image, in the images' order or with their file stems"
        )
    return [dict(d, sparse_depth_file_name=f, sparse_depth_format=depth_format) for d, f in zip(inputs, matched)]


def _stem(dataset_dict, used):
    """A file-name stem, unique within this run: the dataset ``image_id`` or the file stem."""
    if "image_id" in dataset_dict:
        return unique_stem(dataset_dict["image_id"], used)
    return unique_stem(os.path.splitext(os.path.basename(dataset_dict["file_name"]))[0], used)


def _save(image, path):
    Image.fromarray(image).save(path)
    return path


def visualize(cfg, model, inputs, output_dir, *, mapper=None, metadata=None, depth_range=None):
    """Run ``model`` on each input and write its pictures (:func:`render`) to ``output_dir``.

    Args:
        inputs (list[dict]): detectron2 dataset dicts; only ``file_name`` is required. A dict with
            ``depth_file_name`` (+ ``depth_format``) also gets an error panel. For a depth-completion
            model (``reads_sparse_depth(cfg)``) each needs its sparse input: ``sparse_depth_file_name``
            (+ ``sparse_depth_format``), or points sampled from ``depth_file_name`` when
            ``INPUT.SPARSE_DEPTH.NUM_SAMPLES`` > 0 (the evaluation's fixed points, as the mapper's).
        mapper: callable dataset dict -> model input (e.g. ``DepthPanopticDatasetMapper(cfg,
            False)`` for dataset samples); by default DefaultPredictor-style resizing.
        metadata: class names / colours / ``depth_range``; default ``cfg.DATASETS.TEST[0]``'s.
        depth_range: (near, far) metres of the depth colours; default from the metadata.

    Returns:
        list[str]: the paths written, in order.
    """
    if metadata is None:
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    predictor = Predictor(cfg, model=model)  # DefaultPredictor's resizing, outputs at the original size
    completion = reads_sparse_depth(cfg)
    os.makedirs(output_dir, exist_ok=True)
    written, used = [], set()
    for dataset_dict in inputs:
        image_rgb = utils.read_image(dataset_dict["file_name"], format="RGB")
        sparse = None
        if completion:
            # the points the model sees, at the image's size (the mapper / predictor scatter them
            # through the resize); a file given with the record wins over sampling the ground truth
            samples = 0 if "sparse_depth_file_name" in dataset_dict else cfg.INPUT.SPARSE_DEPTH.NUM_SAMPLES
            sparse = read_sparse_input(dataset_dict, samples, False, None, image_rgb.shape[:2])
        if mapper:
            model_input = mapper(dataset_dict)
        else:
            model_input = predictor.model_input(image_rgb, "RGB", sparse_depth=sparse)
        with torch.no_grad():
            output = model([model_input])[0]
        gt_depth = read_depth(dataset_dict) if "depth_file_name" in dataset_dict else None
        stem = _stem(dataset_dict, used)
        for kind, image in render(image_rgb, output, metadata, gt_depth, depth_range, sparse_depth=sparse).items():
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
        "--sparse-depth", nargs="+", default=None, metavar="PATH",
        help="with --input and a depth-completion model: the images' sparse depth (files, folders or glob "
        "patterns; matched to the images by file stem, else by order)",
    )
    parser.add_argument(
        "--sparse-depth-format", default="kitti_png256", choices=SPARSE_DEPTH_FORMATS,
        help="encoding of the --sparse-depth files (segdep_d2.data.depth_io; default kitti_png256: uint16 PNG, "
        "metres * 256, 0 = no point)",
    )
    parser.add_argument(
        "--depth-range", type=float, nargs=2, default=None, metavar=("NEAR", "FAR"),
        help="metres of the colour-map ends (default: from the dataset's depth_range)",
    )
    parser.add_argument(
        "--deployed", default=None, metavar="PATH",
        help="run this export of the config instead of the eager model: model.onnx (onnxruntime), model.pt2 or "
             "model.ts written by tools/export_model.py, or its output folder (MODEL.WEIGHTS is then not read)",
    )
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logger(name="segdep_d2")
    setup_logger(name="detectron2", abbrev_name="d2")  # checkpointer messages
    cfg = setup_cfg(args.config_file, args.opts)
    completion = reads_sparse_depth(cfg)
    if args.sparse_depth and (args.dataset or not completion):
        parser.error(
            "--sparse-depth is for --input images with a depth-completion model"
            + (" (--dataset reads each record's own sparse depth)" if args.dataset else
               f" ({cfg.MODEL.META_ARCHITECTURE} takes no sparse depth)")
        )
    if args.input and completion and not args.sparse_depth:
        parser.error(
            f"{cfg.MODEL.META_ARCHITECTURE} is a depth-completion model: it needs a sparse depth input for each "
            "image; give --sparse-depth PATH... (one file per --input image, matched by file stem or order) "
            "or use --dataset NAME (a dataset with sparse depth)"
        )
    if args.dataset:
        inputs = DatasetCatalog.get(args.dataset)[: args.num_images or DEFAULT_NUM_DATASET_IMAGES]
        mapper = DepthPanopticDatasetMapper(cfg, is_train=False)
    else:
        inputs = expand_inputs(args.input)
        mapper = None
        if args.sparse_depth:  # matched before --num-images cuts: by order, the n-th file is the n-th image's
            try:
                inputs = attach_sparse_depth(inputs, args.sparse_depth, args.sparse_depth_format)
            except (FileNotFoundError, ValueError) as e:
                parser.error(str(e))
        inputs = inputs[: args.num_images]
    if not inputs:
        raise SystemExit("no input images")
    if args.deployed:
        from segdep_d2.modeling.deployed import load_deployed

        model = load_deployed(args.deployed, cfg)
    else:
        model = load_model(cfg)
    written = visualize(cfg, model, inputs, args.output, mapper=mapper, depth_range=args.depth_range)
    logger.info(f"wrote {len(written)} files to {args.output}")
    return written


if __name__ == "__main__":
    main()
