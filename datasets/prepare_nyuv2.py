#!/usr/bin/env python
"""Convert NYU Depth v2's labelled .mat (MATLAB v7.3 / HDF5) into PNG images, 40-class label maps and
millimetre depth PNGs, once, for the names ``nyuv2_train`` (795 frames) and ``nyuv2_test`` (654).

    DETECTRON2_DATASETS=/path/to/datasets python datasets/prepare_nyuv2.py [--workers 8]

reads, from ``$DETECTRON2_DATASETS/nyuv2/`` unless given otherwise,

    nyu_depth_v2_labeled.mat   the official labelled frames (images, depths in metres, 894-class labels)
    classMapping40.mat         894 -> 40 classes (Gupta et al.), or --mapping a .npy / .txt of 895
                               integers (index = 894-class id, value = 1..40, 0 = void; index 0 holds 0)
    splits.mat                 trainNdxs / testNdxs (1-based), or --splits a .json
                               {"train": [...], "test": [...]} or a .txt of "<train|test> <index>" lines

and writes ``$DETECTRON2_DATASETS/nyuv2/``:

    images/<stem>.png          RGB (stem = the 1-based frame index, 0001 .. 1449)
    sem_seg/<stem>.png         uint8 train ids 0..39 (NYU-40 class - 1), 255 = void
    depth/<stem>.png           uint16 millimetres, 0 = no depth (depth_format "nyu_mm")
    nyuv2_{train,test}.txt     the stems of each split

Re-running it converts only what is missing (an interrupted run leaves no half-written file under a
final name). This script is a thin command line over
``segdep_d2.data.datasets.nyuv2.prepare_nyuv2``.
"""
import argparse
import os
import sys


def _import_nyuv2():
    try:
        from segdep_d2.data.datasets import nyuv2
    except ImportError:  # run from a source checkout without `pip install -e .`
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from segdep_d2.data.datasets import nyuv2
    return nyuv2


def parse_args(argv=None):
    root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "nyuv2")
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default=root,
        help="where to write, and where the inputs are looked for by default (default: $DETECTRON2_DATASETS/nyuv2)",
    )
    parser.add_argument("--mat", default=None, help="the labelled .mat (default: <output>/nyu_depth_v2_labeled.mat)")
    parser.add_argument(
        "--mapping", default=None,
        help="894 -> 40 class mapping: classMapping40.mat, or .npy / .txt (default: <output>/classMapping40.mat)",
    )
    parser.add_argument(
        "--splits", default=None, help="train / test split: splits.mat, .json or .txt (default: <output>/splits.mat)"
    )
    parser.add_argument(
        "--workers", type=int, default=max((os.cpu_count() or 1) // 2, 1),
        help="processes converting frames in parallel (default: half the CPUs)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo frames that are already converted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    nyuv2 = _import_nyuv2()
    try:
        summary = nyuv2.prepare_nyuv2(
            args.mat or os.path.join(args.output, nyuv2.MAT_NAME),
            args.mapping or os.path.join(args.output, nyuv2.MAPPING_NAME),
            args.splits or os.path.join(args.output, nyuv2.SPLITS_NAME),
            args.output,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, nyuv2.NYUv2FormatError) as e:  # a wrong or missing input: say which
        sys.exit(f"prepare_nyuv2: {e}")
    print(
        f"NYUv2 prepared under {summary['output']}: {summary['frames']} frames "
        f"({summary['converted']} converted, {summary['skipped']} already done) in {summary['seconds']:.1f} s"
    )
    for split, (path, count) in summary["splits"].items():
        print(f"  nyuv2_{split}: {count} frames in {path}")
    return summary


if __name__ == "__main__":
    main()
