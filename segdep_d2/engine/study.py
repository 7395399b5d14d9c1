"""The scaffolding of the measured studies on synthetic data (``projects/*/tools/synthetic_study.py``):
every row trained from the same seed with the same schedule on CPU, evaluated on a held-out scene,
printed as a Markdown table and recorded as JSON.

* :func:`add_study_arguments` / :func:`check_study_args`: the command line every study shares
  (``--output``, ``--record DIR``, the generator's flags, the schedule, ``--rows``, ``KEY VALUE``
  overrides);
* :func:`generator_settings` + :func:`prepare_synthetic_vkitti2`: the synthetic Virtual KITTI 2 data,
  written once per generator settings (a stamp file beside it) and reused by later runs;
* :func:`study_cfg`: one row's config (the study's schedule, seed and datasets, then the overrides);
* :func:`train_row` / :func:`evaluate` / :func:`untrained_results`: seeded training and the held-out
  evaluation (the trainer's own evaluation after its last iteration, reused);
* :func:`with_metrics` + :func:`markdown_table`: the table's cells from the results;
* :func:`study_record` + :func:`write_study_record`: the JSON record (commit, date, command line, then
  the study's fields) written to ``OUTPUT/study.json`` and, with ``--record DIR``, ``DIR/<record name>``.

:func:`start_study` (threads, output folder, data) and :func:`common_settings` (the settings every record
holds) keep the study scripts to their rows.

:func:`git_commit` and :func:`json_safe` are also what ``tools/demo.py`` records its runs with.
"""
import argparse
import datetime
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import namedtuple

from .trainer import SegDepTrainer

__all__ = [
    "Column", "TrainedRow", "REPO", "STAMP", "HYDRANET_COLUMNS", "HYDRANET_EXTRA_COLUMNS", "add_study_arguments", "check_study_args", "common_settings",
    "evaluate", "generator_settings", "git_commit", "json_safe", "label_samples", "markdown_table",
    "prepare_synthetic_vkitti2", "start_study", "study_cfg", "study_record", "train_row", "untrained_results",
    "with_metrics", "write_once", "write_study_record",
]

# the repository checkout this package lives in (configs and the recorded command are relative to it)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# written beside the synthetic data: the generator settings it was written with
STAMP = "generator_settings.json"

Column = namedtuple("Column", ["header", "section", "key", "fmt", "name"], defaults=(None,))
Column.__doc__ = """A metric column of a study's table: ``results[section][key]`` formatted with ``fmt``
(``"-"`` when absent), kept in the row under ``name`` (default: ``key``; a name of its own where two
sections share a key, e.g. the semantic and the referring ``mIoU``)."""
Column.row_key = property(lambda self: self.name or self.key)

TrainedRow = namedtuple("TrainedRow", ["trainer", "iterations", "seconds", "results"])
TrainedRow.__doc__ = """:func:`train_row`'s result: the trainer, the iterations it ran, the training seconds and
the held-out results by section."""


# ------------------------------------------------------------------------------------------------
# What a record says about the run
# ------------------------------------------------------------------------------------------------
def git_commit(repo=REPO):
    """(commit, clean): ``git rev-parse HEAD`` of ``repo`` and whether tracked files match it; (None, None)
    outside a git checkout or without git."""
    def git(*cmd):
        return subprocess.run(["git", "-C", repo, *cmd], capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    try:
        clean = not git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        clean = None
    return commit, clean


def json_safe(value):
    """NaN / inf (e.g. IoU of a class absent from the ground truth) as null: the record stays valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def add_study_arguments(parser, *, output, record_name, rows, frames=6, frame_step=8, max_iter=40,
                        train_scenes="Scene01,Scene02", val_scene="Scene20", variations="clone,fog",
                        height=96, width=320, lr=1e-3, batch=2, min_size_train="80,96", min_size_test=96,
                        vkitti2_data=True):
    """The arguments every study takes (defaults as given), ``KEY VALUE`` overrides (``opts``) last; a study
    may add its own options after these. ``vkitti2_data=False``: a study on other synthetic data, without
    the VKITTI2 generator's ``--train-scenes``, ``--val-scene``, ``--variations`` and ``--frame-step``
    (``--frames`` then counts the frames of the study's own unit, e.g. a folder)."""
    p = parser
    p.add_argument("--output", default=os.path.join(REPO, output))
    p.add_argument("--record", metavar="DIR", default=None, help=f"also write DIR/{record_name}")
    if vkitti2_data:
        p.add_argument("--train-scenes", default=train_scenes)
        p.add_argument("--val-scene", default=val_scene)
        p.add_argument("--variations", default=variations)
    p.add_argument("--frames", type=int, default=frames,
                   help="frames per scene and variation" if vkitti2_data else "frames per folder")
    if vkitti2_data:
        p.add_argument("--frame-step", type=int, default=frame_step, help="every k-th frame of each drive")
    p.add_argument("--height", type=int, default=height)
    p.add_argument("--width", type=int, default=width)
    p.add_argument("--max-iter", type=int, default=max_iter, help="training iterations of every row")
    p.add_argument("--lr", type=float, default=lr, help="SOLVER.BASE_LR")
    p.add_argument("--batch", type=int, default=batch, help="SOLVER.IMS_PER_BATCH")
    p.add_argument("--min-size-train", default=min_size_train, help="INPUT.MIN_SIZE_TRAIN (choice)")
    p.add_argument("--min-size-test", type=int, default=min_size_test)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="the data generator's and every row's seed")
    p.add_argument("--rows", default=",".join(rows), help="the rows to run (comma-separated)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of every row's config")
    return p


def check_study_args(parser, args, rows):
    """Split ``--rows`` and check it and the overrides (``parser.error`` on a mistake); returns ``args``."""
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in rows]
    if unknown:
        parser.error(f"unknown rows {unknown}; expected some of {', '.join(rows)}")
    if len(args.opts) % 2:
        parser.error(f"config overrides come as KEY VALUE pairs, got {' '.join(args.opts)}")
    if "SOLVER.MAX_ITER" in args.opts[::2]:
        parser.error("use --max-iter, not SOLVER.MAX_ITER")
    return args


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def generator_settings(args, **extra):
    """The keyword arguments of :func:`segdep_d2.data.synthetic.generate_vkitti2` from the study's
    flags (the held-out ``--val-scene`` last), plus ``extra`` (e.g. ``flow=True``)."""
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
        **extra,
    }


def write_once(root, settings, write):
    """``write(root, **settings)`` unless ``root/generator_settings.json`` says ``root`` already holds data
    written with these settings. Data written with other settings is removed first (fewer frames would
    otherwise leave the former ones behind). Returns whether it wrote."""
    stamp = os.path.join(root, STAMP)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == settings:
                return False
        shutil.rmtree(root)  # the stamp says a study wrote this folder
    os.makedirs(root, exist_ok=True)
    write(root, **settings)
    with open(stamp, "w") as f:
        json.dump(settings, f)
    return True


def prepare_synthetic_vkitti2(root, settings):
    """Write the synthetic Virtual KITTI 2 data of ``settings`` (:func:`generator_settings`) under ``root``
    once (:func:`write_once`). Optical flow only where ``settings`` asks for it (``"flow": True``)."""
    from segdep_d2.data.synthetic import generate_vkitti2

    return write_once(root, settings, lambda root, **kw: generate_vkitti2(root, **{"flow": False, **kw}))


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------
def study_cfg(config_file, args, output_dir, train, test, model_opts=()):
    """One row's frozen config: ``config_file`` (relative to the repository), on CPU, then ``model_opts``,
    the study's sizes and schedule (``args``: ``--min-size-*``, ``--batch``, ``--lr``, ``--max-iter``,
    ``--seed``), the datasets and ``OUTPUT_DIR``, then the ``KEY VALUE`` overrides ``args.opts``. No
    checkpoints, no periodic evaluation (the trainer still evaluates ``test`` after the last iteration),
    data loaded in the main process."""
    from detectron2.config import get_cfg

    from segdep_d2 import add_segdep_config

    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config_file))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", *model_opts,
        "INPUT.MIN_SIZE_TRAIN", f"({args.min_size_train},)", "INPUT.MIN_SIZE_TEST", str(args.min_size_test),
        "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.BASE_LR", str(args.lr),
        "SOLVER.MAX_ITER", str(args.max_iter), "SOLVER.WARMUP_ITERS", str(min(20, args.max_iter // 10)),
        "SOLVER.CHECKPOINT_PERIOD", "1000000", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
        "SEED", str(args.seed), "DATASETS.TRAIN", str(tuple(train)), "DATASETS.TEST", str(tuple(test)),
        "OUTPUT_DIR", output_dir, *args.opts,
    ])
    cfg.freeze()
    return cfg


def _plain(results):
    return {section: dict(values) for section, values in results.items()}


def evaluate(cfg, model, trainer_class=SegDepTrainer):
    """``trainer_class.test(cfg, model)`` (default :class:`SegDepTrainer`: its evaluators on
    ``DATASETS.TEST``; one dataset) as plain dicts by section."""
    return _plain(trainer_class.test(cfg, model))


def untrained_results(cfg, seed, trainer_class=SegDepTrainer):
    """The held-out results of the initialisation every row starts from (the model built after seeding)."""
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(seed)
    return evaluate(cfg, trainer_class.build_model(cfg), trainer_class)


def train_row(cfg, seed, trainer_class=SegDepTrainer):
    """Train ``cfg`` from ``seed`` (same initial weights and data order for every row) with
    ``trainer_class`` (default :class:`SegDepTrainer`) and evaluate it on ``DATASETS.TEST``; returns a
    :class:`TrainedRow`.

    detectron2's EvalHook evaluates ``DATASETS.TEST`` once after the last iteration (whatever
    ``TEST.EVAL_PERIOD``) with the trainer's evaluators and keeps the results: they are reused rather than
    evaluated twice (a fresh evaluation only where the trainer kept none). The seconds are those of
    ``trainer.train()``, that final evaluation included."""
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(seed)
    trainer = trainer_class(cfg)
    trainer.resume_or_load(resume=False)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    results = getattr(trainer, "_last_eval_results", None)
    results = _plain(results) if results else evaluate(cfg, trainer.model, trainer_class)
    # detectron2 leaves iter at max_iter after training
    return TrainedRow(trainer, int(trainer.iter), seconds, results)


# ------------------------------------------------------------------------------------------------
# Table and record
# ------------------------------------------------------------------------------------------------
# The columns of the HydraNet studies: (column, result section, key, format) and (column, row key, format, default)
HYDRANET_COLUMNS = (
    ("mIoU [%]", "sem_seg", "mIoU", "{:.1f}"),
    ("pACC [%]", "sem_seg", "pACC", "{:.1f}"),
    ("AbsRel", "depth", "AbsRel", "{:.3f}"),
    ("RMSE [m]", "depth", "RMSE", "{:.2f}"),
    ("d1", "depth", "d1", "{:.3f}"),
)
HYDRANET_EXTRA_COLUMNS = (
    ("iterations", "iterations", "{}", 0),
    ("train s", "train_seconds", "{:.0f}", 0),
    ("seg samples", "sem_seg_samples", "{}", 0),
    ("depth samples", "depth_samples", "{}", 0),
)


def label_samples(trainer, prefix="hydranet"):
    """Images with a segmentation / depth label the model was trained on, summed over the iterations
    (the ``<prefix>/num_{sem_seg,depth}_samples`` scalars HydraNet logs)."""
    seen = {}
    for task in ("sem_seg", "depth"):
        history = trainer.storage.history(f"{prefix}/num_{task}_samples")
        seen[task] = int(round(sum(v for v, _ in history.values())))
    return seen


def with_metrics(row, results, columns):
    """A copy of ``row`` with each column's metric (None where the results lack it) and the whole ``results``."""
    row = dict(row)
    for column in (Column(*c) for c in columns):
        row[column.row_key] = results.get(column.section, {}).get(column.key)
    row["results"] = results
    return row


def markdown_table(rows, columns, extra_columns=()):
    """A Markdown table, one line per row dict: ``row["row"]``, the metric ``columns`` (:class:`Column` or
    ``(header, section, key, fmt[, name])``: ``fmt.format(row[name])``, ``"-"`` where it is None or
    absent), then the ``extra_columns`` ``(header, key, fmt, default)``: ``fmt.format(row.get(key, default))``."""
    columns = [Column(*c) for c in columns]
    header = ["row", *(c.header for c in columns), *(c[0] for c in extra_columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row["row"]]
        for column in columns:
            value = row.get(column.row_key)
            cells.append(column.fmt.format(value) if value is not None else "-")
        cells += [fmt.format(row.get(key, default)) for _, key, fmt, default in extra_columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def start_study(args, prepare_data):
    """A study's first steps: torch threads (``--threads``), the output folder, the data. Returns
    ``(wall-clock start, generator settings, split sizes)``; ``prepare_data(args)`` gives the latter two."""
    import time

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output, exist_ok=True)
    started = time.perf_counter()
    generator, sizes = prepare_data(args)
    print(f"[study] data: {sizes} (generator {generator})", flush=True)
    return started, generator, sizes


def common_settings(args, **extra):
    """The settings every study records (the shared flags of :func:`add_study_arguments`), plus ``extra``."""
    return {
        "max_iter": args.max_iter, "base_lr": args.lr, "ims_per_batch": args.batch,
        "min_size_train": args.min_size_train, "min_size_test": args.min_size_test,
        **extra,
        "config_overrides": list(args.opts), "rows": list(args.rows),
    }


def study_record(script, argv=None, now=None, **fields):
    """The record of a study run: ``commit``, ``worktree_clean``, ``date`` (UTC), ``command`` (``python
    <script relative to the repository> <argv>``, shell-quoted; ``argv`` None: this process's), then
    ``fields`` in order; NaN / inf as null (:func:`json_safe`)."""
    commit, clean = git_commit(REPO)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    argv = list(sys.argv[1:] if argv is None else argv)
    return json_safe({
        "commit": commit,
        "worktree_clean": clean,
        "date": now.isoformat(timespec="seconds"),
        "command": "python " + shlex.join([os.path.relpath(os.path.abspath(script), REPO)] + argv),
        **fields,
    })


def write_study_record(report, output, record_dir=None, record_name=None):
    """Write ``report`` to ``output/study.json`` and, with ``record_dir``, to ``record_dir/record_name``
    (strict JSON, indented); returns the paths written."""
    paths = [os.path.join(output, "study.json")]
    if record_dir:
        paths.append(os.path.join(record_dir, record_name))
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
            f.write("\n")
    return paths
