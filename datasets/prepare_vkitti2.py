#!/usr/bin/env python
"""Convert Virtual KITTI 2's colour classgt / palette instancegt PNGs into detectron2's standard
label files, once, for the names ``vkitti2_sem_seg_{train,val}`` and ``vkitti2_panoptic_{train,val}``.

    DETECTRON2_DATASETS=/path/to/datasets python datasets/prepare_vkitti2.py [--workers 8]

reads every scene / variation / camera under ``$DETECTRON2_DATASETS/vkitti2`` (either layout of
datasets/README.md) and writes ``$DETECTRON2_DATASETS/vkitti2/prepared/``:

    images/<stem>.jpg                    link to the original rgb_XXXXX.jpg (unique stem per frame,
                                         e.g. Scene20_clone_Camera_0_00000)
    sem_seg/<stem>.png                   uint8 trainIds, 255 = void
    panoptic/<stem>.png, <stem>.json     COCO panoptic RGB ids, and the frame's segments
    vkitti2_panoptic_{train,val}.json    COCO panoptic JSON of the builtin split (Scene20 = val)

Re-running it converts only what is missing (an interrupted run leaves no half-written file under
a final name). The decoding is segdep_d2's own (segdep_d2.data.label_io), the one place VKITTI2
colours are read; this script is a thin command line over
``segdep_d2.data.datasets.vkitti2_prepared.prepare_vkitti2``.
"""
import argparse
import os
import sys


def _import_prepare():
    try:
        from segdep_d2.data.datasets.vkitti2_prepared import prepare_vkitti2
    except ImportError:  # run from a source checkout without `pip install -e .`
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from segdep_d2.data.datasets.vkitti2_prepared import prepare_vkitti2
    return prepare_vkitti2


def parse_args(argv=None):
    datasets_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root", default=os.path.join(datasets_root, "vkitti2"),
        help="the Virtual KITTI 2 root (default: $DETECTRON2_DATASETS/vkitti2)",
    )
    parser.add_argument(
        "--output", default=None,
        help="where to write (default: <root>/prepared, where the builtin names look)",
    )
    parser.add_argument(
        "--workers", type=int, default=max((os.cpu_count() or 1) // 2, 1),
        help="processes converting frames in parallel (default: half the CPUs)",
    )
    parser.add_argument(
        "--cameras", default="Camera_0,Camera_1",
        help="comma-separated cameras to convert (default: both; the builtin names use Camera_0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo frames that are already converted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    prepare_vkitti2 = _import_prepare()
    summary = prepare_vkitti2(
        args.root,
        args.output,
        workers=args.workers,
        cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(
        f"VKITTI2 prepared under {summary['output']}: {summary['frames']} frames "
        f"({summary['converted']} converted, {summary['skipped']} already done) in {summary['seconds']:.1f} s"
    )
    for split, (path, count) in summary["splits"].items():
        print(f"  vkitti2_panoptic_{split}: {count} frames in {path}")
    return summary


if __name__ == "__main__":
    main()
