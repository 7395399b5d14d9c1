#!/usr/bin/env python
"""Label the images of a dataset that lack a label type with a teacher model's predictions
(HydraNet's distillation from asymmetric annotations).

    python tools/generate_pseudo_labels.py --teacher-config C --teacher-weights W \\
        --dataset NAME --task sem_seg|depth [--min-confidence 0.7] [--class-map MAP.json] \\
        --output DIR [KEY VALUE ...]
    python tools/generate_pseudo_labels.py --teacher-config HF_FOLDER \\
        --dataset NAME --task sem_seg [--min-confidence 0.7] [--class-map MAP.json] --output DIR

The teacher is any model detectron2's ``build_model`` makes from C (segdep_d2's, or a detectron2
semantic segmentation model such as ``SemanticSegmentor``), run with detectron2's test-time resize
(``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and outputs at the original size.

Or, with ``--teacher-config`` naming a folder and no ``--teacher-weights``, a Hugging Face SegFormer
checkpoint (``SegformerForSemanticSegmentation.save_pretrained``'s folder, optionally with the
``preprocessor_config.json`` of ``SegformerImageProcessor.save_pretrained``, e.g. the SafeTrip-Q
mit-b2 teacher; sem_seg only). It is read from the local files only (never downloaded; needs the
``transformers`` package), normalised with the processor's mean / std, its shortest edge resized to
the processor's size, and its classes are its ``config.json`` id2label names (matched to the
dataset's by name, or through ``--class-map``). ``KEY VALUE`` pairs such as ``MODEL.DEVICE cpu`` or
``INPUT.MIN_SIZE_TEST 1024`` apply to it too.

Writes ``DIR/sem_seg/<stem>.png`` (uint8 train ids, 255 = ignore, also where the softmax maximum is under
``--min-confidence``) or ``DIR/depth/<stem>.png|.npy`` (the dataset's depth encoding), and
``DIR/manifest.json`` registered as ``NAME_pseudo_<task>``; in a later process (training):

    from segdep_d2.data.pseudo_labels import register_pseudo_labels
    register_pseudo_labels("DIR")        # -> "NAME_pseudo_<task>", for DATASETS.TRAIN

Re-running resumes: finished files are kept, unfinished or undecodable ones are redone. The logic is
``segdep_d2.data.pseudo_labels``; trailing ``KEY VALUE`` pairs override the teacher config.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.utils.logger import setup_logger  # noqa: E402

import segdep_d2  # noqa: E402,F401  (registers datasets and models)
from segdep_d2.data import DEPTH_FORMATS  # noqa: E402
from segdep_d2.data.pseudo_labels import (  # noqa: E402
    PSEUDO_TASKS,
    PseudoLabelError,
    generate_pseudo_labels,
    load_teacher,
    read_class_map,
)

logger = logging.getLogger("segdep_d2.pseudo_labels")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--teacher-config", required=True, metavar="FILE|FOLDER",
        help="the teacher's detectron2 config file, or a Hugging Face SegFormer checkpoint folder (with config.json)",
    )
    parser.add_argument(
        "--teacher-weights", default=None, metavar="FILE",
        help="the teacher's checkpoint: required with a config file, not given with a Hugging Face folder",
    )
    parser.add_argument("--dataset", required=True, help="registered dataset to label, e.g. kitti_depth_train")
    parser.add_argument("--task", required=True, choices=PSEUDO_TASKS, help="the label type to write")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the pseudo-labels and manifest")
    parser.add_argument(
        "--min-confidence", type=float, default=0.7,
        help="sem_seg: pixels whose softmax maximum is below this become ignore (255) (default: 0.7)",
    )
    parser.add_argument(
        "--class-map", metavar="FILE.json", default=None,
        help='sem_seg: {"teacher class": "dataset class" or null}, needed when the teacher was trained on other '
             "classes than the dataset's; unmapped teacher classes become ignore",
    )
    parser.add_argument(
        "--depth-format", default=None, choices=DEPTH_FORMATS,
        help="depth: encoding to write (default: the dataset records' depth_format, else its metadata's, else npy_m)",
    )
    parser.add_argument(
        "--overwrite-existing-labels", action="store_true",
        help="also label images that already have this label type (default: keep their real labels)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo every pseudo-label instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE teacher config overrides")
    return parser


def format_summary(summary, task):
    fraction = summary["confident_fraction"]
    what = "confident (labelled) pixels" if task == "sem_seg" else "pixels with valid depth"
    lines = [
        f"{summary['name']}: {summary['images']} images, {summary['written']} written, "
        f"{summary['already_done']} already done, {summary['skipped_labelled']} skipped (already labelled)",
        f"  mean fraction of {what}: " + ("n/a" if fraction is None else f"{fraction:.3f}"),
    ]
    if summary.get("depth_format"):
        lines.append(f"  depth format: {summary['depth_format']}")
    lines.append(f"  manifest: {summary['manifest']}")
    return "\n".join(lines)


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logger(name="segdep_d2")
    setup_logger(name="detectron2", abbrev_name="d2")  # checkpointer messages
    try:
        summary = run(args)
    except (PseudoLabelError, FileNotFoundError) as e:  # bad input: the message says what is wrong
        parser.exit(2, f"generate_pseudo_labels: error: {e}\n")
    print(format_summary(summary, args.task))
    print("summary: " + json.dumps(summary))
    return summary


def run(args):
    class_map = read_class_map(args.class_map) if args.class_map else None
    cfg, model = load_teacher(args.teacher_config, args.teacher_weights, args.opts)
    return generate_pseudo_labels(
        cfg,
        model,
        args.dataset,
        args.task,
        args.output,
        min_confidence=args.min_confidence,
        class_map=class_map,
        depth_format=args.depth_format,
        overwrite=args.overwrite,
        overwrite_existing_labels=args.overwrite_existing_labels,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
