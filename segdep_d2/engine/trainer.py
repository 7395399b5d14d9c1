"""``SegDepTrainer``: detectron2's DefaultTrainer with segdep_d2's mapper, evaluators and solver."""
import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import DatasetEvaluators, SemSegEvaluator
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import DepthPanopticDatasetMapper, read_sem_seg
from ..evaluation import DepthEvaluator, PanopticDepthEvaluator

__all__ = ["SegDepTrainer", "build_evaluators"]


def _sem_seg_loader(dataset_name):
    """A ``sem_seg_loading_fn`` for SemSegEvaluator that decodes any label layout we read
    (VKITTI2's colour PNGs included) through :func:`read_sem_seg`."""
    records = {
        r["sem_seg_file_name"]: r for r in DatasetCatalog.get(dataset_name) if "sem_seg_file_name" in r
    }

    def load(filename, dtype=int):
        return read_sem_seg(records[filename]).astype(dtype)

    return load


def build_evaluators(cfg, dataset_name, output_folder=None):
    """Evaluators chosen from the dataset's metadata ``evaluator_type``:
    ``panoptic_depth`` -> semantic + depth + panoptic-depth; ``sem_seg_depth`` -> semantic +
    depth; ``depth`` -> depth only."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    evaluators = []
    if evaluator_type in ("panoptic_depth", "sem_seg_depth"):
        evaluators.append(
            SemSegEvaluator(dataset_name, output_dir=output_folder, sem_seg_loading_fn=_sem_seg_loader(dataset_name))
        )
    if evaluator_type in ("panoptic_depth", "sem_seg_depth", "depth"):
        evaluators.append(
            DepthEvaluator(
                dataset_name,
                output_dir=output_folder,
                crop=cfg.TEST.DEPTH.CROP or None,
                median_scaling=cfg.TEST.DEPTH.MEDIAN_SCALING,
            )
        )
    if evaluator_type == "panoptic_depth":
        evaluators.append(
            PanopticDepthEvaluator(
                dataset_name, output_dir=output_folder, thresholds=tuple(cfg.TEST.DEPTH.DPQ_THRESHOLDS)
            )
        )
    if not evaluators:
        raise NotImplementedError(
            f"No evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}; "
            "expected 'panoptic_depth', 'sem_seg_depth' or 'depth' in its metadata"
        )
    return DatasetEvaluators(evaluators)


class SegDepTrainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer.__init__, except for the DDP wrapper: detectron2 always passes
        # device_ids=[local_rank], which DistributedDataParallel rejects for CPU models, and
        # multi-process CPU training (gloo) is something we support and test.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_gpu = next(model.parameters()).device.type == "cuda"
        model = create_ddp_model(
            model, broadcast_buffers=False, **({} if on_gpu else {"device_ids": None})
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=DepthPanopticDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=DepthPanopticDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)  # DeepLab's, adds WarmupPolyLR

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Panoptic-DeepLab's optimizer choice (SGD or Adam) with detectron2's param groups."""
        params = get_default_optimizer_params(
            model,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        )
        optimizer_type = cfg.SOLVER.OPTIMIZER
        if optimizer_type == "SGD":
            return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
                params, cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV
            )
        if optimizer_type == "ADAM":
            return maybe_add_gradient_clipping(cfg, torch.optim.Adam)(params, cfg.SOLVER.BASE_LR)
        if optimizer_type == "ADAMW":
            return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
                params, cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
            )
        raise NotImplementedError(f"SOLVER.OPTIMIZER {optimizer_type!r}: expected SGD, ADAM or ADAMW")
