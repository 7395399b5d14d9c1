"""projects/SegDep/tools/synthetic_study.py at plumbing scale: every row is trained (2 iterations), evaluated
on the held-out referring split (closed-set, depth, referring, temporal stability) and recorded, and the
motion row's evaluation refines each held-out frame that follows its predecessor (frames fed one per batch,
in sequence order, with their sequence_id / frame_index). The numbers themselves are the recorded study's.

The CPU config with the tiny open_clip text tower of tests/conftest.py, 48 x 160 images, one thread."""
import importlib.util
import json
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog

pytest.importorskip("open_clip")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "projects/SegDep/tools/synthetic_study.py")
ITERS, FRAMES = 2, 3
ROW_KEYS = ("mIoU", "AbsRel", "d1", "ref_mIoU", "oIoU", "P@0.5", "distance_error", "flicker")


def _load_study():
    spec = importlib.util.spec_from_file_location("segdep_synthetic_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_open_clip):
    module = _load_study()
    # count what the models do: motion-head calls (training / inference) and the inference batches
    calls = {"motion_train": 0, "motion_eval": 0, "eval_batches": [], "prev_image": 0, "initial_weights": []}
    build_trainer = module.trainer_class

    def hooked_trainer_class():
        base = build_trainer()

        class Hooked(base):
            @classmethod
            def build_model(cls, cfg):
                model = super().build_model(cfg)
                calls["initial_weights"].append({k: v.clone() for k, v in model.state_dict().items()})

                def on_model(m, args):
                    if m.training:
                        calls["prev_image"] += sum(x.get("prev_image") is not None for x in args[0])
                    else:
                        calls["eval_batches"].append(
                            (id(m), bool(m.temporal), [(x.get("sequence_id"), x.get("frame_index")) for x in args[0]]))

                def on_motion(m, args, output):
                    calls["motion_train" if m.training else "motion_eval"] += 1

                model.register_forward_pre_hook(on_model)
                if model.motion_head is not None:
                    model.motion_head.register_forward_hook(on_motion)
                return model

        return Hooked

    module.trainer_class = hooked_trainer_class
    out = tmp_path_factory.mktemp("segdep_study")
    argv = [
        "--output", str(out / "run"), "--record", str(out / "record"),
        "--train-scenes", "Scene01", "--val-scene", "Scene20", "--variations", "clone",
        "--frames", str(FRAMES), "--height", "48", "--width", "160",
        "--min-size-train", "48", "--min-size-test", "48", "--max-iter", str(ITERS), "--batch", "2",
        "--seed", "0", "--threads", "1",
        "MODEL.SEGDEP.CLIP_MODEL", tiny_open_clip, "MODEL.SEGDEP.PROMPT_TEMPLATES", "['a photo of a {}.']",
    ]
    threads = torch.get_num_threads()
    try:
        report = module.main(argv)
    finally:
        torch.set_num_threads(threads)
    return module, report, out, calls


def test_every_row_is_trained_evaluated_and_recorded(study):
    module, report, out, _ = study
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == list(module.ROWS) == ["untrained", "plain", "motion"]
    for name, row in rows.items():
        results = row["results"]
        for key in ROW_KEYS:
            if key == "distance_error" and (row[key] is None or not math.isfinite(row[key])):
                # no query got a mask, so no distance to compare (an untrained head): recorded as null
                assert results["referring"]["num_without_depth"] == results["referring"]["num_queries"], name
                continue
            assert row[key] is not None and math.isfinite(row[key]), (name, key)
        assert {"sem_seg", "depth", "referring", "temporal"} <= set(results)
        assert results["referring"]["num_queries"] == report["splits"]["val_queries"] > 0
        assert results["temporal"]["num_pairs"] > 0
        assert row["iterations"] == (0 if name == "untrained" else ITERS)
    assert rows["motion"]["temporal"] and not rows["plain"]["temporal"]

    with open(out / "record" / module.RECORD_NAME) as f:
        recorded = json.load(f)
    assert recorded["rows"] == report["rows"]
    assert recorded["command"].startswith("python projects/SegDep/tools/synthetic_study.py --output")
    assert recorded["generator"]["scenes"] == ["Scene01", "Scene20"] and recorded["generator"]["flow"] is True
    assert recorded["generator"]["frame_step"] == 1 and recorded["seed"] == 0
    assert recorded["device"] == "cpu" and recorded["torch_threads"] == 1
    assert {"commit", "date", "settings", "splits", "wall_seconds", "table_markdown"} <= set(recorded)
    header = recorded["table_markdown"].splitlines()[0]
    for column in ("mIoU", "AbsRel", "δ1", "ref mIoU", "oIoU", "P@0.5", "dist err [m]", "flicker [%]",
                   "iterations", "train s"):
        assert column in header
    assert recorded["table_markdown"].count("\n") == len(module.ROWS) + 1
    assert os.path.isfile(out / "run" / "study.json")


def test_the_motion_row_trains_with_previous_frames_and_refines_consecutive_frames(study):
    module, report, _, calls = study
    if calls["prev_image"] == 0:
        pytest.skip("the training mapper delivers no prev_image (MODEL.SEGDEP.TEMPORAL): the motion row "
                    "trains without previous frames")
    rows = {r["row"]: r for r in report["rows"]}
    assert report["splits"]["train_with_previous_frame"] > 0
    assert calls["motion_train"] > 0 and rows["motion"]["temporal_samples"] > 0

    # the held-out frames reach the model one per batch, in sequence order, with sequence_id / frame_index
    val = DatasetCatalog.get(module.NAMES["val"])
    order = [(r["sequence_id"], r["frame_index"]) for r in val]
    assert order == sorted(order)
    models = {model for model, temporal, _ in calls["eval_batches"] if temporal}
    assert len(models) == 1  # the motion row's model
    batches = [keys for model, _, keys in calls["eval_batches"] if model in models]
    # evaluated once (the trainer's own last evaluation), every frame in its own batch
    assert batches == [[key] for key in order]
    # every frame whose predecessor was fed just before it is refined, once
    consecutive = sum((seq, index - 1) == prev for (seq, index), prev in zip(order[1:], order[:-1]))
    assert consecutive > 0 and calls["motion_eval"] == consecutive


def test_every_row_starts_from_the_same_weights(study):
    untrained, plain, motion = study[3]["initial_weights"]  # the models built, in row order
    assert set(untrained) == set(plain) < set(motion)
    assert all(k.startswith(("motion_head.", "temporal_fusion.")) for k in set(motion) - set(plain))
    for key, value in plain.items():
        assert torch.equal(untrained[key], value) and torch.equal(motion[key], value), key



def test_the_motion_row_needs_consecutive_frames():
    module = _load_study()
    assert module.parse_args(["--frame-step", "2", "--rows", "untrained,plain"]).frame_step == 2
    for argv in (["--frame-step", "2"], ["MODEL.SEGDEP.TEMPORAL", "True"]):
        with pytest.raises(SystemExit):
            module.parse_args(argv)
