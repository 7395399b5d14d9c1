#!/usr/bin/env python
"""`make demo`: the whole Panoptic-DepthLab pipeline on the embedded synthetic data, on CPU.

1. write a synthetic street-scene dataset in the real Virtual KITTI 2 layout
   (``output/demo/datasets/vkitti2``; Scene20 is the held-out validation scene, as for VKITTI2);
2. evaluate the untrained model, train the small CPU config within a time budget, evaluate again;
3. draw a few validation frames (panoptic overlay with "class 12.3 m", depth, error);
4. write ``output/demo/metrics.json`` and print the trained model beside the untrained one.

Re-running resumes training from the last checkpoint in ``output/demo/train`` (nothing is lost).

    python tools/demo.py [--output output/demo] [--max-iter 900] [--train-minutes 13] [KEY VALUE ...]
"""
import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml")
GENERATOR_FLAGS = ("scenes", "variations", "frames", "frame_step", "height", "width", "seed")
TABLE = (  # (column, result section, key, scale to a fraction)
    ("mIoU", "sem_seg", "mIoU", 0.01),
    ("PQ", "panoptic_depth", "PQ", 0.01),
    ("DPQ", "panoptic_depth", "DPQ", 0.01),
    ("AbsRel", "depth", "AbsRel", 1.0),
    ("d1", "depth", "d1", 1.0),
    ("segment AbsRel", "panoptic_depth", "segment_AbsRel", 1.0),
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(REPO, "output", "demo"))
    p.add_argument("--scenes", default="Scene01,Scene02,Scene06,Scene18,Scene20")
    p.add_argument("--variations", default="clone,fog,morning,sunset")
    p.add_argument("--frames", type=int, default=32, help="frames per scene and variation")
    p.add_argument("--frame-step", type=int, default=12, help="every k-th frame of each drive")
    p.add_argument("--height", type=int, default=188)
    p.add_argument("--width", type=int, default=621)
    p.add_argument("--max-iter", type=int, default=900, help="training iterations, if the time budget allows")
    p.add_argument("--train-minutes", type=float, default=13.0,
                   help="time budget for training: the schedule is shortened to fit it (measured speed)")
    p.add_argument("--num-vis", type=int, default=4, help="validation frames to draw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the model config")
    return p.parse_args()


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


def table(rows):
    header = f"{'model':<12s}" + "".join(f"{name:>16s}" for name, *_ in TABLE)
    lines = [header, "-" * len(header)]
    for label, results in rows:
        cells = []
        for _, section, key, scale in TABLE:
            value = results.get(section, {}).get(key)
            cells.append(f"{value * scale:>16.3f}" if value is not None else f"{'-':>16s}")
        lines.append(f"{label:<12s}" + "".join(cells))
    return "\n".join(lines)


def main():
    args = parse_args()
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
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["OUTPUT_DIR", os.path.join(args.output, "train"), "SEED", str(args.seed), *args.opts])
    budget_s = args.train_minutes * 60.0
    already_done = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if already_done and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "schedule.json")):
        max_iter = json.load(open(os.path.join(cfg.OUTPUT_DIR, "schedule.json")))["max_iter"]
        print(f"[demo] resuming the schedule of {max_iter} iterations from {cfg.OUTPUT_DIR}")
    else:
        step_s = seconds_per_iteration(cfg)
        # 5% margin: the measured step is a little slower than the trainer's steady pace, and
        # time_budget_hook checkpoints and stops should the machine slow down anyway.
        max_iter = max(50, min(args.max_iter, int(0.95 * budget_s / step_s)))
        print(f"[demo] one training step takes {step_s:.2f} s here: training {max_iter} iterations "
              f"(asked {args.max_iter}, budget {args.train_minutes:.0f} min)")
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "schedule.json"), "w") as f:
            json.dump({"max_iter": max_iter, "seconds_per_iter": step_s}, f)
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = max(50, max_iter // 4)
    cfg.freeze()

    print("[demo] evaluating the untrained model on the held-out scene (vkitti2_val)")
    torch.manual_seed(args.seed)
    untrained = evaluate(cfg, SegDepTrainer.build_model(cfg))

    print(f"[demo] training on vkitti2_train ({len(DatasetCatalog.get('vkitti2_train'))} frames)")
    trainer = SegDepTrainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.register_hooks([time_budget_hook(budget_s)])
    start = time.perf_counter()
    try:
        trainer.train()
        iterations = max_iter
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

    report = {
        "config": os.path.relpath(CONFIG, REPO),
        "config_overrides": args.opts,
        "train_dataset": "vkitti2_train (synthetic, Scene01/02/06/18)",
        "test_dataset": "vkitti2_val (synthetic, held-out Scene20)",
        "generator": {k: getattr(args, k) for k in GENERATOR_FLAGS},
        "max_iter": max_iter,
        "iterations_trained": iterations,
        "train_seconds_this_run": train_seconds,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "untrained": untrained,
        "trained": trained,
        "visualizations": [os.path.relpath(p, args.output) for p in written],
    }
    with open(os.path.join(args.output, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    print()
    print(f"Panoptic-DepthLab (ResNet-18, CPU) on the held-out synthetic scene, {iterations} iterations:")
    print(table([("untrained", untrained), ("trained", trained)]))
    print("(mIoU, PQ, DPQ as fractions; AbsRel and segment AbsRel: lower is better; d1: higher is better)")
    print(f"written: {os.path.join(args.output, 'metrics.json')} and {len(written)} images in "
          f"{os.path.join(args.output, 'visualizations')}")


if __name__ == "__main__":
    main()
