#!/usr/bin/env python
"""Depth completion on synthetic KITTI data: what the sparse input and the semantics each add (issue 14's
measured table; every row trained from the same seed with the same schedule, on CPU).

1. write a small synthetic KITTI root (``segdep_d2.data.synthetic``): the depth completion layout
   (``generate_kitti_completion``: raw images, a simulated 64-beam LiDAR scan as ``velodyne_raw``, denser ground
   truth) for ``--train-drives`` and one held-out ``--val-drive``, plus ``--semantic-frames`` images of the
   semantics benchmark (``generate_kitti``: the same raw images, byte for byte) for the semantic guide;
2. train and evaluate the rows on the held-out drive (the study's ``depth_completion_study_val``: the
   ``kitti_depth_completion_val`` split of its own data) with
   ``DepthCompletionEvaluator``: the KITTI devkit's RMSE / MAE (mm) and iRMSE / iMAE (1/km) per image, REL and
   delta1, and the trivial baselines of the same LiDAR input:

   * ``untrained``: the common initialisation of the depth completion network: with ``PREFILL "dilation"``
     (the shipped configs) its output is the morphological fill of the scan (reference);
   * ``seed network``: the seed's design, depth = MAX_DEPTH * sigmoid from scratch (``PREFILL "none"``);
   * ``rgb+sparse``: ``DepthCompletion`` (the synthetic CPU config: refining the fill) on RGB + the LiDAR scan;
   * ``rgb+sparse+semantics``: the same with ``SEMANTIC_INPUT "guide"``: the class probabilities of a frozen
     HydraNet (trained first, same schedule, on the semantic frames, 19 classes) as a 2-channel embedding;
   * ``monocular``: Panoptic-DepthLab (its synthetic CPU config) trained on the same frames' ground truth
     without the LiDAR input, evaluated with the same evaluator (``TEST.DEPTH.COMPLETION``);
   * and, from the evaluator, ``sparse only`` (the LiDAR points at their own pixels), ``nearest fill`` and
     ``bilinear fill`` of the scan;

3. print a Markdown table and write ``OUTPUT/study.json``; ``--record DIR`` also writes
   ``DIR/depth_completion_synthetic_study.json`` (commit, date, device, settings, generator flags, the guide's
   results, the command line).

    python projects/DepthCompletion/tools/synthetic_study.py --output output/depth_completion_study \\
        --record benchmarks [--max-iter 600] [--frames 24] [--seed 0] [--threads 1] [KEY VALUE ...]

``KEY VALUE`` overrides apply to every depth completion row's config (after the study's own settings).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, REPO)  # a source checkout without `pip install -e .`

from segdep_d2.engine import study  # noqa: E402  (the scaffolding every study shares)
CONFIG = "projects/DepthCompletion/configs/Synthetic-DepthCompletion/depth_completion_cpu.yaml"
GUIDE_CONFIG = "projects/HydraNet/configs/KITTI-HydraNet/hydranet_mbv2_kitti_asymmetric.yaml"
MONOCULAR_CONFIG = "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
RECORD_NAME = "depth_completion_synthetic_study.json"
ROWS = ("untrained", "seed network", "rgb+sparse", "rgb+sparse+semantics", "monocular")
BASELINES = (("sparse only (at its points)", "sparse_only"), ("nearest fill", "nearest"), ("bilinear fill", "bilinear"))
# the study's own names (registered by prepare_data on its data; the builtin names stay as they are)
PREFIX = "depth_completion_study"
TRAIN, VAL, SEMANTICS = f"{PREFIX}_train", f"{PREFIX}_val", f"{PREFIX}_semantics"
# (column, result section, key, format)
COLUMNS = (
    ("RMSE [mm]", "depth_completion", "RMSE", "{:.0f}"),
    ("MAE [mm]", "depth_completion", "MAE", "{:.0f}"),
    ("iRMSE [1/km]", "depth_completion", "iRMSE", "{:.2f}"),
    ("iMAE [1/km]", "depth_completion", "iMAE", "{:.2f}"),
    ("REL", "depth_completion", "REL", "{:.4f}"),
    ("d1", "depth_completion", "d1", "{:.3f}"),
)
EXTRA_COLUMNS = (("iterations", "iterations", "{}", 0), ("train s", "train_seconds", "{:.0f}", 0))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_study_arguments(p, output="output/depth_completion_study", record_name=RECORD_NAME, rows=ROWS,
                              frames=24, max_iter=600, height=188, width=621, batch=2,
                              min_size_train="188", min_size_test=188, vkitti2_data=False)
    p.add_argument("--train-drives", default="2011_09_26_drive_0001_sync,2011_09_28_drive_0001_sync")
    p.add_argument("--val-drive", default="2011_09_26_drive_0002_sync")
    p.add_argument("--semantic-frames", type=int, default=24, help="semantics frames the guide is trained on")
    return study.check_study_args(p, p.parse_args(argv), ROWS)


def generator_settings(args):
    return {
        "drives": {"train": args.train_drives.split(","), "val": [args.val_drive]},
        "frames": args.frames, "semantic_frames": args.semantic_frames,
        "height": args.height, "width": args.width, "seed": args.seed,
    }


def write_kitti(root, *, drives, frames, semantic_frames, height, width, seed):
    """The completion layout and the semantics frames in one KITTI root (the raw images are the same bytes)."""
    from segdep_d2.data.synthetic import generate_kitti, generate_kitti_completion

    generate_kitti(root, drives=drives, frames=frames, semantic_frames=semantic_frames, height=height, width=width,
                   seed=seed)
    generate_kitti_completion(root, drives=drives, frames=frames, height=height, width=width, seed=seed)


def prepare_data(args):
    """Write the data once per settings under OUTPUT/datasets/kitti and register the study's names on it (the
    completion train / val splits and the semantics frames); returns (generator settings, split sizes)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from segdep_d2.data.datasets.kitti import register_kitti_sem_seg
    from segdep_d2.data.datasets.kitti_completion import register_kitti_depth_completion

    settings = generator_settings(args)
    root = os.path.join(args.output, "datasets", "kitti")
    study.write_once(root, settings, write_kitti)
    for name in (TRAIN, VAL, SEMANTICS):  # a second study in one process: re-pointed at this one's data
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_kitti_depth_completion(TRAIN, root, "train")
    register_kitti_depth_completion(VAL, root, "val")
    register_kitti_sem_seg(SEMANTICS, root)
    sizes = {name: len(DatasetCatalog.get(name)) for name in (TRAIN, VAL, SEMANTICS)}
    return settings, sizes


def _cfg(config, args, output_dir, train, test, model_opts=(), with_opts=True):
    saved = args.opts
    if not with_opts:
        args.opts = []
    try:
        return study.study_cfg(config, args, output_dir, train, test, model_opts=model_opts)
    finally:
        args.opts = saved


def completion_cfg(args, name, semantic_guide=None):
    opts = ["DATALOADER.NUM_WORKERS", "0"]
    if name == "seed network":
        opts += ["MODEL.DEPTH_COMPLETION.PREFILL", "none"]
    if semantic_guide is not None:
        opts += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19", "MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT", "guide",
                 "MODEL.DEPTH_COMPLETION.GUIDE_CONFIG", semantic_guide[0],
                 "MODEL.DEPTH_COMPLETION.GUIDE_WEIGHTS", semantic_guide[1]]
    return _cfg(CONFIG, args, os.path.join(args.output, "rows", name.replace("+", "_")), (TRAIN,), (VAL,), opts)


def train_guide(args):
    """HydraNet (19 classes) on the semantics frames, same schedule; returns (config file, weights, row)."""
    out = os.path.join(args.output, "rows", "guide")
    cfg = _cfg(GUIDE_CONFIG, args, out, (SEMANTICS,), (SEMANTICS,), [
        "DATASETS.PSEUDO_LABELS", "[]", "MODEL.HYDRANET.DECODER_CHANNELS", "64", "INPUT.CROP.ENABLED", "False",
    ], with_opts=False)
    trained = study.train_row(cfg, args.seed)
    weights = os.path.join(out, "guide_final.pth")
    from detectron2.checkpoint import DetectionCheckpointer

    DetectionCheckpointer(trained.trainer.model, save_dir=out).save("guide_final")
    config_file = os.path.join(out, "guide_config.yaml")
    with open(config_file, "w") as f:
        f.write(cfg.dump())
    row = {"row": "guide (HydraNet, semantics frames)", "iterations": trained.iterations,
           "train_seconds": round(trained.seconds, 1), "results_on_training_frames": trained.results}
    return config_file, weights, row


def run_study(args, argv=None):
    import torch

    wall, generator, sizes = study.start_study(args, prepare_data)
    rows, guide, guide_files, baselines_from = [], None, None, None
    for name in args.rows:
        print(f"[study] {name} ...", flush=True)
        if name == "untrained":
            results = study.untrained_results(completion_cfg(args, name), args.seed)
            row = {"row": name, "iterations": 0, "train_seconds": 0.0}
        elif name == "monocular":
            cfg = _cfg(MONOCULAR_CONFIG, args, os.path.join(args.output, "rows", "monocular"), (TRAIN,), (VAL,), [
                "DATALOADER.NUM_WORKERS", "0", "TEST.DEPTH.COMPLETION", "True", "INPUT.CROP.ENABLED", "False",
            ], with_opts=False)
            trained = study.train_row(cfg, args.seed)
            results = trained.results
            row = {"row": "monocular (Panoptic-DepthLab, no LiDAR input)", "iterations": trained.iterations,
                   "train_seconds": round(trained.seconds, 1)}
        else:
            if name == "rgb+sparse+semantics" and guide is None:
                print("[study] the semantic guide: HydraNet on the semantics frames ...", flush=True)
                *guide_files, guide = train_guide(args)
            semantic = guide_files if name == "rgb+sparse+semantics" else None
            trained = study.train_row(completion_cfg(args, name, semantic), args.seed)
            results = trained.results
            row = {"row": name, "iterations": trained.iterations, "train_seconds": round(trained.seconds, 1)}
            baselines_from = baselines_from or results
        rows.append(study.with_metrics(row, results, COLUMNS))
        print(study.markdown_table(rows[-1:], COLUMNS, EXTRA_COLUMNS).splitlines()[-1], flush=True)
    if baselines_from is not None:  # the same LiDAR input for every row: its baselines once
        section = baselines_from["depth_completion"]
        for label, key in BASELINES:
            baseline = {"depth_completion": {m: section.get(f"{key}/{m}") for m in
                                             ("RMSE", "MAE", "iRMSE", "iMAE", "REL", "d1", "num_images")}}
            rows.append(study.with_metrics({"row": label, "iterations": 0, "train_seconds": 0.0}, baseline, COLUMNS))
    wall = time.perf_counter() - wall
    table = study.markdown_table(rows, COLUMNS, EXTRA_COLUMNS)
    report = study.study_record(
        __file__, argv, device="cpu", torch_threads=torch.get_num_threads(), config=CONFIG,
        guide_config=GUIDE_CONFIG, monocular_config=MONOCULAR_CONFIG, generator=generator, splits=sizes,
        seed=args.seed, settings=study.common_settings(args), guide=guide, wall_seconds=round(wall, 1), rows=rows,
        table_markdown=table,
    )
    paths = study.write_study_record(report, args.output, args.record, RECORD_NAME)
    print()
    print(f"Depth completion on the held-out synthetic drive {args.val_drive}, {args.max_iter} iterations per row "
          f"(seed {args.seed}, {torch.get_num_threads()} threads, wall {wall:.0f} s):")
    print(table)
    print(f"written: {' and '.join(paths)}")
    return report


def main(argv=None):
    return run_study(parse_args(argv), argv)


if __name__ == "__main__":
    main()
