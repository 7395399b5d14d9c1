import json
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.events import EventStorage

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.data.datasets import register_depth_panoptic_dataset
from segdep_d2.data.datasets.generic import load_depth_folders
from segdep_d2.data.datasets.vkitti2 import register_vkitti2
from segdep_d2.engine import SegDepTrainer, build_evaluators

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml")
SMALL = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0", "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "16",
]


@pytest.fixture(scope="module")
def datasets(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    register_vkitti2("test_engine_train", root, scenes=("Scene01",), variations=("clone", "fog"))
    register_vkitti2("test_engine_val", root, scenes=("Scene20",), variations=("clone",))
    return root


def _cfg(output_dir, *opts):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        SMALL + ["DATASETS.TRAIN", "('test_engine_train',)", "DATASETS.TEST", "('test_engine_val',)",
                 "OUTPUT_DIR", str(output_dir), *opts]
    )
    return cfg


def _run_tool(args, env_root, timeout=600):
    env = dict(os.environ, DETECTRON2_DATASETS=str(env_root), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_training_losses_are_finite_and_go_down(datasets, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "1000")
    trainer = SegDepTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    losses = np.array([v for v, _ in history])
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.8 * losses[:5].mean()
    for key in ("loss_sem_seg", "loss_depth", "loss_center", "loss_offset"):
        assert np.isfinite([v for v, _ in trainer.storage.history(key).values()]).all()
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_eval_only_on_checkpoint_reports_every_metric(datasets, tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path)
    model = SegDepTrainer.build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("ckpt")
    cfg.MODEL.WEIGHTS = str(tmp_path / "ckpt.pth")
    model = SegDepTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    results = SegDepTrainer.test(cfg, model)
    assert {"sem_seg", "depth", "panoptic_depth"} <= set(results)
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    assert results["depth"]["num_images"] == 2 and np.isfinite(results["depth"]["AbsRel"])
    for key in ("PQ", "SQ", "RQ", "DPQ@0.1", "DPQ@0.25", "DPQ@0.5", "DPQ"):
        assert np.isfinite(results["panoptic_depth"][key])


def _depth_only_folder(root, count=2, height=48, width=80):
    """Images + KITTI-encoded depth (metres * 256) pairing by stem, as in datasets/README.md."""
    (root / "image").mkdir(parents=True)
    (root / "groundtruth").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(root / "image" / f"{i:06d}.png"), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        depth = rng.uniform(2.0, 60.0, (height, width))
        cv2.imwrite(str(root / "groundtruth" / f"{i:06d}.png"), np.round(depth * 256).astype(np.uint16))
    return root


def _model(cfg):
    torch.manual_seed(0)
    return SegDepTrainer.build_model(cfg)


def test_eval_only_on_a_depth_only_dataset(datasets, tmp_path):
    """datasets/README.md's my_kitti_depth_val example: no semantic or panoptic labels at all."""
    folder = _depth_only_folder(tmp_path / "kitti_val")
    name = "test_engine_depth_only"
    register_depth_panoptic_dataset(
        name, categories=[{"id": 0, "name": "road", "isthing": 0}, {"id": 1, "name": "car", "isthing": 1}],
        image_root=str(folder / "image"), depth_root=str(folder / "groundtruth"),
        depth_format="kitti_png256", depth_ext=".png", depth_range=(1e-3, 80.0),
    )
    cfg = _cfg(tmp_path, "DATASETS.TEST", f"('{name}',)")
    results = SegDepTrainer.test(cfg, _model(cfg))
    assert set(results) == {"depth"}
    assert results["depth"]["num_images"] == 2 and np.isfinite(results["depth"]["AbsRel"])


def test_eval_on_a_partly_labelled_dataset_counts_each_label_type(datasets, tmp_path):
    """VKITTI2 frames (all labels) mixed with depth-only frames: each metric on the records that
    carry its labels, with the count."""
    folder = _depth_only_folder(tmp_path / "pseudo", count=3)
    labelled = DatasetCatalog.get("test_engine_val")
    depth_only = load_depth_folders(str(folder / "image"), str(folder / "groundtruth"), "kitti_png256")
    name = "test_engine_mixed"
    DatasetCatalog.register(name, lambda: labelled + depth_only)
    meta = MetadataCatalog.get("test_engine_val").as_dict()
    meta.pop("name")
    MetadataCatalog.get(name).set(**meta)
    cfg = _cfg(tmp_path, "DATASETS.TEST", f"('{name}',)")
    results = SegDepTrainer.test(cfg, _model(cfg))
    assert results["sem_seg"]["num_images"] == len(labelled) == 2
    assert results["panoptic_depth"]["num_images"] == len(labelled)
    assert results["depth"]["num_images"] == len(labelled) + 3
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0


def test_a_dataset_without_any_ground_truth_is_refused(tmp_path):
    folder = _depth_only_folder(tmp_path / "bare")
    name = "test_engine_bare"
    DatasetCatalog.register(name, lambda: [{"file_name": str(folder / "image" / "000000.png"), "image_id": "0"}])
    MetadataCatalog.get(name).set(depth_range=(1e-3, 80.0))
    with pytest.raises(ValueError, match="no ground truth"):
        build_evaluators(_cfg(tmp_path), name)


def test_train_net_cli_two_processes_then_resume(synthetic_vkitti2, tmp_path):
    root, _ = synthetic_vkitti2
    datasets_root = tmp_path / "datasets"
    datasets_root.mkdir()
    os.symlink(root, datasets_root / "vkitti2")  # the builtin vkitti2_train / vkitti2_val names
    out = tmp_path / "out"
    common = ["tools/train_net.py", "--config-file", CONFIG, "--dist-url", f"tcp://127.0.0.1:{_free_port()}"]
    opts = SMALL + ["SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out)]
    first = _run_tool([*common, "--num-gpus", "2", *opts, "SOLVER.MAX_ITER", "6"], datasets_root)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "World size: 2" in first.stdout + first.stderr  # DDP over gloo, two CPU processes
    assert (out / "model_final.pth").is_file() and (out / "model_0000003.pth").is_file()
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert max(r["iteration"] for r in records if "total_loss" in r) == 5

    # a run that died after its iteration-4 checkpoint: --resume continues from there (one process)
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000003.pth")
    common[-1] = f"tcp://127.0.0.1:{_free_port()}"
    second = _run_tool([*common, "--resume", *opts, "SOLVER.MAX_ITER", "6"], datasets_root)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "Starting training from iteration 4" in log
    assert "copypaste: Task: panoptic_depth" in log and "copypaste: Task: depth" in log

    # --eval-only on the final checkpoint
    third = _run_tool([*common, "--eval-only", *opts, "MODEL.WEIGHTS", str(out / "model_final.pth")], datasets_root)
    assert third.returncode == 0, third.stderr[-3000:]
    log = third.stdout + third.stderr
    assert "model_final.pth" in log and "Starting training" not in log
    assert all(f"copypaste: Task: {task}" in log for task in ("sem_seg", "depth", "panoptic_depth"))


HYDRANET_CONFIG = os.path.join(REPO, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")


def _hydranet_cfg(output_dir, *opts):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(HYDRANET_CONFIG)
    cfg.merge_from_list(
        ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
         "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0", "DATASETS.TRAIN", "('test_engine_train',)",
         "DATASETS.TEST", "('test_engine_val',)", "OUTPUT_DIR", str(output_dir), *opts]
    )
    return cfg


def test_hydranet_trains_and_evaluates_without_panoptic(datasets, tmp_path):
    """SegDepTrainer on HydraNet: losses fall, label counts are logged, no panoptic targets are
    made, and evaluation gives sem_seg and depth results only."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _hydranet_cfg(tmp_path, "SOLVER.MAX_ITER", "25", "SOLVER.CHECKPOINT_PERIOD", "1000")
        trainer = SegDepTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        losses = np.array([v for v, _ in trainer.storage.history("total_loss").values()])
        assert len(losses) == 25 and np.isfinite(losses).all()
        assert losses[-5:].mean() < 0.8 * losses[:5].mean()
        assert trainer.storage.history("hydranet/num_sem_seg_samples").latest() == 2
        assert trainer.storage.history("hydranet/num_depth_samples").latest() == 2
        sample = next(iter(trainer.data_loader))[0]
        assert {"sem_seg", "depth", "depth_valid"} <= set(sample) and "center" not in sample

        assert [type(e).__name__ for e in build_evaluators(cfg, "test_engine_val")._evaluators] == [
            "LabelledSemSegEvaluator", "DepthEvaluator"
        ]
        # --eval-only's path: a fresh model from the final checkpoint
        cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
        model = SegDepTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        results = SegDepTrainer.test(cfg, model)
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {"sem_seg", "depth"}
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    assert results["depth"]["num_images"] == 2 and np.isfinite(results["depth"]["AbsRel"])


def test_a_training_dataset_without_labels_is_refused_by_name(datasets, tmp_path):
    """A dataset with neither segmentation nor depth in DATASETS.TRAIN: a clear error naming it,
    before any training step."""
    folder = _depth_only_folder(tmp_path / "bare")
    name = "test_engine_train_bare"
    DatasetCatalog.register(name, lambda: [{"file_name": str(folder / "image" / f"{i:06d}.png"), "image_id": str(i),
                                            "height": 48, "width": 80} for i in range(2)])
    MetadataCatalog.get(name).set(**{k: v for k, v in MetadataCatalog.get("test_engine_train").as_dict().items()
                                     if k != "name"})
    cfg = _hydranet_cfg(tmp_path, "DATASETS.TRAIN", f"('test_engine_train', '{name}')")
    with pytest.raises(ValueError, match=f"Training dataset '{name}' has no label HydraNet learns from"):
        SegDepTrainer(cfg)


def test_pseudo_label_folders_in_the_config_are_registered_for_training_and_evaluation(datasets, tmp_path):
    """DATASETS.PSEUDO_LABELS: a config (and so tools/train_net.py) can list the folders of
    tools/generate_pseudo_labels.py and train / evaluate on their <dataset>_pseudo_<task> names."""
    from segdep_d2.data.pseudo_labels import generate_pseudo_labels

    torch.manual_seed(0)
    cfg = _hydranet_cfg(tmp_path / "teacher")
    teacher = SegDepTrainer.build_model(cfg).eval()
    folder = tmp_path / "pseudo"
    summary = generate_pseudo_labels(cfg, teacher, "test_engine_val", "depth", str(folder),
                                     overwrite_existing_labels=True, progress=False, register=False)
    name = summary["name"]
    assert name == "test_engine_val_pseudo_depth"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)

    cfg = _hydranet_cfg(tmp_path / "student", "DATASETS.PSEUDO_LABELS", f"['{folder}']",
                        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
                        "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1000")
    trainer = SegDepTrainer(cfg)
    assert name in DatasetCatalog.list()
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.storage.history("hydranet/num_depth_samples").latest() == 2  # pseudo depth reached it
    DatasetCatalog.remove(name)  # --eval-only builds no trainer: the test loader registers it too
    MetadataCatalog.remove(name)
    results = SegDepTrainer.test(cfg, trainer.model)
    assert results["depth"]["num_images"] == 2
    # Scored against the teacher's depth, not the real one: two steps from a near-constant start
    # stay close to a near-constant teacher, far from the synthetic scene's real depth.
    cfg.DATASETS.TEST = ("test_engine_val",)
    real = SegDepTrainer.test(cfg, trainer.model)
    assert results["depth"]["AbsRel"] < 0.2 * real["depth"]["AbsRel"]
