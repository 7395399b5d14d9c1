#!/usr/bin/env python
"""Prepare the Korean sidewalk dataset (AI Hub 인도보행 영상) for training: class weights, and a check of
the ZED disparity scale.

    DETECTRON2_DATASETS=/path/to/datasets python datasets/prepare_sidewalk.py [--check-disparity-scale]

reads the release layout under ``$DETECTRON2_DATASETS/sidewalk/`` (``Surface/Surface_XXX``,
``Polygon/Polygon_XXXX``, ``Depth/Depth_XXX``; datasets/README.md) and writes beside it:

    class_weights.json            pixel counts of the 24 classes over sidewalk_{surface,polygon}_train and
                                  their weights (inverse square root of the frequency, mean 1), read by
                                  MODEL.HYDRANET.CLASS_WEIGHTS_FILE
    disparity_scale_check.json    (--check-disparity-scale) the disp16 scale measured by block matching each
                                  Depth folder's left / right images, against the scale the dataset is read
                                  with (--disparity-scale, default 100: disparity px = disp16 / 100)

A thin command line over ``segdep_d2.data.datasets.sidewalk_prepare.prepare_sidewalk``.
"""
import argparse
import os
import sys


def _import_prepare():
    try:
        from segdep_d2.data.datasets import sidewalk_prepare
    except ImportError:  # run from a source checkout without `pip install -e .`
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from segdep_d2.data.datasets import sidewalk_prepare
    return sidewalk_prepare


def parse_args(argv=None):
    root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "sidewalk")
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=root, help="the release layout (default: $DETECTRON2_DATASETS/sidewalk)")
    parser.add_argument("--check-disparity-scale", action="store_true",
                        help="measure the disp16 scale of every Depth folder by block matching its stereo pairs")
    parser.add_argument("--disparity-scale", type=float, default=100.0,
                        help="the scale the dataset is read with (disparity px = disp16 / scale; default 100)")
    parser.add_argument("--pairs-per-folder", type=int, default=2, help="stereo pairs matched per Depth folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    prepare = _import_prepare()
    try:
        summary = prepare.prepare_sidewalk(
            args.root, disparity_scale=args.disparity_scale, check_scale=args.check_disparity_scale,
            pairs_per_folder=args.pairs_per_folder, progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as e:  # a missing or malformed input: say which
        sys.exit(f"prepare_sidewalk: {e}")
    print(f"class weights of {summary['num_images']} frames -> {summary['class_weights']}")
    for name, weight in summary["weights"].items():
        print(f"  {name:<26s} {summary['pixel_counts'][name]:>12d} px  weight {weight:.3f}")
    check = summary.get("disparity_scale_check")
    if check is not None:
        print(f"disparity scale -> {summary['disparity_scale_check_file']}")
        for folder, result in check["folders"].items():
            print(f"  {folder}: {result['scale']:.1f} ({len(result['pair_scales'])} pairs)")
        if check["scale"] is None:
            print("  no Depth folder has a left / right pair to match")
        else:
            verdict = "agrees with" if check["agrees"] else "DOES NOT agree with"
            print(f"  measured {check['scale']:.1f}: {verdict} --disparity-scale {check['expected_scale']:g} "
                  f"(tolerance {100 * check['tolerance']:.0f} %)")
        if check["skipped"]:
            print(f"  skipped (no stereo pair / no match): {', '.join(check['skipped'])}")
    print(f"done in {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
