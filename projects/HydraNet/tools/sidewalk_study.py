#!/usr/bin/env python
"""HydraNet on synthetic Korean-sidewalk data: the SafeTrip-Q seed's choices against the HydraNet paper's
(issue 16's measured table; every row trained from the same seed, weights and data order with the same
schedule, on CPU).

1. write a small synthetic dataset in the AI Hub sidewalk release layout
   (``segdep_d2.data.synthetic.generate_sidewalk``: Surface / Polygon / ZED Depth folders, by default at the
   writer's VGA 672x376): ``--train-folders`` per task for training, ``--val-folder`` (divisible by 10: the
   dataset's val rule) per task held out; then the class weights of the Surface + Polygon training frames
   (``prepare_sidewalk`` -> ``class_weights.json``). Written once per generator settings (a stamp file
   beside the data) and reused by later runs;
2. register ``sidewalk_study_seg_train`` (Surface + Polygon train, segmentation only),
   ``sidewalk_study_depth_train`` (Depth train, depth only) and one held-out set ``sidewalk_study_val``
   (Surface + Polygon + Depth val frames, each with its own label: mIoU over the Surface + Polygon frames,
   depth metrics over the Depth frames);
3. train and evaluate the rows on it (the config: ``hydranet_mbv2_sidewalk_safetrip.yaml`` on CPU, fp32,
   small sizes, ``--decoder-channels``, no pseudo-label folder, the class weights written in step 1):

   * ``untrained``: the common initialisation (reference);
   * ``paper losses``: the HydraNet paper's choices on the same data (seg_train + depth_train): log depth,
     relative BerHu (c = 0.2 x the batch's largest residual), a fixed lambda 0.5, no class weights;
   * ``safetrip``: the config as shipped (80 m x sigmoid, absolute BerHu 0.1 on depth / 80 m, Kendall
     uncertainty weighting, class-weighted cross-entropy) on seg_train + depth_train;
   * ``safetrip+distillation``: a teacher (HydraNet, safetrip settings, same schedule) trained on seg_train
     labels depth_train (``generate_pseudo_labels``, pixels below ``--min-confidence`` ignored); the
     student (safetrip settings) trains on seg_train + the pseudo-labelled depth set;

4. print a Markdown table (mIoU, pixel accuracy, AbsRel, RMSE, d1, iterations, training seconds, label
   samples seen) and write ``OUTPUT/study.json``; ``--record DIR`` also writes
   ``DIR/hydranet_sidewalk_study.json`` (commit, date, device, every setting and each row's loss settings,
   generator flags, class weights, the teacher's pseudo-label summary, the command line).

    python projects/HydraNet/tools/sidewalk_study.py --output output/hydranet_sidewalk_study \\
        --record benchmarks [--max-iter 300] [--seed 0] [--frames 6] [--train-folders 1,2,3,4] \\
        [--val-folder 10] [--threads 1] [KEY VALUE ...]

``KEY VALUE`` overrides apply to every row's config (after the study's own settings). Measured at the
defaults (2 CPU cores, 144x144 crops, batch 2): about 0.17 s / iteration with ``--threads 2`` on idle cores,
0.22 s with ``--threads 1``, so a 300-iteration row takes 1-1.5 min (+ ~4 s evaluation) and the whole study
(4 trainings with the teacher; writing the data ~20 s) about 5 min. When other processes share the cores, use
``--threads 1``: two spinning OpenMP threads then ran 10x slower. A row's ``seconds_per_iteration`` is its
``train_seconds`` (the final evaluation included) over its iterations.

``--height`` / ``--width`` must be a ZED resolution (default VGA 376x672).
"""
import argparse
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CONFIG = "projects/HydraNet/configs/Sidewalk-SafeTrip/hydranet_mbv2_sidewalk_safetrip.yaml"
RECORD_NAME = "hydranet_sidewalk_study.json"
ROWS = ("untrained", "paper losses", "safetrip", "safetrip+distillation")
PREFIX = "sidewalk_study"
NAMES = {
    "seg_train": f"{PREFIX}_seg_train",
    "depth_train": f"{PREFIX}_depth_train",
    "val": f"{PREFIX}_val",
}
# each row's loss settings (after the common model options): the shipped SafeTrip-Q config, or the paper's
PAPER_OPTS = (
    "MODEL.DEPTH_HEAD.OUTPUT_TYPE", "log",
    "MODEL.DEPTH_HEAD.BERHU_THRESHOLD", "0.2",
    "MODEL.DEPTH_HEAD.BERHU_THRESHOLD_MODE", "relative",
    "MODEL.HYDRANET.UNCERTAINTY_WEIGHTING", "False",
    "MODEL.HYDRANET.SEG_LOSS_WEIGHT", "1.0",
    "MODEL.HYDRANET.DEPTH_LOSS_WEIGHT", "0.5",
    "MODEL.HYDRANET.CLASS_WEIGHTS_FILE", "",
)


def _study():
    """segdep_d2.engine.study (the scaffolding shared with the other studies), imported when needed."""
    sys.path.insert(0, REPO)
    from segdep_d2.engine import study

    return study


def _folders(text):
    return [int(f) for f in text.split(",") if f.strip()]


def parse_args(argv=None):
    study = _study()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_study_arguments(p, output="output/hydranet_sidewalk_study", record_name=RECORD_NAME, rows=ROWS,
                              frames=6, max_iter=300, height=376, width=672,
                              min_size_train="160,192", min_size_test=192, vkitti2_data=False)
    p.add_argument("--train-folders", default="1,2,3,4",
                   help="training folder numbers of every task (not divisible by 10)")
    p.add_argument("--val-folder", type=int, default=10, help="held-out folder number of every task (divisible by 10)")
    p.add_argument("--crop", default=None, metavar="H,W",
                   help="INPUT.CROP.SIZE (default: a square a bit under the smallest training short side)")
    p.add_argument("--decoder-channels", type=int, default=64, help="MODEL.HYDRANET.DECODER_CHANNELS")
    p.add_argument("--min-confidence", type=float, default=0.7,
                   help="pseudo-labels: pixels whose softmax maximum is below it are ignored")
    args = study.check_study_args(p, p.parse_args(argv), ROWS)
    try:
        args.train_folders = _folders(args.train_folders)
    except ValueError:
        p.error(f"--train-folders: comma-separated folder numbers, got {args.train_folders!r}")
    if not args.train_folders or any(f < 0 or f % 10 == 0 for f in args.train_folders):
        p.error(f"--train-folders {args.train_folders}: non-negative numbers not divisible by 10 (those are val)")
    if args.val_folder < 0 or args.val_folder % 10:
        p.error(f"--val-folder {args.val_folder}: a folder number divisible by 10 (the dataset's val rule)")
    smallest = min(int(s) for s in args.min_size_train.split(",") if s.strip())
    if args.crop is None:
        side = max(32, int(0.9 * smallest) // 16 * 16)
        args.crop = [side, side]
    else:
        args.crop = [int(s) for s in args.crop.split(",")]
        if len(args.crop) != 2:
            p.error(f"--crop H,W, got {args.crop}")
    return args


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def generator_settings(args):
    """The keyword arguments of ``generate_sidewalk`` from the study's flags."""
    folders = list(args.train_folders) + [args.val_folder]
    return {
        "surface_folders": folders, "polygon_folders": folders, "depth_folders": folders,
        "frames": args.frames, "height": args.height, "width": args.width, "seed": args.seed,
    }


def prepare_synthetic_sidewalk(root, settings):
    """Write the synthetic sidewalk data of ``settings`` under ``root`` once per settings
    (``study.write_once``); returns whether it wrote."""
    from segdep_d2.data.synthetic.sidewalk_writer import generate_sidewalk

    return _study().write_once(root, settings, generate_sidewalk)


def study_metadata(root):
    """The 24 classes, ignore label and depth range of the sidewalk data, for every study split (each
    split's ``label_tasks`` comes from ``register_asymmetric_split``)."""
    from segdep_d2.data.datasets.sidewalk import sidewalk_metadata

    meta = sidewalk_metadata("depth")
    for key in ("task", "evaluator_type", "label_tasks"):  # the splits mix tasks
        meta.pop(key, None)
    meta["dataset_root"] = root
    return meta


def prepare_data(args):
    """Write (once per generator settings) the data and its class weights, register the study's splits;
    returns (generator settings, split sizes)."""
    from segdep_d2.data.datasets import register_asymmetric_split
    from segdep_d2.data.datasets.sidewalk import load_sidewalk
    from segdep_d2.data.datasets.sidewalk_prepare import CLASS_WEIGHTS_NAME, prepare_sidewalk

    settings = generator_settings(args)
    root = os.path.join(args.output, "datasets", "sidewalk")
    wrote = prepare_synthetic_sidewalk(root, settings)
    args.class_weights_file = os.path.abspath(os.path.join(root, CLASS_WEIGHTS_NAME))
    if wrote or not os.path.isfile(args.class_weights_file):
        prepare_sidewalk(root, progress=False)
    with open(args.class_weights_file) as f:
        args.class_weights = json.load(f)

    records = {(task, split): load_sidewalk(root, task, split)
               for task in ("surface", "polygon", "depth") for split in ("train", "val")}
    meta = study_metadata(root)
    seg_train = records["surface", "train"] + records["polygon", "train"]
    depth_train = records["depth", "train"]
    register_asymmetric_split(NAMES["seg_train"], seg_train, ("sem_seg",), meta)
    register_asymmetric_split(NAMES["depth_train"], depth_train, ("depth",), meta)
    # each validation frame keeps the one label it has
    val = records["surface", "val"] + records["polygon", "val"] + records["depth", "val"]
    register_asymmetric_split(NAMES["val"], val, ("sem_seg", "depth"), meta)
    sizes = {
        "seg_train": len(seg_train), "depth_train": len(depth_train), "val": len(val),
        "val_sem_seg": len(records["surface", "val"]) + len(records["polygon", "val"]),
        "val_depth": len(records["depth", "val"]),
    }
    return settings, sizes


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------
def make_cfg(args, output_dir, train, paper=False):
    """A row's config: the SafeTrip-Q config at the study's sizes on CPU in fp32, no pseudo-label folder,
    the study's class weights; with ``paper`` the HydraNet paper's losses (:data:`PAPER_OPTS`)."""
    return _study().study_cfg(CONFIG, args, output_dir, train, (NAMES["val"],), model_opts=[
        "SOLVER.AMP.ENABLED", "False",
        "DATASETS.PSEUDO_LABELS", "[]",
        "INPUT.CROP.SIZE", f"({args.crop[0]}, {args.crop[1]})",
        "MODEL.HYDRANET.DECODER_CHANNELS", str(args.decoder_channels),
        "MODEL.HYDRANET.CLASS_WEIGHTS_FILE", args.class_weights_file,
        *(PAPER_OPTS if paper else ()),
    ])


def loss_settings(cfg):
    """What a row's losses are, read back from its frozen config."""
    depth, hydra = cfg.MODEL.DEPTH_HEAD, cfg.MODEL.HYDRANET
    return {
        "depth_output_type": depth.OUTPUT_TYPE,
        "max_depth": depth.MAX_DEPTH,
        "depth_losses": list(depth.LOSSES),
        "berhu_threshold": depth.BERHU_THRESHOLD,
        "berhu_threshold_mode": depth.BERHU_THRESHOLD_MODE,
        "uncertainty_weighting": bool(hydra.UNCERTAINTY_WEIGHTING),
        "seg_loss_weight": hydra.SEG_LOSS_WEIGHT,
        "depth_loss_weight": hydra.DEPTH_LOSS_WEIGHT,
        "class_weights_file": hydra.CLASS_WEIGHTS_FILE or None,
    }


def _dir_name(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", name)


def train_row(args, name, train, paper=False):
    """Train one row from the study's seed; returns (cfg, trainer, row dict without metrics, held-out results)."""
    cfg = make_cfg(args, os.path.join(args.output, "rows", _dir_name(name)), train, paper)
    trained = _study().train_row(cfg, args.seed)
    seen = _study().label_samples(trained.trainer)
    row = {
        "row": name,
        "train_datasets": list(train),
        "settings": loss_settings(cfg),
        "iterations": trained.iterations,
        "train_seconds": round(trained.seconds, 1),
        "seconds_per_iteration": round(trained.seconds / max(trained.iterations, 1), 3),
        "sem_seg_samples": seen["sem_seg"],
        "depth_samples": seen["depth"],
    }
    return cfg, trained.trainer, row, trained.results


def with_metrics(row, results):
    return _study().with_metrics(row, results, _study().HYDRANET_COLUMNS)


def markdown_table(rows):
    return _study().markdown_table(rows, _study().HYDRANET_COLUMNS, _study().HYDRANET_EXTRA_COLUMNS)


def distill(args):
    """The teacher (safetrip settings, seg_train only) and its pseudo-labels of depth_train: returns
    (teacher row with metrics, pseudo-label summary)."""
    from segdep_d2.data.pseudo_labels import generate_pseudo_labels

    print("[study] teacher on seg_train ...", flush=True)
    tcfg, ttrainer, trow, tresults = train_row(args, "teacher", (NAMES["seg_train"],))
    summary = generate_pseudo_labels(
        tcfg, ttrainer.model.eval(), NAMES["depth_train"], "sem_seg",
        os.path.join(args.output, "pseudo_sem_seg"), min_confidence=args.min_confidence,
        overwrite=True, progress=False,
    )
    pseudo = {k: summary[k] for k in ("name", "images", "written", "skipped_labelled", "confident_fraction")
              if k in summary}
    pseudo["min_confidence"] = args.min_confidence
    print(f"[study] pseudo-labels: {pseudo}", flush=True)
    return with_metrics(trow, tresults), pseudo


def run_study(args, argv=None):
    import torch

    study = _study()
    wall, generator, sizes = study.start_study(args, prepare_data)
    both = (NAMES["seg_train"], NAMES["depth_train"])

    rows, pseudo_summary, teacher = [], None, None
    for name in args.rows:
        print(f"[study] {name} ...", flush=True)
        if name == "untrained":
            cfg = make_cfg(args, os.path.join(args.output, "rows", "untrained"), both)
            results = study.untrained_results(cfg, args.seed)
            row = {"row": name, "train_datasets": [], "settings": loss_settings(cfg), "iterations": 0,
                   "train_seconds": 0.0, "seconds_per_iteration": None, "sem_seg_samples": 0,
                   "depth_samples": 0}
        elif name == "safetrip+distillation":
            teacher, pseudo_summary = distill(args)
            _, _, row, results = train_row(args, name, (NAMES["seg_train"], pseudo_summary["name"]))
        else:
            _, _, row, results = train_row(args, name, both, paper=name == "paper losses")
        rows.append(with_metrics(row, results))
        print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    wall = time.perf_counter() - wall

    report = study.study_record(
        __file__, argv,
        device="cpu",
        torch_threads=torch.get_num_threads(),
        config=CONFIG,
        generator=generator,
        splits=sizes,
        class_weights=args.class_weights,
        seed=args.seed,
        settings=study.common_settings(
            args, decoder_channels=args.decoder_channels, min_confidence=args.min_confidence,
            crop=list(args.crop), train_folders=list(args.train_folders), val_folder=args.val_folder,
        ),
        teacher=teacher,
        pseudo_labels=pseudo_summary,
        wall_seconds=round(wall, 1),
        rows=rows,
        table_markdown=markdown_table(rows),
    )
    paths = study.write_study_record(report, args.output, args.record, RECORD_NAME)
    print()
    print(f"HydraNet on the held-out synthetic sidewalk folders {args.val_folder} ({sizes['val_sem_seg']} "
          f"Surface + Polygon, {sizes['val_depth']} Depth frames), {args.max_iter} iterations per row "
          f"(seed {args.seed}, {torch.get_num_threads()} threads, wall {wall:.0f} s):")
    print(report["table_markdown"])
    if pseudo_summary:
        print(f"pseudo-labels (teacher: seg_train, min confidence {args.min_confidence}): "
              f"confident fraction {pseudo_summary.get('confident_fraction')}")
    print(f"written: {' and '.join(paths)}")
    return report


def main(argv=None):
    args = parse_args(argv)
    return run_study(args, argv)


if __name__ == "__main__":
    main()
