#!/usr/bin/env python
"""`make demo`: the whole Panoptic-DepthLab pipeline on the embedded synthetic data, on CPU
(`make demo-hydranet` / ``--model hydranet``: the same for HydraNet).

1. write a synthetic street-scene dataset in the real Virtual KITTI 2 layout
   (``output/demo/datasets/vkitti2``; Scene20 is the held-out validation scene, as for VKITTI2);
2. evaluate the untrained model, train the small CPU config within a time budget, evaluate again;
3. draw a few validation frames (segmentation overlay with "class 12.3 m", depth, error);
4. write ``output/demo/metrics.json`` (every metric, per-class IoU included, with the commit, the date
   and the settings: generator flags, schedule, iterations run, training seconds) and print the trained
   model beside the untrained one; ``--record DIR`` also copies it to
   ``DIR/demo_panoptic_depthlab_<YYYY-MM-DD>.json`` (e.g. ``--record benchmarks``).

``--model`` picks the model from :data:`MODELS` (its config, folder, metric columns and record name):
``panoptic_depthlab`` (the default, above) or ``hydranet`` (``output/demo_hydranet``,
``demo_hydranet_<YYYY-MM-DD>.json``; HydraNet predicts no panoptic segments, so no PQ / DPQ).

The schedule (what decides ``SOLVER.MAX_ITER``):

* a fresh run measures one training step and trains ``--max-iter`` iterations (default 900), fewer if
  they would not fit in ``--train-minutes`` (never fewer than 50 on a slow machine, unless
  ``--max-iter`` asks for fewer); the schedule is saved in ``output/demo/train/schedule.json``;
* re-running resumes training from the last checkpoint in ``output/demo/train`` (nothing is lost) and
  keeps the saved schedule, unless ``--max-iter`` is given with another value: then that value
  replaces the saved schedule (printed; it is not shortened to the budget, since the time-budget hook
  checkpoints and stops each run and the next run resumes; the resumed poly learning rate is
  stretched to end at the new length);
* ``SOLVER.MAX_ITER`` given as a ``KEY VALUE`` override is refused with a message: use ``--max-iter``;
* ``SOLVER.CHECKPOINT_PERIOD`` given as an override is used as given; otherwise it is a quarter of the
  schedule (at least 50). Every other ``KEY VALUE`` override is applied to the config as given.

    python tools/demo.py [--model hydranet] [--output output/demo] [--max-iter 900] [--train-minutes 13] \\
        [--record DIR] [KEY VALUE ...]

Inference mode (``--input`` or ``--video-input``; as detectron2's demo/demo.py), for any model family:

    python tools/demo.py [--model hydranet | --config-file C] --input a.png dir/ "frames/*.jpg" \\
        [--output DIR] [--onnx model.onnx] [KEY VALUE ...]
    python tools/demo.py [--model hydranet | --config-file C] --video-input clip.mp4 [--output DIR] ...

writes per image ``<stem>_seg.png`` (segmentation overlay, every segment or region labelled
"class 12.3 m"), ``<stem>_depth.png`` and ``<stem>_panel.png``, for a video ``DIR/<stem>.mp4``
(overlay | depth per frame), prints the frames per second (model alone and end to end, medians over
the frames) and writes them to ``DIR/inference.json``. Without ``--config-file`` it runs the
``--model``'s CPU config with the weights its training demo left (``output/demo/train/model_final.pth``
or ``output/demo_hydranet/...``), unless ``MODEL.WEIGHTS`` is given; ``--output`` defaults to that
demo's folder + ``/inference``. ``--onnx FILE`` runs a ``tools/export_model.py --format onnx`` export
of the config with onnxruntime instead of the eager model.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATOR_FLAGS = ("scenes", "variations", "frames", "frame_step", "height", "width", "seed")
DEFAULT_MAX_ITER = 900
MIN_ITER = 50  # the budget never shortens the schedule below this (a slow machine still trains a little)
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")  # a KEY of the KEY VALUE overrides


@dataclass(frozen=True)
class DemoModel:
    """What differs between the demo's models; the flow itself is shared."""

    title: str  # printed above the metric table
    config: str  # the CPU config on the synthetic VKITTI2 data, relative to the repository
    output: str  # the default --output, relative to the repository
    record_name: str  # --record DIR copies metrics.json to DIR/<record_name> ({date}: YYYY-MM-DD)
    table: tuple  # metric columns: (column, result section, key, scale to a fraction)
    table_note: str  # printed under the table


MODELS = {
    "panoptic_depthlab": DemoModel(
        title="Panoptic-DepthLab (ResNet-18, CPU)",
        config="projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml",
        output="output/demo",
        record_name="demo_panoptic_depthlab_{date}.json",
        table=(
            ("mIoU", "sem_seg", "mIoU", 0.01),
            ("PQ", "panoptic_depth", "PQ", 0.01),
            ("DPQ", "panoptic_depth", "DPQ", 0.01),
            ("AbsRel", "depth", "AbsRel", 1.0),
            ("d1", "depth", "d1", 1.0),
            ("segment AbsRel", "panoptic_depth", "segment_AbsRel", 1.0),
        ),
        table_note="(mIoU, PQ, DPQ as fractions; AbsRel and segment AbsRel: lower is better; d1: higher is better)",
    ),
    "hydranet": DemoModel(
        title="HydraNet (MobileNetV2 + Light-Weight RefineNet, CPU)",
        config="projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml",
        output="output/demo_hydranet",
        record_name="demo_hydranet_{date}.json",
        table=(  # no panoptic output: no PQ / DPQ / segment AbsRel
            ("mIoU", "sem_seg", "mIoU", 0.01),
            ("pACC", "sem_seg", "pACC", 0.01),
            ("AbsRel", "depth", "AbsRel", 1.0),
            ("RMSE [m]", "depth", "RMSE", 1.0),
            ("d1", "depth", "d1", 1.0),
        ),
        table_note="(mIoU, pixel accuracy as fractions; AbsRel and RMSE: lower is better; d1: higher is better)",
    ),
    "segdep": DemoModel(
        title="SegDep (HRNet-W18-small + FPN + CLIP-style text tower, CPU)",
        config="projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml",
        output="output/demo_segdep",
        record_name="demo_segdep_{date}.json",
        table=(  # closed-set, depth, and the classes queried by name (OpenVocabEvaluator)
            ("mIoU", "sem_seg", "mIoU", 0.01),
            ("AbsRel", "depth", "AbsRel", 1.0),
            ("d1", "depth", "d1", 1.0),
            ("OV seen", "open_vocab", "mIoU_seen", 0.01),
            ("OV synonyms", "open_vocab", "mIoU_synonyms", 0.01),
            ("OV held-out", "open_vocab", "mIoU_held_out", 0.01),
        ),
        table_note="(mIoU and open-vocabulary mIoU as fractions; OV held-out only with "
                   "MODEL.SEGDEP.HELD_OUT_CLASSES; AbsRel: lower is better; d1: higher is better)",
    ),
}
DEFAULT_MODEL = "panoptic_depthlab"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL,
                   help=f"the model to train, or whose config and demo weights to run (default {DEFAULT_MODEL})")
    p.add_argument("--output", default=None,
                   help="the demo's folder (default " + ", ".join(f"{m.output} for {n}" for n, m in MODELS.items())
                        + "); in the inference mode, the folder for the pictures (default <demo folder>/inference)")
    p.add_argument("--scenes", default="Scene01,Scene02,Scene06,Scene18,Scene20")
    p.add_argument("--variations", default="clone,fog,morning,sunset")
    p.add_argument("--frames", type=int, default=32, help="frames per scene and variation")
    p.add_argument("--frame-step", type=int, default=12, help="every k-th frame of each drive")
    p.add_argument("--height", type=int, default=188)
    p.add_argument("--width", type=int, default=621)
    p.add_argument("--max-iter", type=int, default=None,
                   help=f"training iterations (default {DEFAULT_MAX_ITER}); a fresh run shortens them to fit "
                        "the time budget; on a re-run a new value replaces the saved schedule")
    p.add_argument("--train-minutes", type=float, default=13.0,
                   help="time budget for training: the schedule is shortened to fit it (measured speed)")
    p.add_argument("--num-vis", type=int, default=4, help="validation frames to draw")
    p.add_argument("--seed", type=int, default=0)
    records = ", DIR/".join(m.record_name.format(date="<YYYY-MM-DD>") for m in MODELS.values())
    p.add_argument("--record", metavar="DIR", default=None,
                   help=f"also copy metrics.json to DIR/{records} (e.g. --record benchmarks)")
    inference = p.add_argument_group("inference mode (instead of the training demo)")
    source = inference.add_mutually_exclusive_group()
    source.add_argument("--input", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    source.add_argument("--video-input", metavar="FILE", help="a video file (anything OpenCV reads)")
    inference.add_argument("--config-file", metavar="FILE", default=None,
                           help="a model config (default: the --model's CPU config and the weights of its demo)")
    inference.add_argument("--onnx", metavar="FILE", default=None,
                           help="run this ONNX export of the config (tools/export_model.py --format onnx) "
                                "with onnxruntime instead of the eager model")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="KEY VALUE overrides of the model config (not SOLVER.MAX_ITER: use --max-iter)")
    args = p.parse_args(argv)
    if args.input:
        args.input, args.opts = split_trailing_opts(args.input, args.opts)
        if not args.input:
            p.error("--input needs at least one image file, folder or glob pattern before the KEY VALUE overrides")
    args.inference = bool(args.input or args.video_input)
    if not args.inference and (args.config_file or args.onnx):
        p.error("--config-file and --onnx belong to the inference mode: give --input or --video-input too")
    error = check_opts(args.opts, training=not args.inference)
    if error:
        p.error(error)
    if args.output is None:
        args.output = os.path.join(REPO, MODELS[args.model].output, *(["inference"] if args.inference else []))
    return args


def split_trailing_opts(inputs, opts):
    """``--input`` takes every word up to the next flag, so ``--input a.png MODEL.WEIGHTS w.pth``
    would read the override as two more inputs: move the words from the first config KEY on (one
    that is no existing path) back in front of the overrides."""
    for i, word in enumerate(inputs):
        if CONFIG_KEY.match(word) and not os.path.exists(word):
            return inputs[:i], inputs[i:] + list(opts)
    return inputs, opts


def opt_value(opts, key):
    """The value given for ``key`` in detectron2-style ``KEY VALUE`` opts (the last one wins), or None."""
    value = None
    for k, v in zip(opts[::2], opts[1::2]):
        if k == key:
            value = v
    return value


def check_opts(opts, training=True):
    """Why these ``KEY VALUE`` overrides cannot be used, or None when they can."""
    if len(opts) % 2:
        return f"config overrides come as KEY VALUE pairs, got an odd number: {' '.join(opts)}"
    if training and "SOLVER.MAX_ITER" in opts[::2]:
        return ("SOLVER.MAX_ITER is the demo's schedule: use --max-iter N instead (a fresh run fits it to "
                "--train-minutes; on a re-run it replaces the saved schedule)")
    return None


def plan_schedule(max_iter_arg, saved, resuming, budget_s, measure_step):
    """How many iterations to train, and the line that says why.

    Args:
        max_iter_arg: ``--max-iter`` as given on this command line, None when not given.
        saved: the ``schedule.json`` of an earlier run (a dict), or None.
        resuming: whether the training folder holds a checkpoint to resume from.
        budget_s: the training time budget of this run, in seconds.
        measure_step: ``() -> seconds`` of one training step; called only when a schedule is sized.

    Returns:
        (schedule, message): ``schedule`` is the dict to use and save (``max_iter``, ``asked``,
        ``seconds_per_iter``, ``source`` = "measured", "resumed" or "replaced").
    """
    if resuming and saved is not None:
        if max_iter_arg is None or max_iter_arg == saved["max_iter"]:
            return dict(saved, source="resumed"), f"resuming the saved schedule of {saved['max_iter']} iterations"
        schedule = dict(saved, max_iter=max_iter_arg, asked=max_iter_arg, source="replaced")
        return schedule, (f"--max-iter {max_iter_arg} replaces the saved schedule of {saved['max_iter']} iterations "
                          "(training resumes from the last checkpoint; the time budget still ends this run)")
    asked = DEFAULT_MAX_ITER if max_iter_arg is None else max_iter_arg
    step_s = measure_step()
    # 5% margin: the measured step is a little slower than the trainer's steady pace, and
    # time_budget_hook checkpoints and stops should the machine slow down anyway.
    fits = int(0.95 * budget_s / step_s)
    max_iter = min(asked, max(MIN_ITER, fits))
    schedule = {"max_iter": max_iter, "asked": asked, "seconds_per_iter": step_s, "source": "measured"}
    return schedule, (f"one training step takes {step_s:.2f} s here: training {max_iter} iterations "
                      f"(asked {asked}, {fits} fit in the budget of {budget_s / 60:.0f} min)")


def checkpoint_period(opts, max_iter):
    """(period, message): a user's ``SOLVER.CHECKPOINT_PERIOD`` override, else a quarter of the schedule."""
    given = opt_value(opts, "SOLVER.CHECKPOINT_PERIOD")
    if given is not None:
        return int(given), f"checkpointing every {int(given)} iterations (SOLVER.CHECKPOINT_PERIOD as given)"
    period = max(MIN_ITER, max_iter // 4)
    return period, f"checkpointing every {period} iterations (a quarter of the schedule, at least {MIN_ITER})"


def fit_scheduler_to_schedule(scheduler, max_iter):
    """Make a resumed LR scheduler end at ``max_iter``; returns the length it had, or None if unchanged.

    Resuming restores the scheduler's state from the checkpoint, and DeepLab's ``WarmupPolyLR`` keeps
    ``max_iters`` in that state: after a replaced schedule the poly decay would still end at the old
    length (and fail past it). detectron2's own ``LRMultiplier`` does not store its length.
    """
    old = getattr(scheduler, "max_iters", None)
    if old is None or old == max_iter:
        return None
    scheduler.max_iters = max_iter
    return old


def generate_data(args, datasets_root):
    """The synthetic VKITTI2-layout dataset, written once per set of generator settings."""
    from segdep_d2.data.synthetic import generate_vkitti2

    settings = {k: getattr(args, k) for k in GENERATOR_FLAGS}
    root = os.path.join(datasets_root, "vkitti2")
    stamp = os.path.join(root, "generator_settings.json")
    if os.path.isfile(stamp) and json.load(open(stamp)) == settings:
        print(f"[demo] synthetic VKITTI2 data already in {root}")
        return
    summary = generate_vkitti2(
        root, scenes=args.scenes.split(","), variations=args.variations.split(","), frames=args.frames,
        height=args.height, width=args.width, seed=args.seed, frame_step=args.frame_step,
    )
    with open(stamp, "w") as f:
        json.dump(settings, f)
    from make_synthetic_dataset import print_summary  # tools/ is on sys.path (this script's folder)

    print_summary(summary)


class TrainingBudgetReached(BaseException):
    """Ends the demo's training when its time budget is spent.

    A BaseException on purpose: detectron2's train loop logs every ``Exception`` as a crash, while
    this is a planned stop; its ``finally`` still runs the hooks' ``after_train``.
    """


def time_budget_hook(budget_s):
    """A hook that checkpoints ``model_final`` and stops training before ``budget_s`` is exceeded.

    The schedule is sized from a measured step time, but shared machines slow down mid-run; this
    keeps the demo's promise on wall time (a later run resumes from the checkpoint).
    """
    from detectron2.engine import HookBase

    class TimeBudget(HookBase):
        def before_train(self):
            self.start, self.start_iter = time.perf_counter(), self.trainer.iter

        def after_step(self):
            done = self.trainer.iter + 1
            if done >= self.trainer.max_iter:
                return
            elapsed = time.perf_counter() - self.start
            if elapsed + elapsed / (done - self.start_iter) > budget_s:  # the next step would overrun
                self.trainer.checkpointer.save("model_final", iteration=self.trainer.iter)
                raise TrainingBudgetReached(done)

    return TimeBudget()


def seconds_per_iteration(cfg):
    """Measured time of one training step of this config on this machine.

    The median of 6 steps after 4 warm-up steps: the first steps overlap the loader worker filling
    its prefetch queue, which competes for the same cores and overstates the steady step time.
    """
    from detectron2.data import build_detection_train_loader

    from segdep_d2.data import DepthPanopticDatasetMapper
    from segdep_d2.engine import SegDepTrainer

    model = SegDepTrainer.build_model(cfg).train()
    optimizer = SegDepTrainer.build_optimizer(cfg, model)
    loader = iter(build_detection_train_loader(cfg, mapper=DepthPanopticDatasetMapper(cfg, is_train=True)))
    times = []
    for _ in range(10):
        batch = next(loader)
        start = time.perf_counter()
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    del loader
    return statistics.median(times[4:])


def evaluate(cfg, model):
    from segdep_d2.engine import SegDepTrainer

    results = SegDepTrainer.test(cfg, model)
    return {section: dict(values) for section, values in results.items()}


def table(rows, columns=MODELS[DEFAULT_MODEL].table):
    """``rows`` of (label, results by section) under ``columns`` (a :class:`DemoModel`'s ``table``);
    a metric the results lack is "-"."""
    header = f"{'model':<12s}" + "".join(f"{name:>16s}" for name, *_ in columns)
    lines = [header, "-" * len(header)]
    for label, results in rows:
        cells = []
        for _, section, key, scale in columns:
            value = results.get(section, {}).get(key)
            cells.append(f"{value * scale:>16.3f}" if value is not None else f"{'-':>16s}")
        lines.append(f"{label:<12s}" + "".join(cells))
    return "\n".join(lines)


def git_commit(repo=REPO):
    """(commit, clean) of ``repo``: :func:`segdep_d2.engine.study.git_commit` (imported when called:
    importing segdep_d2 reads ``$DETECTRON2_DATASETS``, which :func:`train_demo` sets first)."""
    from segdep_d2.engine.study import git_commit as commit_of

    return commit_of(repo)


def _json_safe(value):
    """NaN / inf as null: :func:`segdep_d2.engine.study.json_safe` (imported when called, as above)."""
    from segdep_d2.engine.study import json_safe

    return json_safe(value)


def build_report(*, args, schedule, checkpoint_every, iterations, iterations_this_run, train_seconds,
                 untrained, trained, visualizations, torch_threads, commit, clean, now=None):
    """Everything ``metrics.json`` holds: what was run (commit, date, settings) and every metric.

    ``untrained`` / ``trained`` are the evaluators' results by section, kept whole: ``sem_seg`` holds
    detectron2's per-class ``IoU-<class>`` and ``ACC-<class>`` beside mIoU.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return _json_safe({
        "commit": commit,
        "worktree_clean": clean,
        "date": now.isoformat(timespec="seconds"),
        "model": args.model,
        "config": MODELS[args.model].config,
        "config_overrides": list(args.opts),
        "train_dataset": f"vkitti2_train (synthetic, {'/'.join(s for s in args.scenes.split(',') if s != 'Scene20')})",
        "test_dataset": "vkitti2_val (synthetic, held-out Scene20)",
        "generator": {k: getattr(args, k) for k in GENERATOR_FLAGS},
        "settings": {
            "max_iter_asked": args.max_iter,
            "train_minutes": args.train_minutes,
            "seed": args.seed,
            "schedule": schedule,
            "checkpoint_period": checkpoint_every,
        },
        "max_iter": schedule["max_iter"],
        "iterations_trained": iterations,
        "iterations_this_run": iterations_this_run,
        "train_seconds_this_run": train_seconds,
        "device": "cpu",
        "torch_threads": torch_threads,
        "untrained": untrained,
        "trained": trained,
        "visualizations": list(visualizations),
    })


def write_metrics(report, output_dir, record_dir=None):
    """Write ``output_dir/metrics.json``; with ``record_dir``, copy it to ``record_dir/`` under the
    report's model's record name (``demo_panoptic_depthlab_<YYYY-MM-DD>.json``,
    ``demo_hydranet_<YYYY-MM-DD>.json``; the report's date). Returns the paths written."""
    path = os.path.join(output_dir, "metrics.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")
    written = [path]
    if record_dir:
        os.makedirs(record_dir, exist_ok=True)
        name = MODELS[report.get("model", DEFAULT_MODEL)].record_name
        recorded = os.path.join(record_dir, name.format(date=report["date"][:10]))
        shutil.copyfile(path, recorded)
        written.append(recorded)
    return written


def main(argv=None):
    args = parse_args(argv)
    if args.inference:
        return run_inference(args)
    return train_demo(args)


def inference_config(args):
    """The config of the inference mode, frozen: ``--config-file`` as given, else the ``--model``'s
    CPU config with the weights its training demo left (when no ``MODEL.WEIGHTS`` is given)."""
    from detectron2.config import get_cfg

    from segdep_d2 import add_segdep_config

    cfg = get_cfg()
    add_segdep_config(cfg)
    opts = list(args.opts)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    else:
        spec = MODELS[args.model]
        cfg.merge_from_file(os.path.join(REPO, spec.config))
        weights = os.path.join(REPO, spec.output, "train", "model_final.pth")
        if opt_value(opts, "MODEL.WEIGHTS") is None and not args.onnx:  # an ONNX file holds its weights
            if os.path.isfile(weights):
                print(f"[demo] using the weights of the {args.model} demo: {weights}")
                opts = ["MODEL.WEIGHTS", weights] + opts
            else:
                make = "make demo" if args.model == DEFAULT_MODEL else f"make demo-{args.model}"
                print(f"[demo] no trained {args.model} demo model ({weights}): run `{make}` first, or give "
                      "MODEL.WEIGHTS; drawing what a randomly initialised model predicts")
    cfg.merge_from_list(opts)
    cfg.freeze()
    return cfg


def run_inference(args):
    """Images or a video through the model (eager or ONNX): pictures, ``inference.json``, FPS."""
    sys.path.insert(0, REPO)
    import torch
    from detectron2.utils.logger import setup_logger

    import segdep_d2  # noqa: F401  (registers datasets, metadata and models)
    from segdep_d2.engine.inference import (
        BadInputError,
        FrameTimes,
        Predictor,
        image_files,
        run_on_images,
        run_on_video,
    )

    setup_logger(name="segdep_d2")
    cfg = inference_config(args)
    try:
        if args.input:
            image_files(args.input)  # a bad path fails before the model is built
        predictor = Predictor(cfg, onnx_path=args.onnx)
        if args.video_input:
            result = run_on_video(predictor, args.video_input, args.output)
        else:
            result = run_on_images(predictor, args.input, args.output)
    except (FileNotFoundError, BadInputError) as e:
        raise SystemExit(f"demo.py: error: {e}")
    report = {
        "config": args.config_file or MODELS[args.model].config,
        "config_overrides": list(args.opts),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "weights": cfg.MODEL.WEIGHTS or None,
        "onnx": args.onnx,
        "runtime": predictor.runtime,
        "device": "cpu" if args.onnx else cfg.MODEL.DEVICE,
        "torch_threads": torch.get_num_threads(),
        "inputs": [args.video_input] if args.video_input else list(args.input),
        **result,
    }
    path = os.path.join(args.output, "inference.json")
    with open(path, "w") as f:
        json.dump(_json_safe(report), f, indent=2, allow_nan=False)
        f.write("\n")
    what = f"{result['frames']} {'video frames' if args.video_input else 'images'}"
    print(f"[demo] {cfg.MODEL.META_ARCHITECTURE} ({predictor.runtime}) on {what}: {FrameTimes.describe(result)}")
    print(f"[demo] written: {', '.join(result['written'][:6])}{' ...' if len(result['written']) > 6 else ''} "
          f"and {path}")
    return report


def train_demo(args):
    spec = MODELS[args.model]
    datasets_root = os.path.join(args.output, "datasets")
    # Builtin dataset names (vkitti2_train / vkitti2_val) resolve under $DETECTRON2_DATASETS,
    # read when segdep_d2 is imported: set it first.
    os.environ["DETECTRON2_DATASETS"] = datasets_root
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.join(REPO, "tools"))

    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.utils.logger import setup_logger

    import segdep_d2  # noqa: F401
    from segdep_d2 import add_segdep_config
    from segdep_d2.data import DepthPanopticDatasetMapper
    from segdep_d2.engine import SegDepTrainer
    from visualize_depth_panoptic import visualize

    setup_logger(name="segdep_d2")
    setup_logger()
    torch.manual_seed(args.seed)
    generate_data(args, datasets_root)

    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, spec.config))
    cfg.merge_from_list(["OUTPUT_DIR", os.path.join(args.output, "train"), "SEED", str(args.seed), *args.opts])
    budget_s = args.train_minutes * 60.0
    schedule_path = os.path.join(cfg.OUTPUT_DIR, "schedule.json")
    resuming = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    saved = json.load(open(schedule_path)) if os.path.isfile(schedule_path) else None
    schedule, message = plan_schedule(args.max_iter, saved, resuming, budget_s, lambda: seconds_per_iteration(cfg))
    print(f"[demo] {message}")
    max_iter = schedule["max_iter"]
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(schedule_path, "w") as f:
        json.dump({k: v for k, v in schedule.items() if k != "source"}, f)
    checkpoint_every, message = checkpoint_period(args.opts, max_iter)
    print(f"[demo] {message}")
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_every
    cfg.freeze()

    print("[demo] evaluating the untrained model on the held-out scene (vkitti2_val)")
    torch.manual_seed(args.seed)
    untrained = evaluate(cfg, SegDepTrainer.build_model(cfg))

    print(f"[demo] training on vkitti2_train ({len(DatasetCatalog.get('vkitti2_train'))} frames)")
    trainer = SegDepTrainer(cfg)
    trainer.resume_or_load(resume=True)
    old_length = fit_scheduler_to_schedule(trainer.scheduler, max_iter)
    if old_length is not None:
        print(f"[demo] the resumed learning-rate schedule now ends at {max_iter} iterations (was {old_length})")
    trainer.register_hooks([time_budget_hook(budget_s)])
    start_iter = trainer.start_iter
    if start_iter >= max_iter:
        print(f"[demo] the checkpoint in {cfg.OUTPUT_DIR} is already at iteration {start_iter} "
              f"(schedule: {max_iter}): nothing to train")
    start = time.perf_counter()
    try:
        trainer.train()
        iterations = max(max_iter, start_iter)
    except TrainingBudgetReached as stop:
        iterations = stop.args[0]
        print(f"[demo] the {args.train_minutes:.0f}-minute training budget is spent: stopped after "
              f"{iterations} of {max_iter} iterations (re-run to resume)")
    train_seconds = time.perf_counter() - start

    print("[demo] evaluating the trained model")
    model = SegDepTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    trained = evaluate(cfg, model)

    val = DatasetCatalog.get("vkitti2_val")
    step = max(1, len(val) // args.num_vis)
    written = visualize(
        cfg, model.eval(), val[::step][: args.num_vis], os.path.join(args.output, "visualizations"),
        mapper=DepthPanopticDatasetMapper(cfg, is_train=False),
    )

    commit, clean = git_commit()
    report = build_report(
        args=args, schedule=schedule, checkpoint_every=checkpoint_every, iterations=iterations,
        iterations_this_run=iterations - start_iter, train_seconds=train_seconds, untrained=untrained,
        trained=trained, visualizations=[os.path.relpath(p, args.output) for p in written],
        torch_threads=torch.get_num_threads(), commit=commit, clean=clean,
    )
    paths = write_metrics(report, args.output, args.record)
    print()
    print(f"{spec.title} on the held-out synthetic scene, {iterations} iterations:")
    print(table([("untrained", untrained), ("trained", trained)], spec.table))
    print(spec.table_note)
    print(f"written: {' and '.join(paths)}, and {len(written)} images in "
          f"{os.path.join(args.output, 'visualizations')}")
    return report


if __name__ == "__main__":
    main()
