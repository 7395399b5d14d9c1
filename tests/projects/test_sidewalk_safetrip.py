"""The shipped Sidewalk-SafeTrip HydraNet config, run as its header says, on synthetic data in the sidewalk
release layout: datasets/prepare_sidewalk.py writes the class weights and checks the ZED disparity scale, a
SegFormer checkpoint folder (the seed's teacher, tiny and random here) labels the depth-only frames through
tools/generate_pseudo_labels.py, and tools/train_net.py trains HydraNet on Surface + Polygon + the
pseudo-labelled Depth frames, then evaluates the three validation sets."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from segdep_testing import save_tiny_segformer
from segdep_d2.data.datasets.sidewalk_categories import SIDEWALK_CLASSES
from segdep_d2.data.synthetic import generate_sidewalk

pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "projects/HydraNet/configs/Sidewalk-SafeTrip/hydranet_mbv2_sidewalk_safetrip.yaml")
CPU = ["MODEL.DEVICE", "cpu"]
SMALL_TRAIN = [
    *CPU, "SOLVER.AMP.ENABLED", "False", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "256",
    "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "256",
    "SOLVER.IMS_PER_BATCH", "3", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
]


def _run(args, cwd, datasets):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sidewalk_recipe_prepare_teacher_pseudo_labels_then_asymmetric_training(tmp_path):
    datasets = tmp_path / "datasets"
    generate_sidewalk(str(datasets / "sidewalk"), frames=2, seed=0)  # folders 009 (train) and 010 (val) per task

    # 0. class weights beside the data, and the disparity scale measured from the stereo pairs
    result = _run([os.path.join(REPO, "datasets", "prepare_sidewalk.py"), "--check-disparity-scale", "--no-progress"],
                  cwd=tmp_path, datasets=datasets)
    weights = json.loads((datasets / "sidewalk" / "class_weights.json").read_text())
    assert weights["classes"] == list(SIDEWALK_CLASSES) and weights["num_images"] == 4
    present = np.array(weights["pixel_counts"]) > 0
    assert present[SIDEWALK_CLASSES.index("sidewalk")] and present[SIDEWALK_CLASSES.index("pole")]
    assert np.mean(np.array(weights["weights"])[present]) == pytest.approx(1.0, abs=1e-4)
    check = json.loads((datasets / "sidewalk" / "disparity_scale_check.json").read_text())
    assert check["agrees"] and check["scale"] == pytest.approx(100, rel=0.05) and len(check["folders"]) == 2
    assert "agrees with --disparity-scale 100" in result.stdout

    # 1. the teacher: a SegFormer checkpoint folder with the 24 classes labels the depth frames
    teacher = save_tiny_segformer(tmp_path / "segformer", SIDEWALK_CLASSES)
    _run([os.path.join(REPO, "tools", "generate_pseudo_labels.py"), "--teacher-config", teacher,
          "--dataset", "sidewalk_depth_train", "--task", "sem_seg", "--min-confidence", "0.0", "--no-progress",
          "--output", "datasets/pseudo/sidewalk_depth_train_sem_seg", *CPU], cwd=tmp_path, datasets=datasets)
    manifest = json.loads((datasets / "pseudo" / "sidewalk_depth_train_sem_seg" / "manifest.json").read_text())
    assert len(manifest) == 2
    assert all(r["depth_format"] == "zed_disp16" and r["sem_seg_file_name"].startswith("sem_seg/") for r in manifest)

    # 2. HydraNet on the union, with the config's class weights, BerHu delta 0.1 and uncertainty weighting
    out = tmp_path / "out"
    result = _run([os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG, *SMALL_TRAIN,
                   "OUTPUT_DIR", str(out)], cwd=tmp_path, datasets=datasets)
    log = result.stdout + result.stderr
    assert "Training on sidewalk_surface_train (2 images): 2 with sem_seg labels, 0 with depth labels" in log
    assert "Training on sidewalk_polygon_train (2 images): 2 with sem_seg labels, 0 with depth labels" in log
    assert "Training on sidewalk_depth_train_pseudo_sem_seg (2 images): 2 with sem_seg labels, 2 with depth labels" in log
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last = [m for m in metrics if "loss_sem_seg" in m][-1]
    assert last["iteration"] == 3 and np.isfinite(last["total_loss"])
    assert "hydranet/log_variance_depth" in last and "hydranet/log_variance_sem_seg" in last  # Kendall weighting
    evaluation = {k: v for m in metrics for k, v in m.items() if "/" in k and not k.startswith("hydranet")}
    # one table per validation set: mIoU on the surface and polygon frames, depth metrics on the ZED frames
    assert any(k.startswith("sidewalk_surface_val/sem_seg/mIoU") for k in evaluation), sorted(evaluation)
    assert any(k.startswith("sidewalk_polygon_val/sem_seg/mIoU") for k in evaluation), sorted(evaluation)
    assert any(k.startswith("sidewalk_depth_val/depth/AbsRel") for k in evaluation), sorted(evaluation)
    assert evaluation["sidewalk_surface_val/sem_seg/num_images"] == 2
    assert evaluation["sidewalk_polygon_val/sem_seg/num_images"] == 2
    assert evaluation["sidewalk_depth_val/depth/num_images"] == 2
