"""The shipped KITTI HydraNet config, run as its header says, on synthetic data in the KITTI layout:
a 19-class teacher labels the depth-only frames (tools/generate_pseudo_labels.py), and
tools/train_net.py trains on the semantic frames plus the pseudo-labelled depth frames, the folder
registered through the config's DATASETS.PSEUDO_LABELS (a path relative to where train_net runs)."""
import json
import os
import subprocess
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from segdep_d2 import add_segdep_config
from segdep_d2.data.synthetic import generate_kitti

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KITTI_CONFIG = os.path.join(REPO, "projects/HydraNet/configs/KITTI-HydraNet/hydranet_mbv2_kitti_asymmetric.yaml")
SMALL = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "256"]


def _run(args, cwd, datasets):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_kitti_config_recipe_teacher_pseudo_labels_then_asymmetric_training(tmp_path):
    datasets = tmp_path / "datasets"
    generate_kitti(str(datasets / "kitti"), frames=3, semantic_frames=2, height=64, width=212, seed=0)

    # a teacher with the KITTI classes (the 19 Cityscapes train ids), saved as training saves one
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(KITTI_CONFIG)
    cfg.merge_from_list(SMALL)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("teacher")

    _run([os.path.join(REPO, "tools", "generate_pseudo_labels.py"), "--teacher-config", KITTI_CONFIG,
          "--teacher-weights", str(tmp_path / "teacher.pth"), "--dataset", "kitti_depth_train", "--task", "sem_seg",
          "--min-confidence", "0.0", "--no-progress", "--output", "datasets/pseudo/kitti_depth_train_sem_seg", *SMALL],
         cwd=tmp_path, datasets=datasets)
    manifest = json.loads((datasets / "pseudo" / "kitti_depth_train_sem_seg" / "manifest.json").read_text())
    assert len(manifest) == 2 and all("sem_seg_file_name" in r and "depth_file_name" in r for r in manifest)

    out = tmp_path / "out"
    result = _run([os.path.join(REPO, "tools", "train_net.py"), "--config-file", KITTI_CONFIG, *SMALL,
                   "INPUT.MIN_SIZE_TRAIN", "(64,)", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
                   "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)],
                  cwd=tmp_path, datasets=datasets)
    log = result.stdout + result.stderr
    assert "Training on kitti_sem_seg_train (2 images): 2 with sem_seg labels, 0 with depth labels" in log
    assert "Training on kitti_depth_train_pseudo_sem_seg (2 images): 2 with sem_seg labels, 2 with depth labels" in log
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last = [m for m in metrics if "loss_sem_seg" in m][-1]  # detectron2 writes every 20 iterations and at the end
    assert last["iteration"] == 3 and last["hydranet/num_sem_seg_samples"] == 2  # real or pseudo on every frame
    assert 0 <= last["hydranet/num_depth_samples"] <= 2 and last["total_loss"] > 0
    evaluation = [m for m in metrics if "depth/AbsRel" in m]
    assert evaluation and evaluation[-1]["depth/num_images"] == 2  # kitti_depth_val, Garg crop, 80 m cap
