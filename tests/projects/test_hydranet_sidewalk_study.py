"""projects/HydraNet/tools/sidewalk_study.py at plumbing scale: every row of the study is trained,
evaluated and recorded on the synthetic sidewalk data, the rows' loss settings are the ones they claim,
and the distillation student sees segmentation on the depth frames (the numbers themselves are the
recorded study's, benchmarks/hydranet_sidewalk_study.json)."""
import importlib.util
import json
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "projects/HydraNet/tools/sidewalk_study.py")
ITERS, BATCH, FRAMES = 4, 2, 2


def _load_study():
    spec = importlib.util.spec_from_file_location("hydranet_sidewalk_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    module = _load_study()
    out = tmp_path_factory.mktemp("hydranet_sidewalk_study")
    argv = [
        "--output", str(out / "run"), "--record", str(out / "record"),
        "--train-folders", "1", "--val-folder", "10", "--frames", str(FRAMES),
        "--min-size-train", "64", "--min-size-test", "64", "--decoder-channels", "16",
        "--max-iter", str(ITERS), "--batch", str(BATCH), "--seed", "0", "--threads", "1",
        # the few-iteration teacher is nearly uniform: keep every pixel so that the pseudo-labels count
        "--min-confidence", "0.0",
    ]
    threads = torch.get_num_threads()
    try:
        report = module.main(argv)
    finally:
        torch.set_num_threads(threads)
    return module, report, out


def test_every_row_is_trained_evaluated_and_recorded(study):
    module, report, out = study
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == list(module.ROWS)
    # one folder per split and task: 2 Surface + 2 Polygon frames for mIoU, 2 Depth frames for depth
    assert report["splits"] == {"seg_train": 2 * FRAMES, "depth_train": FRAMES, "val": 3 * FRAMES,
                                "val_sem_seg": 2 * FRAMES, "val_depth": FRAMES}
    for name, row in rows.items():
        for key in ("mIoU", "pACC", "AbsRel", "RMSE", "d1"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (name, key)
        assert row["results"]["sem_seg"]["num_images"] == report["splits"]["val_sem_seg"]
        assert row["results"]["depth"]["num_images"] == report["splits"]["val_depth"]
        assert row["iterations"] == (0 if name == "untrained" else ITERS)
        for key in ("train_seconds", "sem_seg_samples", "depth_samples"):
            assert isinstance(row[key], (int, float)) and row[key] >= 0, (name, key)
        if name != "untrained":
            assert row["train_seconds"] > 0 and row["seconds_per_iteration"] > 0
            assert 0 < row["sem_seg_samples"] <= ITERS * BATCH and row["depth_samples"] <= ITERS * BATCH

    with open(out / "record" / module.RECORD_NAME) as f:
        recorded = json.load(f)
    assert recorded["rows"] == report["rows"]
    assert recorded["command"].startswith("python projects/HydraNet/tools/sidewalk_study.py --output")
    assert recorded["generator"]["depth_folders"] == [1, 10] and recorded["generator"]["frames"] == FRAMES
    assert (recorded["generator"]["height"], recorded["generator"]["width"]) == (376, 672)  # ZED VGA
    assert recorded["seed"] == 0 and recorded["device"] == "cpu" and recorded["torch_threads"] == 1
    assert recorded["settings"]["crop"] == [48, 48] and recorded["settings"]["train_folders"] == [1]
    assert len(recorded["class_weights"]["weights"]) == 24
    assert {"commit", "date", "settings", "pseudo_labels", "teacher", "table_markdown"} <= set(recorded)
    assert recorded["table_markdown"].count("\n") == len(module.ROWS) + 1
    assert os.path.isfile(out / "run" / "study.json")
    assert os.path.isfile(out / "run" / "datasets" / "sidewalk" / "generator_settings.json")


def test_splits_carry_their_labels(study):
    module, _, _ = study
    from segdep_d2.data.datasets import record_tasks

    assert {record_tasks(r) for r in DatasetCatalog.get(module.NAMES["seg_train"])} == {("sem_seg",)}
    assert {record_tasks(r) for r in DatasetCatalog.get(module.NAMES["depth_train"])} == {("depth",)}
    # the validation set mixes the tasks: each frame keeps the one label it has
    val = [record_tasks(r) for r in DatasetCatalog.get(module.NAMES["val"])]
    assert sorted(val) == sorted([("sem_seg",)] * 2 * FRAMES + [("depth",)] * FRAMES)


def test_rows_use_the_losses_they_name(study):
    module, report, _ = study
    settings = {r["row"]: r["settings"] for r in report["rows"]}
    paper = settings["paper losses"]
    assert paper["depth_output_type"] == "log" and paper["berhu_threshold_mode"] == "relative"
    assert paper["berhu_threshold"] == 0.2 and paper["depth_loss_weight"] == 0.5
    assert not paper["uncertainty_weighting"] and paper["class_weights_file"] is None
    for name in ("untrained", "safetrip", "safetrip+distillation"):
        shipped = settings[name]
        assert shipped["depth_output_type"] == "sigmoid" and shipped["max_depth"] == 80.0
        assert shipped["berhu_threshold_mode"] == "absolute" and shipped["berhu_threshold"] == 0.1
        assert shipped["uncertainty_weighting"]
        assert os.path.isabs(shipped["class_weights_file"]) and os.path.isfile(shipped["class_weights_file"])
    assert report["teacher"]["settings"] == settings["safetrip"]


def test_distillation_labels_the_depth_frames(study):
    module, report, _ = study
    rows = {r["row"]: r for r in report["rows"]}
    pseudo = report["pseudo_labels"]
    # the teacher labelled every depth training frame (none had a segmentation label)
    assert pseudo["name"] == module.NAMES["depth_train"] + "_pseudo_sem_seg"
    assert pseudo["images"] == pseudo["written"] == FRAMES and pseudo["skipped_labelled"] == 0
    assert pseudo["confident_fraction"] == 1.0 and pseudo["min_confidence"] == 0.0
    assert report["teacher"]["depth_samples"] == 0 and report["teacher"]["sem_seg_samples"] > 0
    assert report["teacher"]["train_datasets"] == [module.NAMES["seg_train"]]

    student, safetrip = rows["safetrip+distillation"], rows["safetrip"]
    assert student["train_datasets"] == [module.NAMES["seg_train"], pseudo["name"]]
    assert safetrip["train_datasets"] == [module.NAMES["seg_train"], module.NAMES["depth_train"]]
    assert student["sem_seg_samples"] > safetrip["sem_seg_samples"]
    # same seed, same data order: the depth frames drawn are the safetrip row's
    assert student["depth_samples"] == safetrip["depth_samples"] > 0


def test_flags_of_the_vkitti2_data_are_refused():
    module = _load_study()
    for argv in (["--val-scene", "Scene18"], ["--val-folder", "5"], ["--train-folders", "1,20"]):
        with pytest.raises(SystemExit):
            module.parse_args(argv)
    args = module.parse_args(["--min-size-train", "160,192"])
    assert args.crop == [144, 144] and args.train_folders == [1, 2, 3, 4] and args.val_folder == 10
