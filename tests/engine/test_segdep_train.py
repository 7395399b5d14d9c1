"""SegDepTrainer on SegDep end to end, on the tiny synthetic VKITTI2 fixture: training through the
trainer's mapper, AdamW parameter groups and LR schedule, then evaluation (semantic + depth
evaluators; no panoptic targets, no PQ). The shipped CPU config as it is (hrnet_w18_small,
ViT-S-32-alt text tower, random weights), 64-pixel images, one thread."""
import os
import warnings

import numpy as np
import pytest
import torch

import segdep_d2  # noqa: F401
from detectron2.config import get_cfg

from segdep_d2 import add_segdep_config
from segdep_d2.data.datasets.vkitti2 import register_vkitti2
from segdep_d2.engine import SegDepTrainer, build_evaluators

pytest.importorskip("open_clip")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "projects/SegDep/configs/Synthetic-SegDep/segdep_hrnet18s_cpu.yaml")


@pytest.fixture(scope="module")
def datasets(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    register_vkitti2("test_segdep_train", root, scenes=("Scene01",), variations=("clone", "fog"))
    register_vkitti2("test_segdep_val", root, scenes=("Scene20",), variations=("clone",))
    return root


def _cfg(output_dir, *opts):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2",
         "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0", "DATASETS.TRAIN", "('test_segdep_train',)",
         "DATASETS.TEST", "('test_segdep_val',)", "OUTPUT_DIR", str(output_dir), *opts]
    )
    return cfg


def test_segdep_trains_and_evaluates(datasets, tmp_path):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "1000")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-init CLIP warning
            trainer = SegDepTrainer(cfg)
        trainer.resume_or_load(resume=False)
        # the seed's parameter groups: backbone at BASE_LR x 0.1, the rest at BASE_LR
        assert sorted({g["lr"] for g in trainer.optimizer.param_groups}) == pytest.approx([1e-4, 1e-3])
        trainer.train()
        storage = trainer.storage
        losses = np.array([v for v, _ in storage.history("total_loss").values()])
        assert len(losses) == 20 and np.isfinite(losses).all()
        assert losses[-5:].mean() < 0.85 * losses[:5].mean()
        for key in ("loss_sem_seg", "loss_depth", "loss_open_vocab", "loss_distill", "loss_align"):
            values = np.array([v for v, _ in storage.history(key).values()])
            assert np.isfinite(values).all(), key
        seg = np.array([v for v, _ in storage.history("loss_sem_seg").values()])
        assert seg[-5:].mean() < 0.9 * seg[:5].mean()
        assert storage.history("segdep/num_sem_seg_samples").latest() == 2
        assert storage.history("segdep/num_depth_samples").latest() == 2
        sample = next(iter(trainer.data_loader))[0]
        assert {"sem_seg", "depth", "depth_valid"} <= set(sample) and "center" not in sample

        assert [type(e).__name__ for e in build_evaluators(cfg, "test_segdep_val")._evaluators] == [
            "LabelledSemSegEvaluator", "DepthEvaluator", "OpenVocabEvaluator"
        ]
        results = SegDepTrainer.test(cfg, trainer.model)
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {"sem_seg", "depth", "open_vocab"}
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    # the test loader asked the model for the class names and their synonyms
    assert results["open_vocab"]["num_images"] == 2
    assert 0.0 <= results["open_vocab"]["mIoU_seen"] <= 100.0 and 0.0 <= results["open_vocab"]["mIoU_synonyms"] <= 100.0
    assert results["depth"]["num_images"] == 2 and np.isfinite(results["depth"]["AbsRel"])
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_held_out_names_are_evaluated_zero_shot(datasets, tmp_path):
    """MODEL.SEGDEP.HELD_OUT_CLASSES: the evaluation adds the held-out protocol (names never seen in
    training, queried by name) beside the seen and synonym vocabularies."""
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, "MODEL.SEGDEP.HELD_OUT_CLASSES", "['Car']")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init CLIP warning
        model = SegDepTrainer.build_model(cfg)
    results = SegDepTrainer.test(cfg, model)["open_vocab"]
    assert results["num_images"] == 2
    assert {"mIoU_seen", "mIoU_synonyms", "mIoU_held_out", "mIoU_held_out_seen_classes"} <= set(results)
    assert "IoU-Car@held_out" in results and 0.0 <= results["IoU-Car@held_out"] <= 100.0
