#!/usr/bin/env python
"""Write a procedural street-scene dataset in the real Virtual KITTI 2, Cityscapes, KITTI (depth prediction or
depth completion) or sidewalk on-disk layout.

    python tools/make_synthetic_dataset.py --format vkitti2 --out datasets/synthetic_vkitti2
    python tools/make_synthetic_dataset.py --format cityscapes --out datasets/synthetic_cityscapes \\
        --splits train:2,val:1 --frames 3
    python tools/make_synthetic_dataset.py --format kitti --out datasets/kitti
    python tools/make_synthetic_dataset.py --format kitti_completion --out datasets/kitti
    python tools/make_synthetic_dataset.py --format sidewalk --out datasets/sidewalk

Point a dataset root (e.g. ``$DETECTRON2_DATASETS/vkitti2``) at the output to exercise the real loaders; for
KITTI name the output folder ``kitti`` and point ``$DETECTRON2_DATASETS`` at its parent: ``kitti_depth_*`` and
``kitti_sem_seg_train`` then read it (the semantics' train-id PNGs are prepared as a user would). The same holds
for ``kitti_completion`` (``kitti_depth_completion_{train,val,val_selection,test}``: data_depth_velodyne from a
simulated 64-beam LiDAR, data_depth_annotated, raw images and calibration, depth_selection); both formats can be
written into one ``kitti`` folder (their raw images and ground truth are the same files).
The sidewalk output (``$DETECTRON2_DATASETS/sidewalk``) has Surface / Polygon / Depth folders (AI Hub 인도보행 영상
layout); depth frames need a ZED resolution (default VGA 376x672).
"""
import argparse
import os
import sys

try:
    from segdep_d2.data import synthetic
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from segdep_d2.data import synthetic

# half / quarter of the real resolution; sidewalk: the ZED's VGA mode (its depth frames need a ZED resolution)
_DEFAULT_SIZE = {"vkitti2": (188, 621), "cityscapes": (256, 512), "kitti": (188, 621), "kitti_completion": (188, 621),
                 "sidewalk": (376, 672)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True,
                   choices=("vkitti2", "cityscapes", "kitti", "kitti_completion", "sidewalk"))
    p.add_argument("--out", required=True, help="output root (created if missing)")
    p.add_argument("--scenes", default=",".join(synthetic.VKITTI2_SCENES), help="vkitti2: comma-separated scenes")
    p.add_argument("--variations", default="clone",
                   help="vkitti2: comma-separated variations, or 'all' (%s)" % " ".join(synthetic.VKITTI2_VARIATIONS))
    p.add_argument("--cameras", default="0", help="vkitti2: comma-separated camera ids (0 = left, 1 = right)")
    p.add_argument("--splits", default="train:2,val:1", help="cityscapes: sequences per split, e.g. train:2,val:1")
    p.add_argument("--drives", default="train:2011_09_26_drive_0001_sync,val:2011_09_26_drive_0002_sync",
                   help="kitti, kitti_completion: drives per depth split ('+' between drives of a split), e.g. "
                        "train:2011_09_26_drive_0001_sync+2011_09_28_drive_0001_sync,val:2011_09_26_drive_0002_sync "
                        "(kitti: the val drives are also listed in eigen_test_files.txt; kitti_completion: their "
                        "frames are cropped into depth_selection/val_selection_cropped)")
    p.add_argument("--folders", default="surface:9+10,polygon:9+10,depth:9+10",
                   help="sidewalk: folder numbers per task ('+' between folders; numbers divisible by 10 are val), "
                        "e.g. surface:9+10,depth:20 (a task left out gets no folders)")
    p.add_argument("--semantic-frames", type=int, default=4, help="kitti: images in data_semantics/training")
    p.add_argument("--test-frames", type=int, default=2,
                   help="kitti_completion: frames in depth_selection/test_depth_completion_anonymous")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per scene/variation (vkitti2, default 10), per sequence (cityscapes, default 3) "
                        "or per drive (kitti, kitti_completion, default 6; the first has no ground truth, as in "
                        "KITTI) or per folder (sidewalk, default 3)")
    p.add_argument("--frame-step", type=int, default=1,
                   help="vkitti2: write every k-th frame of the drive (more distinct views per file)")
    p.add_argument("--height", type=int, default=None,
                   help="default: 188 (vkitti2, kitti, kitti_completion) / 256 (cityscapes) / 376 (sidewalk)")
    p.add_argument("--width", type=int, default=None,
                   help="default: 621 (vkitti2, kitti, kitti_completion) / 512 (cityscapes) / 672 (sidewalk)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _split_list(text):
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_folders(text):
    """"surface:9+10,depth:20" -> {"surface": (9, 10), "depth": (20,)}."""
    out = {}
    for part in _split_list(text):
        task, _, numbers = part.partition(":")
        if task not in ("surface", "polygon", "depth"):
            raise SystemExit(f"--folders: unknown task {task!r} (surface, polygon, depth)")
        out[task] = tuple(int(n) for n in numbers.split("+") if n.strip())
    return out


def print_summary(summary, out=None):
    out = out or sys.stdout  # looked up per call: a default bound at import would keep a replaced stdout
    w = lambda *a: print(*a, file=out)  # noqa: E731
    w(f"wrote {len(summary['frames'])} frames ({summary['format']}) to {summary['root']} "
      f"in {summary['seconds']:.1f} s")
    w(f"  resolution: {summary['height']}x{summary['width']} (HxW)")
    for group, sub in summary["counts"].items():
        w(f"  {group}: " + ", ".join(f"{k} {v} frames" for k, v in sub.items()))
    lo, hi = summary["depth_range"]
    w(f"  depth range (finite): {lo:.2f} .. {hi:.1f} m")
    if "densities" in summary:
        w("  valid pixels: " + ", ".join(f"{kind} {100 * share:.1f} %" for kind, share in summary["densities"].items()))
    w("  class pixel fractions:")
    for name, frac in sorted(summary["class_fractions"].items(), key=lambda kv: -kv[1]):
        w(f"    {name:<14s} {100 * frac:6.2f} %")


def main(argv=None):
    args = parse_args(argv)
    h, w = _DEFAULT_SIZE[args.format]
    height, width = args.height or h, args.width or w
    if args.format == "vkitti2":
        variations = synthetic.VKITTI2_VARIATIONS if args.variations == "all" else _split_list(args.variations)
        summary = synthetic.generate_vkitti2(
            args.out, scenes=_split_list(args.scenes), variations=variations, cameras=_split_list(args.cameras),
            frames=args.frames or 10, height=height, width=width, seed=args.seed, frame_step=args.frame_step)
    elif args.format == "kitti":
        summary = synthetic.generate_kitti(
            args.out, drives=args.drives, frames=args.frames or 6, semantic_frames=args.semantic_frames,
            height=height, width=width, seed=args.seed)
    elif args.format == "kitti_completion":
        summary = synthetic.generate_kitti_completion(
            args.out, drives=args.drives, frames=args.frames or 6, test_frames=args.test_frames, height=height,
            width=width, seed=args.seed)
    elif args.format == "sidewalk":
        folders = _parse_folders(args.folders)
        summary = synthetic.generate_sidewalk(
            args.out, surface_folders=folders.get("surface", ()), polygon_folders=folders.get("polygon", ()),
            depth_folders=folders.get("depth", ()), frames=args.frames or 3, height=height, width=width,
            seed=args.seed)
    else:
        summary = synthetic.generate_cityscapes(
            args.out, splits=args.splits, frames=args.frames or 3, height=height, width=width, seed=args.seed)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
