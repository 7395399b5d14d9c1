"""projects/HydraNet/tools/synthetic_study.py at plumbing scale: every row of the study is trained,
evaluated and recorded, and the label counts follow the asymmetric split (the numbers themselves are
the recorded study's, benchmarks/hydranet_synthetic_study.json)."""
import importlib.util
import json
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "projects/HydraNet/tools/synthetic_study.py")
ITERS, BATCH = 3, 2


def _load_study():
    spec = importlib.util.spec_from_file_location("hydranet_synthetic_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    module = _load_study()
    out = tmp_path_factory.mktemp("hydranet_study")
    argv = [
        "--output", str(out / "run"), "--record", str(out / "record"),
        "--train-scenes", "Scene01", "--val-scene", "Scene20", "--variations", "clone",
        "--frames", "4", "--frame-step", "3", "--height", "48", "--width", "160",
        "--min-size-train", "48", "--min-size-test", "48", "--decoder-channels", "32",
        "--max-iter", str(ITERS), "--batch", str(BATCH), "--seed", "0", "--threads", "1",
        # the 3-iteration teacher is nearly uniform: keep every pixel so that the pseudo-labels count
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
    for name, row in rows.items():
        for key in ("mIoU", "pACC", "AbsRel", "RMSE", "d1"):
            assert row[key] is not None and math.isfinite(row[key]), (name, key)
        assert row["results"]["depth"]["num_images"] == report["splits"]["val"] == 4
        assert row["iterations"] == (0 if name == "untrained" else ITERS)

    with open(out / "record" / module.RECORD_NAME) as f:
        recorded = json.load(f)
    assert recorded["rows"] == report["rows"]
    assert recorded["command"].startswith("python projects/HydraNet/tools/synthetic_study.py --output")
    assert recorded["generator"]["scenes"] == ["Scene01", "Scene20"] and recorded["seed"] == 0
    assert recorded["device"] == "cpu" and recorded["torch_threads"] == 1
    assert {"commit", "date", "settings", "pseudo_labels", "teacher", "table_markdown"} <= set(recorded)
    assert recorded["table_markdown"].count("\n") == len(module.ROWS) + 1
    assert os.path.isfile(out / "run" / "study.json")


def test_label_counts_follow_the_split(study):
    module, report, _ = study
    rows = {r["row"]: r for r in report["rows"]}
    samples = ITERS * BATCH

    # the halves carry one label type each; the validation scene carries both
    from segdep_d2.data.datasets import record_tasks

    assert {record_tasks(r) for r in DatasetCatalog.get(module.NAMES["seg_only"])} == {("sem_seg",)}
    assert {record_tasks(r) for r in DatasetCatalog.get(module.NAMES["depth_only"])} == {("depth",)}
    assert {record_tasks(r) for r in DatasetCatalog.get(module.NAMES["val"])} == {("sem_seg", "depth")}
    assert report["splits"] == {"train": 4, "seg_only": 2, "depth_only": 2, "val": 4}

    assert rows["full"]["sem_seg_samples"] == rows["full"]["depth_samples"] == samples
    for name in ("asymmetric", "asymmetric+UW"):  # no image with both labels
        assert rows[name]["sem_seg_samples"] + rows[name]["depth_samples"] == samples
        assert rows[name]["sem_seg_samples"] > 0 and rows[name]["depth_samples"] > 0
    assert rows["asymmetric+UW"]["uncertainty_weighting"] and not rows["asymmetric"]["uncertainty_weighting"]

    # the teacher labelled the whole depth-only half; the students see segmentation on every image
    pseudo = report["pseudo_labels"]
    assert pseudo["written"] == 2 and pseudo["skipped_labelled"] == 0 and pseudo["confident_fraction"] == 1.0
    assert report["teacher"]["depth_samples"] == 0 and report["teacher"]["sem_seg_samples"] == samples
    for name in ("distillation", "distillation+UW"):
        assert rows[name]["train_datasets"][1] == pseudo["name"]
        assert rows[name]["sem_seg_samples"] == samples > rows["asymmetric"]["sem_seg_samples"]
        # same seed, same data order: the depth frames drawn are the asymmetric row's
        assert rows[name]["depth_samples"] == rows["asymmetric"]["depth_samples"]
