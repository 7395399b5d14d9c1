"""The synthetic depth completion config, run as a user runs it: tools/make_synthetic_dataset.py writes the
KITTI depth completion layout, tools/train_net.py trains DepthCompletion on kitti_depth_completion_train and
evaluates kitti_depth_completion_val with the devkit's metrics and the baselines of the same LiDAR input."""
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "projects/DepthCompletion/configs/Synthetic-DepthCompletion/depth_completion_cpu.yaml")


def _run(args, cwd, datasets=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    if datasets is not None:
        env["DETECTRON2_DATASETS"] = str(datasets)
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_synthetic_completion_trains_and_beats_nearest_fill(tmp_path):
    datasets = tmp_path / "datasets"
    _run([os.path.join(REPO, "tools", "make_synthetic_dataset.py"), "--format", "kitti_completion",
          "--out", str(datasets / "kitti"), "--frames", "5", "--height", "94", "--width", "310"], cwd=tmp_path)
    out = tmp_path / "out"
    result = _run([os.path.join(REPO, "tools", "train_net.py"), "--config-file", CONFIG,
                   "INPUT.MIN_SIZE_TRAIN", "(94,)", "INPUT.MIN_SIZE_TEST", "94", "SOLVER.MAX_ITER", "10",
                   "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)],
                  cwd=tmp_path, datasets=datasets)
    log = result.stdout + result.stderr
    assert "Training on kitti_depth_completion_train (4 images): 0 with sem_seg labels, 4 with depth labels" in log
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [m["loss_depth_l1"] for m in metrics if "loss_depth_l1" in m]
    assert losses and all(np.isfinite(losses))
    final = [m for m in metrics if "depth_completion/RMSE" in m][-1]
    assert final["depth_completion/num_images"] == 4  # the annotated val frames
    for baseline in ("sparse_only", "nearest", "bilinear"):
        assert final[f"depth_completion/{baseline}/num_images"] == 4
    # the model refines a fill of the same points: it beats filling each pixel from its nearest point
    assert final["depth_completion/RMSE"] < final["depth_completion/nearest/RMSE"]
    assert final["depth_completion/MAE"] < 5 * final["depth_completion/nearest/MAE"]
    assert (out / "model_final.pth").is_file()
