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
import datetime
import json
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
# (column, result section, key, format)
COLUMNS = (
    ("mIoU [%]", "sem_seg", "mIoU", "{:.1f}"),
    ("pACC [%]", "sem_seg", "pACC", "{:.1f}"),
    ("AbsRel", "depth", "AbsRel", "{:.3f}"),
    ("RMSE [m]", "depth", "RMSE", "{:.2f}"),
    ("d1", "depth", "d1", "{:.3f}"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(REPO, "output/hydranet_study"))
    p.add_argument("--record", metavar="DIR", default=None, help=f"also write DIR/{RECORD_NAME}")
    p.add_argument("--train-scenes", default="Scene01,Scene02")
    p.add_argument("--val-scene", default="Scene20")
    p.add_argument("--variations", default="clone,fog")
    p.add_argument("--frames", type=int, default=6, help="frames per scene and variation")
    p.add_argument("--frame-step", type=int, default=8, help="every k-th frame of each drive")
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--max-iter", type=int, default=40, help="training iterations of every row (and the teacher)")
    p.add_argument("--lr", type=float, default=1e-3, help="SOLVER.BASE_LR")
    p.add_argument("--batch", type=int, default=2, help="SOLVER.IMS_PER_BATCH")
    p.add_argument("--min-size-train", default="80,96", help="INPUT.MIN_SIZE_TRAIN (choice)")
    p.add_argument("--min-size-test", type=int, default=96)
    p.add_argument("--decoder-channels", type=int, default=64, help="MODEL.HYDRANET.DECODER_CHANNELS")
    p.add_argument("--min-confidence", type=float, default=0.7,
                   help="pseudo-labels: pixels whose softmax maximum is below it are ignored")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="the data generator's and every row's seed")
    p.add_argument("--rows", default=",".join(ROWS), help="the rows to run (comma-separated)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every row's config")
    args = p.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; expected some of {', '.join(ROWS)}")
    if len(args.opts) % 2:
        p.error(f"config overrides come as KEY VALUE pairs, got {' '.join(args.opts)}")
    if "SOLVER.MAX_ITER" in args.opts[::2]:
        p.error("use --max-iter, not SOLVER.MAX_ITER")
    return args


def generator_settings(args):
    train = args.train_scenes.split(",")
    if args.val_scene in train:
        raise SystemExit(f"--val-scene {args.val_scene} is also a training scene")
    return {
        "scenes": train + [args.val_scene],
        "variations": args.variations.split(","),
        "frames": args.frames,
        "frame_step": args.frame_step,
        "height": args.height,
        "width": args.width,
        "seed": args.seed,
    }


def prepare_data(args):
    """Write (once per generator settings) and register the study's splits; returns
    (generator settings, split sizes)."""
    from segdep_d2.data.datasets import register_asymmetric_split
    from segdep_d2.data.datasets.vkitti2 import load_vkitti2, vkitti2_metadata
    from segdep_d2.data.synthetic import generate_vkitti2

    settings = generator_settings(args)
    root = os.path.join(args.output, "datasets", "vkitti2")
    stamp = os.path.join(root, "generator_settings.json")
    if not (os.path.isfile(stamp) and json.load(open(stamp)) == settings):
        os.makedirs(root, exist_ok=True)
        generate_vkitti2(root, flow=False, **settings)
        with open(stamp, "w") as f:
            json.dump(settings, f)
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
    from detectron2.config import get_cfg

    from segdep_d2 import add_segdep_config

    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, CONFIG))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.HYDRANET.DECODER_CHANNELS", str(args.decoder_channels),
        "MODEL.HYDRANET.UNCERTAINTY_WEIGHTING", str(bool(uncertainty_weighting)),
        "INPUT.MIN_SIZE_TRAIN", f"({args.min_size_train},)", "INPUT.MIN_SIZE_TEST", str(args.min_size_test),
        "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.BASE_LR", str(args.lr),
        "SOLVER.MAX_ITER", str(args.max_iter), "SOLVER.WARMUP_ITERS", str(min(20, args.max_iter // 10)),
        "SOLVER.CHECKPOINT_PERIOD", "1000000", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
        "SEED", str(args.seed), "DATASETS.TRAIN", str(tuple(train)), "DATASETS.TEST", f"('{NAMES['val']}',)",
        "OUTPUT_DIR", output_dir, *args.opts,
    ])
    cfg.freeze()
    return cfg


def evaluate(cfg, model):
    from segdep_d2.engine import SegDepTrainer

    return {section: dict(values) for section, values in SegDepTrainer.test(cfg, model).items()}


def label_samples(trainer):
    """Images with a segmentation / depth label the model was trained on (summed over iterations)."""
    seen = {}
    for task in ("sem_seg", "depth"):
        history = trainer.storage.history(f"hydranet/num_{task}_samples")
        seen[task] = int(round(sum(v for v, _ in history.values())))
    return seen


def train_row(args, name, train, uncertainty_weighting=False):
    """Train one row from the study's seed; returns (cfg, trainer, row dict without metrics, held-out results)."""
    from detectron2.utils.env import seed_all_rng

    from segdep_d2.engine import SegDepTrainer

    cfg = make_cfg(args, os.path.join(args.output, "rows", name.replace("+", "_")), train, uncertainty_weighting)
    seed_all_rng(args.seed)  # same initial weights and data order for every row
    trainer = SegDepTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # DefaultTrainer's EvalHook evaluates DATASETS.TEST once after the last iteration (whatever
    # TEST.EVAL_PERIOD) and keeps the results there: reuse them rather than evaluate twice
    results = getattr(trainer, "_last_eval_results", None)
    results = {section: dict(values) for section, values in results.items()} if results else None
    seen = label_samples(trainer)
    row = {
        "row": name,
        "train_datasets": list(train),
        "uncertainty_weighting": bool(uncertainty_weighting),
        "iterations": int(trainer.iter),  # detectron2 leaves iter at max_iter after training
        "train_seconds": round(seconds, 1),
        "sem_seg_samples": seen["sem_seg"],
        "depth_samples": seen["depth"],
    }
    return cfg, trainer, row, results or evaluate(cfg, trainer.model)


def with_metrics(row, results):
    row = dict(row)
    for _, section, key, _ in COLUMNS:
        row[key] = results.get(section, {}).get(key)
    row["results"] = results
    return row


def markdown_table(rows):
    header = ["row", *(c for c, *_ in COLUMNS), "iterations", "train s", "seg samples", "depth samples"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row["row"]]
        for _, _, key, fmt in COLUMNS:
            value = row.get(key)
            cells.append(fmt.format(value) if value is not None else "-")
        cells += [str(row.get("iterations", 0)), f"{row.get('train_seconds', 0):.0f}",
                  str(row.get("sem_seg_samples", 0)), str(row.get("depth_samples", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_study(args, argv=None):
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import torch
    from detectron2.utils.env import seed_all_rng

    import segdep_d2  # noqa: F401
    from demo import _json_safe, git_commit  # tools/demo.py
    from segdep_d2.data.pseudo_labels import generate_pseudo_labels
    from segdep_d2.engine import SegDepTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    wall = time.perf_counter()
    generator, sizes = prepare_data(args)
    print(f"[study] data: {sizes} (generator {generator})", flush=True)

    rows, pseudo_summary, teacher = [], None, None
    for name in args.rows:
        print(f"[study] {name} ...", flush=True)
        if name == "untrained":
            cfg = make_cfg(args, os.path.join(args.output, "rows", "untrained"), (NAMES["full"],))
            seed_all_rng(args.seed)
            results = evaluate(cfg, SegDepTrainer.build_model(cfg))
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

    commit, clean = git_commit(REPO)
    report = _json_safe({
        "commit": commit,
        "worktree_clean": clean,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(os.path.abspath(__file__), REPO)]
                                        + list(sys.argv[1:] if argv is None else argv)),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": CONFIG,
        "generator": generator,
        "splits": sizes,
        "seed": args.seed,
        "settings": {
            "max_iter": args.max_iter, "base_lr": args.lr, "ims_per_batch": args.batch,
            "min_size_train": args.min_size_train, "min_size_test": args.min_size_test,
            "decoder_channels": args.decoder_channels, "min_confidence": args.min_confidence,
            "config_overrides": list(args.opts), "rows": list(args.rows),
        },
        "teacher": teacher,
        "pseudo_labels": pseudo_summary,
        "wall_seconds": round(wall, 1),
        "rows": rows,
        "table_markdown": markdown_table(rows),
    })
    path = os.path.join(args.output, "study.json")
    paths = [path]
    for p in ([path] + ([os.path.join(args.record, RECORD_NAME)] if args.record else [])):
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        with open(p, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
            f.write("\n")
        if p != path:
            paths.append(p)
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
