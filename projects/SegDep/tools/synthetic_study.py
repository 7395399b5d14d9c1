#!/usr/bin/env python
"""SegDep on synthetic VKITTI2 referring data, with and without the motion module (issue 13's measured
tables; every row trained from the same seed with the same schedule, on CPU).

1. write a small synthetic dataset in the Virtual KITTI 2 layout (``segdep_d2.data.synthetic``) with its
   textgt and optical flow, consecutive frames (``--frame-step 1``: the previous frame of a training frame
   and the next frame of a held-out one exist): the ``--train-scenes`` for training, ``--val-scene``
   (Scene20, as for VKITTI2) held out;
2. the referring splits (``load_vkitti2_referring``: frames with textgt-derived referring ``queries``, their
   semantic, instance and depth labels; frames without a clearly visible vehicle are left out);
3. train and evaluate the rows on the held-out scene:

   * ``untrained``: the common initialisation (reference);
   * ``plain``: SegDep (the CPU config) on the referring training split, no motion module;
   * ``motion``: the same with ``MODEL.SEGDEP.TEMPORAL True`` (``TEMPORAL_FLOW_LOSS_WEIGHT``
     ``--flow-loss-weight``), from the same initial weights (the motion module's own aside) and the same
     data order, trained with each frame's previous frame and backward flow; at inference
     the held-out frames run in sequence order, one per batch, so each frame that follows its
     predecessor is refined with it;

   every row is scored by the trainer's evaluators (closed-set mIoU, depth AbsRel / d1, referring mIoU /
   oIoU / P@0.5 / distance error, open-vocabulary mIoU) plus :class:`TemporalStabilityEvaluator` (the
   fraction of pixels whose predicted class flickers between consecutive frames after ground-truth
   forward-flow compensation);

4. print a Markdown table (mIoU, AbsRel, d1, ref mIoU, oIoU, P@0.5, distance error, flicker, iterations,
   training seconds) and write ``OUTPUT/study.json``; ``--record DIR`` also writes
   ``DIR/segdep_synthetic_study.json`` (commit, date, device, every setting, the generator flags, the
   split sizes, the command line).

    python projects/SegDep/tools/synthetic_study.py --output output/segdep_study \\
        [--record benchmarks] [--max-iter 120] [--seed 0] [--frames 8] [--threads 2] [KEY VALUE ...]

``KEY VALUE`` overrides apply to every row's config (after the study's own settings).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CONFIG = "projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml"
RECORD_NAME = "segdep_synthetic_study.json"
ROWS = ("untrained", "plain", "motion")
PREFIX = "segdep_study"
NAMES = {"train": f"{PREFIX}_referring_train", "val": f"{PREFIX}_referring_val"}
# (column, result section, key, format, row key)
COLUMNS = (
    ("mIoU [%]", "sem_seg", "mIoU", "{:.1f}", "mIoU"),
    ("AbsRel", "depth", "AbsRel", "{:.3f}", "AbsRel"),
    ("δ1", "depth", "d1", "{:.3f}", "d1"),
    ("ref mIoU [%]", "referring", "mIoU", "{:.1f}", "ref_mIoU"),
    ("oIoU [%]", "referring", "oIoU", "{:.1f}", "oIoU"),
    ("P@0.5 [%]", "referring", "P@0.5", "{:.1f}", "P@0.5"),
    ("dist err [m]", "referring", "distance_error", "{:.2f}", "distance_error"),
    ("flicker [%]", "temporal", "flicker", "{:.2f}", "flicker"),
)
# (column, row key, format, default)
EXTRA_COLUMNS = (
    ("iterations", "iterations", "{}", 0),
    ("train s", "train_seconds", "{:.0f}", 0),
)


def _study():
    """segdep_d2.engine.study (the scaffolding shared with the other studies), imported when needed."""
    sys.path.insert(0, REPO)
    from segdep_d2.engine import study

    return study


def parse_args(argv=None):
    study = _study()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_study_arguments(p, output="output/segdep_study", record_name=RECORD_NAME, rows=ROWS,
                              frames=8, frame_step=1, max_iter=120, min_size_train="80,96", min_size_test=96)
    p.add_argument("--flow-loss-weight", type=float, default=0.1,
                   help="MODEL.SEGDEP.TEMPORAL_FLOW_LOSS_WEIGHT of the motion row")
    p.add_argument("--max-queries", type=int, default=8, help="referring queries per frame (at most)")
    args = study.check_study_args(p, p.parse_args(argv), ROWS)
    if "motion" in args.rows and args.frame_step != 1:
        # VKITTI2 pairs a frame with frame_index - 1 only (its backward flow), in training and at inference
        p.error(f"the motion row needs consecutive frames: --frame-step 1, not {args.frame_step}")
    if "MODEL.SEGDEP.TEMPORAL" in args.opts[::2]:
        p.error("the rows decide MODEL.SEGDEP.TEMPORAL (plain: off, motion: on); leave it out of the overrides")
    return args


def prepare_data(args):
    """Write (once per generator settings, flow included) and register the referring splits; returns
    (generator settings, split sizes)."""
    from segdep_d2.data.datasets import register_asymmetric_split
    from segdep_d2.data.datasets.vkitti2 import load_vkitti2_referring, vkitti2_metadata

    study = _study()
    settings = study.generator_settings(args, flow=True)
    root = os.path.join(args.output, "datasets", "vkitti2")
    study.prepare_synthetic_vkitti2(root, settings)
    train_scenes, val_scene = settings["scenes"][:-1], settings["scenes"][-1]
    options = dict(seed=args.seed, max_queries=args.max_queries)
    train = load_vkitti2_referring(root, train_scenes, settings["variations"], **options)
    val = load_vkitti2_referring(root, (val_scene,), settings["variations"], **options)
    meta = vkitti2_metadata()
    # every label kept (semantic, instance, depth, queries); a name registered before is replaced
    register_asymmetric_split(NAMES["train"], train, ("sem_seg", "depth"), meta)
    register_asymmetric_split(NAMES["val"], val, ("sem_seg", "depth"), meta)
    sizes = {
        "train": len(train), "train_with_previous_frame": sum("prev_file_name" in r for r in train),
        "train_queries": sum(len(r["queries"]) for r in train),
        "val": len(val), "val_queries": sum(len(r["queries"]) for r in val),
    }
    return settings, sizes


def make_cfg(args, output_dir, temporal=False):
    opts = ["MODEL.SEGDEP.TEMPORAL", str(bool(temporal))]
    if temporal:
        opts += ["MODEL.SEGDEP.TEMPORAL_FLOW_LOSS_WEIGHT", str(args.flow_loss_weight)]
    return _study().study_cfg(CONFIG, args, output_dir, (NAMES["train"],), (NAMES["val"],), model_opts=opts)


def trainer_class():
    """SegDepTrainer whose evaluators are the trainer's (:func:`build_evaluators`: closed-set, depth,
    open-vocabulary, referring) plus :class:`TemporalStabilityEvaluator`, and whose motion model starts from
    the plain model's initial weights. detectron2's test loader feeds
    the held-out frames one per batch in the dataset's order (sequence by sequence, by ``frame_index``),
    and SegDep's temporal state chains consecutive frames of a sequence."""
    from detectron2.evaluation import DatasetEvaluators

    from segdep_d2.engine import SegDepTrainer, build_evaluators
    from segdep_d2.evaluation import TemporalStabilityEvaluator

    class SegDepStudyTrainer(SegDepTrainer):
        @classmethod
        def build_model(cls, cfg):
            """With the motion module: the modules it shares with the plain model start from the plain
            row's initial weights (SegDep builds the motion module before its heads, which would otherwise
            draw other initial weights), and the random state after building is the plain row's (same
            data order)."""
            if not cfg.MODEL.SEGDEP.TEMPORAL:
                return super().build_model(cfg)
            plain_cfg = cfg.clone()
            plain_cfg.defrost()
            plain_cfg.MODEL.SEGDEP.TEMPORAL = False
            plain = super().build_model(plain_cfg)
            after_plain = _random_state()
            model = super().build_model(cfg)
            missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
            if unexpected or any(not k.startswith(("motion_head.", "temporal_fusion.")) for k in missing):
                raise RuntimeError(f"the motion model does not extend the plain one: missing {missing}, "
                                   f"unexpected {unexpected}")
            _random_state(after_plain)
            return model

        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            if output_folder is None:
                output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
            evaluators = build_evaluators(cfg, dataset_name, output_folder)._evaluators
            return DatasetEvaluators([*evaluators, TemporalStabilityEvaluator(dataset_name, output_dir=output_folder)])

    return SegDepStudyTrainer


def _random_state(state=None):
    """The (python, numpy, torch) random states; with ``state``: restore them."""
    import random

    import numpy as np
    import torch

    if state is None:
        return random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    return state


def _temporal_samples(trainer):
    """Training images refined with their previous frame (summed over iterations; 0 without the module)."""
    history = trainer.storage.history("segdep/num_temporal_samples") \
        if "segdep/num_temporal_samples" in trainer.storage.histories() else None
    return int(round(sum(v for v, _ in history.values()))) if history else 0


def with_metrics(row, results):
    return _study().with_metrics(row, results, COLUMNS)


def markdown_table(rows):
    return _study().markdown_table(rows, COLUMNS, EXTRA_COLUMNS)


def run_study(args, argv=None):
    import torch

    study = _study()
    wall, generator, sizes = study.start_study(args, prepare_data)
    trainer = trainer_class()

    rows = []
    for name in args.rows:
        print(f"[study] {name} ...", flush=True)
        output_dir = os.path.join(args.output, "rows", name)
        if name == "untrained":
            results = study.untrained_results(make_cfg(args, output_dir), args.seed, trainer)
            row = {"row": name, "train_datasets": [], "temporal": False, "iterations": 0, "train_seconds": 0.0,
                   "temporal_samples": 0}
        else:
            trained = study.train_row(make_cfg(args, output_dir, temporal=name == "motion"), args.seed, trainer)
            row = {"row": name, "train_datasets": [NAMES["train"]], "temporal": name == "motion",
                   "iterations": trained.iterations, "train_seconds": round(trained.seconds, 1),
                   "temporal_samples": _temporal_samples(trained.trainer)}
            results = trained.results
            del trained
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
        settings=study.common_settings(args, flow_loss_weight=args.flow_loss_weight, max_queries=args.max_queries),
        wall_seconds=round(wall, 1),
        rows=rows,
        table_markdown=markdown_table(rows),
    )
    paths = study.write_study_record(report, args.output, args.record, RECORD_NAME)
    print()
    print(f"SegDep on the held-out synthetic {args.val_scene} (referring split), {args.max_iter} iterations per "
          f"row (seed {args.seed}, {torch.get_num_threads()} threads, wall {wall:.0f} s):")
    print(report["table_markdown"])
    print("(mIoU, ref mIoU, oIoU, P@0.5: higher is better; AbsRel, distance error, flicker: lower is better; "
          "flicker alone rewards constant predictions, read it next to mIoU)")
    print(f"written: {' and '.join(paths)}")
    return report


def main(argv=None):
    args = parse_args(argv)
    return run_study(args, argv)


if __name__ == "__main__":
    main()
