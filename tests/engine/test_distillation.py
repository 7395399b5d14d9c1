"""Issue 11, "Asymmetric annotations and distillation", end to end on synthetic VKITTI2: a third of
the frames of a drive keep only segmentation, a third only depth (``register_asymmetric_split``); a
teacher trained on the segmentation frames labels the depth frames (``generate_pseudo_labels``);
HydraNet trained on the union learns both tasks (per-task losses fall, both label types reach it,
and on the held-out fully labelled third its mIoU, depth AbsRel and RMSE beat the untrained model's)."""
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config
from segdep_d2.data.datasets import record_tasks, register_asymmetric_split
from segdep_d2.data.datasets.vkitti2 import load_vkitti2, vkitti2_metadata
from segdep_d2.data.pseudo_labels import generate_pseudo_labels, pseudo_dataset_name
from segdep_d2.data.synthetic import generate_vkitti2
from segdep_d2.engine import SegDepTrainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HYDRANET_CONFIG = os.path.join(REPO, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")

SEG_ONLY, DEPTH_ONLY, VAL = "test_distil_seg_only", "test_distil_depth_only", "test_distil_val"
TEACHER_ITER, STUDENT_ITER = 40, 150


@pytest.fixture(scope="module")
def asymmetric(tmp_path_factory):
    """One synthetic drive (Scene01, clone), 12 frames 3 apart, dealt out in turn: segmentation
    only, depth only, held out with every label (4 each).

    Why not the session's ``synthetic_vkitti2`` with Scene20 held out: its two depth frames are one
    view (clone and fog of frame 1), Scene01 lies farther than Scene20 (median depth 13 m vs 10.7
    m), and the untrained model's constant 10 m is nearly the best constant for AbsRel there, so a
    short CPU run that learns Scene01's depth scale often scores worse than the constant (measured
    with this test's schedule, seeds 0-4: AbsRel 0.31 / 0.29 / 0.49 / 0.46 / 0.36 vs 0.41).
    Held-out frames of the same drive test what this test is about (the asymmetric flow learns
    depth); generalising to another scene is the synthetic study's
    (projects/HydraNet/tools/synthetic_study.py)."""
    root = str(tmp_path_factory.mktemp("vkitti2_drive"))
    generate_vkitti2(root, scenes=("Scene01",), variations=("clone",), frames=12, frame_step=3,
                     height=64, width=208, seed=0)
    records = load_vkitti2(root, ("Scene01",), ("clone",))
    assert len(records) == 12 and all(record_tasks(r) == ("sem_seg", "depth") for r in records)
    meta = vkitti2_metadata()
    register_asymmetric_split(SEG_ONLY, records[0::3], ("sem_seg",), meta)
    register_asymmetric_split(DEPTH_ONLY, records[1::3], ("depth",), meta)
    register_asymmetric_split(VAL, records[2::3], ("sem_seg", "depth"), meta)
    return root


def _cfg(output_dir, train, max_iter, seed):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(HYDRANET_CONFIG)
    cfg.merge_from_list([
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
        # a 64-channel decoder (256 in the config) halves the step time on CPU: the test checks the
        # flow, not the capacity, and needs the iterations (100 steps of the 256-channel model
        # left depth no better than the untrained constant)
        "MODEL.HYDRANET.DECODER_CHANNELS", "64",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "100000", "SEED", str(seed),
        "DATASETS.TRAIN", str(tuple(train)), "DATASETS.TEST", f"('{VAL}',)", "OUTPUT_DIR", str(output_dir),
    ])
    return cfg


def _train(cfg):
    seed_all_rng(cfg.SEED)  # the initial weights, and the data order (detectron2's sampler draws its seed from numpy)
    trainer = SegDepTrainer(cfg)
    trainer.resume_or_load(resume=False)
    untrained = SegDepTrainer.test(cfg, trainer.model)
    trainer.train()
    return trainer, untrained


def _history(trainer, key):
    return {it: v for v, it in trainer.storage.history(key).values()}


def _falls(values, k=5, ratio=0.8):
    values = np.asarray(values, dtype=float)
    assert len(values) >= 2 * k and np.isfinite(values).all()
    return values[-k:].mean() < ratio * values[:k].mean()


def test_hydranet_learns_both_tasks_from_asymmetric_labels_and_pseudo_labels(asymmetric, tmp_path):
    # Seeds 0-4 measured with this test (1 thread; 43 s on a quiet 2-core machine, ~90 s beside other
    # jobs): held-out AbsRel 0.316 / 0.401 / 0.343 / 0.310 / 0.317 and RMSE 6.6 / 7.4 / 7.3 / 6.9 /
    # 7.9 m against the untrained model's 0.561 / 16.5 m (a constant 10 m); mIoU 15.2 / 7.7 / 7.5 /
    # 10.7 / 16.8 % against <= 0.5 %. Repeatable: seed 0 run twice gave the same figures.
    seed = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 1. the teacher: HydraNet on the segmentation-only third (its depth loss is exactly zero)
        teacher_cfg = _cfg(tmp_path / "teacher", [SEG_ONLY], TEACHER_ITER, seed)
        teacher, _ = _train(teacher_cfg)
        assert set(_history(teacher, "hydranet/num_depth_samples").values()) == {0}
        assert set(_history(teacher, "loss_depth").values()) == {0.0}
        assert _falls(list(_history(teacher, "loss_sem_seg").values()))

        # 2. it labels the depth-only third
        model = teacher.model.eval()
        summary = generate_pseudo_labels(
            teacher_cfg, model, DEPTH_ONLY, "sem_seg", str(tmp_path / "pseudo"), min_confidence=0.1, progress=False
        )
        pseudo = pseudo_dataset_name(DEPTH_ONLY, "sem_seg")
        assert summary["name"] == pseudo and summary["written"] == 4 and summary["skipped_labelled"] == 0
        assert 0.5 < summary["confident_fraction"] <= 1.0  # min_confidence 0.1 over 14 classes
        pseudo_records = DatasetCatalog.get(pseudo)
        assert all(record_tasks(r) == ("sem_seg", "depth") for r in pseudo_records)

        # 3. the student: HydraNet on the union
        student_cfg = _cfg(tmp_path / "student", [SEG_ONLY, pseudo], STUDENT_ITER, seed)
        student, untrained = _train(student_cfg)
        trained = SegDepTrainer.test(student_cfg, student.model)
    finally:
        torch.set_num_threads(threads)

    # both label types reached the model; the segmentation-only frames brought no depth
    sem_counts = _history(student, "hydranet/num_sem_seg_samples")
    depth_counts = _history(student, "hydranet/num_depth_samples")
    assert len(sem_counts) == len(depth_counts) == STUDENT_ITER
    assert set(sem_counts.values()) == {2}  # real + pseudo segmentation on every frame
    assert sum(depth_counts.values()) > 0 and min(depth_counts.values()) < 2

    sem_losses = _history(student, "loss_sem_seg")
    depth_losses = _history(student, "loss_depth")
    assert np.isfinite(list(sem_losses.values())).all() and np.isfinite(list(depth_losses.values())).all()
    assert _falls([sem_losses[it] for it in sorted(sem_losses)])
    # depth: only the iterations whose batch had depth (the others contribute exactly zero)
    assert all(depth_losses[it] == 0.0 for it, n in depth_counts.items() if n == 0)
    assert _falls([depth_losses[it] for it in sorted(depth_losses) if depth_counts[it] > 0])

    # held-out, fully labelled frames: better than the untrained model on both tasks
    assert trained["sem_seg"]["mIoU"] > untrained["sem_seg"]["mIoU"] + 2.0
    assert trained["depth"]["num_images"] == untrained["depth"]["num_images"] == 4
    assert trained["depth"]["AbsRel"] < untrained["depth"]["AbsRel"] - 0.05
    assert trained["depth"]["RMSE"] < 0.7 * untrained["depth"]["RMSE"]
