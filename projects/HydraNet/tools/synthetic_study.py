#!/usr/bin/env python
"""HydraNet on synthetic VKITTI2 with asymmetric labels, distillation and uncertainty weighting
(issue 11's measured table; every row trained from the same seed with the same schedule, on CPU).

1. write a small synthetic dataset in the Virtual KITTI 2 layout (``segdep_d2.data.synthetic``):
   the ``--train-scenes`` for training, ``--val-scene`` (Scene20, as for VKITTI2) held out with
   every label;
2. deal the training frames out in turn into a segmentation-only half and a depth-only half
   (``register_asymmetric_split``);
3. train and evaluate the rows on the held-out scene:

   * ``untrained``: the common initialisation (reference);
   * ``full``: both labels on every training frame (upper bound);
   * ``asymmetric``: the two halves, each with one label type;
   * ``asymmetric+UW``: the same with ``MODEL.HYDRANET.UNCERTAINTY_WEIGHTING True``;
   * ``distillation``: a teacher (HydraNet, same schedule) trained on the segmentation-only half
     labels the depth-only half (``generate_pseudo_labels``, pixels below ``--min-confidence``
     ignored); the student trains on the segmentation-only half + the pseudo-labelled depth half;
   * ``distillation+UW``: the same student with uncertainty weighting;

4. print a Markdown table (mIoU, pixel accuracy, AbsRel, RMSE, d1, iterations, training seconds,
   label samples seen) and write ``OUTPUT/study.json``; ``--record DIR`` also writes
   ``DIR/hydranet_synthetic_study.json`` (commit, date, device, every setting, generator flags, the
   teacher's pseudo-label summary, the command line).

    python projects/HydraNet/tools/synthetic_study.py --output output/hydranet_study \\
        [--record benchmarks] [--max-iter 40] [--seed 0] [--frames 6] [--threads 2] [KEY VALUE ...]

``KEY VALUE`` overrides apply to every row's config (after the study's own settings).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CONFIG = "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml"
RECORD_NAME = "hydranet_synthetic_study.json"
ROWS = ("untrained", "full", "asymmetric", "asymmetric+UW", "distillation", "distillation+UW")
PREFIX = "hydranet_study"
NAMES = {
    "full": f"{PREFIX}_train_full",
    "seg_only": f"{PREFIX}_train_seg_only",
    "depth_only": f"{PREFIX}_train_depth_only",
    "val": f"{PREFIX}_val",
}


def _study():
    """segdep_d2.engine.study (the scaffolding shared with the other studies), imported when needed."""
    sys.path.insert(0, REPO)
    from segdep_d2.engine import study

    return study


def parse_args(argv=None):
    study = _study()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_study_arguments(p, output="output/hydranet_study", record_name=RECORD_NAME, rows=ROWS,
                              frames=6, frame_step=8, max_iter=40)
    p.add_argument("--decoder-channels", type=int, default=64, help="MODEL.HYDRANET.DECODER_CHANNELS")
    p.add_argument("--min-confidence", type=float, default=0.7,
                   help="pseudo-labels: pixels whose softmax maximum is below it are ignored")
    return study.check_study_args(p, p.parse_args(argv), ROWS)


def prepare_data(args):
    """Write (once per generator settings) and register the study's splits; returns
    (generator settings, split sizes)."""
    from segdep_d2.data.datasets import register_asymmetric_split
    from segdep_d2.data.datasets.vkitti2 import load_vkitti2, vkitti2_metadata

    study = _study()
    settings = study.generator_settings(args)
    root = os.path.join(args.output, "datasets", "vkitti2")
    study.prepare_synthetic_vkitti2(root, settings)
    train_scenes, val_scene = settings["scenes"][:-1], settings["scenes"][-1]
    train = load_vkitti2(root, train_scenes, settings["variations"])
    val = load_vkitti2(root, (val_scene,), settings["variations"])
    meta = vkitti2_metadata()
    # dealt out in turn along each drive: neighbouring frames go to different halves
    register_asymmetric_split(NAMES["full"], train, ("sem_seg", "depth"), meta)
    register_asymmetric_split(NAMES["seg_only"], train[0::2], ("sem_seg",), meta)
    register_asymmetric_split(NAMES["depth_only"], train[1::2], ("depth",), meta)
    register_asymmetric_split(NAMES["val"], val, ("sem_seg", "depth"), meta)
    sizes = {"train": len(train), "seg_only": len(train[0::2]), "depth_only": len(train[1::2]), "val": len(val)}
    return settings, sizes


def make_cfg(args, output_dir, train, uncertainty_weighting=False):
    return _study().study_cfg(CONFIG, args, output_dir, train, (NAMES["val"],), model_opts=[
        "MODEL.HYDRANET.DECODER_CHANNELS", str(args.decoder_channels),
        "MODEL.HYDRANET.UNCERTAINTY_WEIGHTING", str(bool(uncertainty_weighting)),
    ])


def train_row(args, name, train, uncertainty_weighting=False):
    """Train one row from the study's seed; returns (cfg, trainer, row dict without metrics, held-out results)."""
    cfg = make_cfg(args, os.path.join(args.output, "rows", name.replace("+", "_")), train, uncertainty_weighting)
    trained = _study().train_row(cfg, args.seed)
    seen = _study().label_samples(trained.trainer)
    row = {
        "row": name,
        "train_datasets": list(train),
        "uncertainty_weighting": bool(uncertainty_weighting),
        "iterations": trained.iterations,
        "train_seconds": round(trained.seconds, 1),
        "sem_seg_samples": seen["sem_seg"],
        "depth_samples": seen["depth"],
    }
    return cfg, trained.trainer, row, trained.results


def with_metrics(row, results):
    return _study().with_metrics(row, results, _study().HYDRANET_COLUMNS)


def markdown_table(rows):
    return _study().markdown_table(rows, _study().HYDRANET_COLUMNS, _study().HYDRANET_EXTRA_COLUMNS)


def run_study(args, argv=None):
    import torch

    from segdep_d2.data.pseudo_labels import generate_pseudo_labels

    study = _study()
    wall, generator, sizes = study.start_study(args, prepare_data)

    rows, pseudo_summary, teacher = [], None, None
    for name in args.rows:
        print(f"[study] {name} ...", flush=True)
        if name == "untrained":
            cfg = make_cfg(args, os.path.join(args.output, "rows", "untrained"), (NAMES["full"],))
            results = study.untrained_results(cfg, args.seed)
            row = {"row": name, "train_datasets": [], "uncertainty_weighting": False, "iterations": 0,
                   "train_seconds": 0.0, "sem_seg_samples": 0, "depth_samples": 0}
        elif name.startswith("distillation"):
            if pseudo_summary is None:
                print("[study] teacher on the segmentation-only half ...", flush=True)
                tcfg, ttrainer, trow, tresults = train_row(args, "teacher", (NAMES["seg_only"],))
                teacher = with_metrics(trow, tresults)
                summary = generate_pseudo_labels(
                    tcfg, ttrainer.model.eval(), NAMES["depth_only"], "sem_seg",
                    os.path.join(args.output, "pseudo_sem_seg"), min_confidence=args.min_confidence,
                    overwrite=True, progress=False,
                )
                pseudo_summary = {k: summary[k] for k in ("name", "images", "written", "skipped_labelled",
                                                           "confident_fraction") if k in summary}
                pseudo_summary["min_confidence"] = args.min_confidence
                print(f"[study] pseudo-labels: {pseudo_summary}", flush=True)
                del ttrainer
            _, _, row, results = train_row(args, name, (NAMES["seg_only"], pseudo_summary["name"]),
                                           uncertainty_weighting=name.endswith("+UW"))
        else:
            train = (NAMES["full"],) if name == "full" else (NAMES["seg_only"], NAMES["depth_only"])
            _, _, row, results = train_row(args, name, train, uncertainty_weighting=name.endswith("+UW"))
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
        seed=args.seed,
        settings=study.common_settings(args, decoder_channels=args.decoder_channels,
                                       min_confidence=args.min_confidence),
        teacher=teacher,
        pseudo_labels=pseudo_summary,
        wall_seconds=round(wall, 1),
        rows=rows,
        table_markdown=markdown_table(rows),
    )
    paths = study.write_study_record(report, args.output, args.record, RECORD_NAME)
    print()
    print(f"HydraNet on the held-out synthetic {args.val_scene}, {args.max_iter} iterations per row "
          f"(seed {args.seed}, {torch.get_num_threads()} threads, wall {wall:.0f} s):")
    print(report["table_markdown"])
    if pseudo_summary:
        print(f"pseudo-labels (teacher: seg-only half, min confidence {args.min_confidence}): "
              f"confident fraction {pseudo_summary.get('confident_fraction')}")
    print(f"written: {' and '.join(paths)}")
    return report


def main(argv=None):
    args = parse_args(argv)
    return run_study(args, argv)


if __name__ == "__main__":
    main()
