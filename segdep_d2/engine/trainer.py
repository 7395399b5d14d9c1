"""``SegDepTrainer``: detectron2's DefaultTrainer with segdep_d2's mapper, evaluators and solver."""
import contextlib
import logging
import os
from collections.abc import Mapping

import torch
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import DatasetEvaluators
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.projects.deeplab import build_lr_scheduler
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

from ..data import DepthPanopticDatasetMapper
from ..data.label_io import has_panoptic
from ..data.pseudo_labels import register_pseudo_labels
from ..evaluation import (
    DepthCompletionEvaluator,
    DepthEvaluator,
    LabelledSemSegEvaluator,
    OpenVocabEvaluator,
    PanopticDepthEvaluator,
    ReferringEvaluator,
    VocabularyDataLoader,
)
from ..modeling.meta_arch import model_outputs, reads_sparse_depth

__all__ = [
    "SegDepTrainer", "answers_referring_queries", "build_evaluators", "label_counts", "open_vocab_evaluator",
    "referring_record_count", "register_config_datasets", "training_dicts",
]

logger = logging.getLogger(__name__)

# Which record labels train each model output (panoptic labels give the semantic target too).
_LABELS_FOR_OUTPUT = {"sem_seg": ("sem_seg", "panoptic"), "depth": ("depth",), "panoptic_seg": ("panoptic",)}


def label_counts(records):
    """How many records carry each label type: ``{"sem_seg", "depth", "panoptic"} -> int``."""
    return {
        "sem_seg": sum("sem_seg_file_name" in r for r in records),
        "depth": sum("depth_file_name" in r for r in records),
        "panoptic": sum(has_panoptic(r) for r in records),
    }


def referring_record_count(records):
    """How many records carry referring ground truth: ``queries`` dicts (with ``instance_id``, as
    :func:`segdep_d2.data.datasets.vkitti2.load_vkitti2_referring` writes them) and the
    ``instance_file_name`` their target masks come from (what :class:`ReferringEvaluator` scores)."""
    return sum(
        bool(r.get("queries")) and all(isinstance(q, Mapping) for q in r["queries"]) and "instance_file_name" in r
        for r in records
    )


def answers_referring_queries(cfg):
    """Whether ``cfg.MODEL.META_ARCHITECTURE`` answers free-form ``queries`` with a ``referring`` output.

    Decided from the class, not from ``OUTPUTS``: a meta-architecture answers queries when it lists
    ``"referring"`` in ``OUTPUTS`` or implements the cached-answering protocol (``encode_image`` +
    ``answer``, SegDep's). ``OUTPUTS`` drives the mapper's targets and the other evaluators, and
    ``referring`` is an output only for inputs that carry ``queries``, so it is not required there.
    """
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if "referring" in model_outputs(cfg):
        return True
    return callable(getattr(arch, "encode_image", None)) and callable(getattr(arch, "answer", None))


def register_config_datasets(cfg):
    """Register the pseudo-label folders of ``DATASETS.PSEUDO_LABELS`` (written by
    tools/generate_pseudo_labels.py) under their ``<source>_pseudo_<task>`` names, so that
    ``DATASETS.TRAIN`` / ``TEST`` can list them in a config. Returns the names."""
    return [register_pseudo_labels(folder) for folder in cfg.DATASETS.PSEUDO_LABELS]


def training_dicts(cfg):
    """The records of every ``DATASETS.TRAIN`` dataset, concatenated; each dataset must carry a
    label the model learns from (a dataset with neither segmentation nor depth would train nothing
    and, mixed with others, only dilute the batches)."""
    outputs = model_outputs(cfg)
    wanted = sorted({label for out in outputs for label in _LABELS_FOR_OUTPUT.get(out, ())})
    dicts = []
    for name in cfg.DATASETS.TRAIN:
        records = get_detection_dataset_dicts([name], filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        counts = label_counts(records)
        if not any(counts[label] for label in wanted):
            raise ValueError(
                f"Training dataset {name!r} has no label {cfg.MODEL.META_ARCHITECTURE} learns from "
                f"({', '.join(wanted)}): its {len(records)} records carry "
                + ", ".join(f"{n} {kind}" for kind, n in counts.items())
                + " labels. Give it labels (e.g. tools/generate_pseudo_labels.py) or leave it out of DATASETS.TRAIN"
            )
        logger.info(
            f"Training on {name} ({len(records)} images): "
            + ", ".join(f"{n} with {kind} labels" for kind, n in counts.items())
        )
        dicts.extend(records)
    return dicts


def open_vocab_evaluator(cfg, dataset_name, output_folder=None):
    """Open-vocabulary mIoU with the class names and their synonyms, plus the held-out names
    (``MODEL.SEGDEP.HELD_OUT_CLASSES``) queried zero-shot when the model was trained without them."""
    held_out = list(cfg.MODEL.SEGDEP.HELD_OUT_CLASSES) or None
    return OpenVocabEvaluator(dataset_name, held_out_classes=held_out, output_dir=output_folder)


def build_evaluators(cfg, dataset_name, output_folder=None):
    """The evaluators the dataset's records call for: semantic (detectron2's SemSegEvaluator)
    where records carry ``sem_seg_file_name``, depth where they carry ``depth_file_name``,
    panoptic + depth-aware PQ where they carry panoptic labels, each only if the model produces
    that output (``model_outputs``: no panoptic evaluator for HydraNet), and referring segmentation +
    distance (:class:`ReferringEvaluator`) where records carry referring ``queries`` with their
    ``instance_file_name`` and the model answers queries (:func:`answers_referring_queries`; the test
    loader's mapper passes each record's query dicts to the model, which reads their ``"text"``). A
    partly labelled dataset is evaluated per label type on the records that have it; each result
    reports ``num_images``.

    Depth completion: for a model that reads sparse depth (:func:`reads_sparse_depth`) or when
    ``TEST.DEPTH.COMPLETION`` is set, the records with depth get a :class:`DepthCompletionEvaluator`
    (evaluator type ``"depth_completion"``: KITTI RMSE / MAE / iRMSE / iMAE, the NYUv2 numbers, and
    the sparse-only / nearest / bilinear baselines of the same sparse input, ``INPUT.SPARSE_DEPTH.
    NUM_SAMPLES`` points of the ground truth or the records' ``sparse_depth_file_name`` when 0) instead
    of the :class:`DepthEvaluator`."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    records = DatasetCatalog.get(dataset_name)
    counts = label_counts(records)
    num_referring = referring_record_count(records)
    logger.info(
        f"Evaluating {dataset_name} ({len(records)} images): "
        + ", ".join(f"{n} with {kind} labels" for kind, n in counts.items())
        + (f", {num_referring} with referring queries" if num_referring else "")
    )
    outputs = model_outputs(cfg)
    evaluators = []
    if counts["sem_seg"] and "sem_seg" in outputs:
        evaluators.append(LabelledSemSegEvaluator(dataset_name, output_dir=output_folder))
    completion = reads_sparse_depth(cfg) or cfg.TEST.DEPTH.COMPLETION
    if counts["depth"] and "depth" in outputs and completion:
        evaluators.append(
            DepthCompletionEvaluator(
                dataset_name,
                output_dir=output_folder,
                num_samples=cfg.INPUT.SPARSE_DEPTH.NUM_SAMPLES,
            )
        )
    elif counts["depth"] and "depth" in outputs:
        evaluators.append(
            DepthEvaluator(
                dataset_name,
                output_dir=output_folder,
                crop=cfg.TEST.DEPTH.CROP or None,
                median_scaling=cfg.TEST.DEPTH.MEDIAN_SCALING,
            )
        )
    if counts["sem_seg"] and "open_vocab_seg" in outputs:
        evaluators.append(open_vocab_evaluator(cfg, dataset_name, output_folder))
    if counts["panoptic"] and "panoptic_seg" in outputs:
        evaluators.append(
            PanopticDepthEvaluator(
                dataset_name, output_dir=output_folder, thresholds=tuple(cfg.TEST.DEPTH.DPQ_THRESHOLDS)
            )
        )
    if num_referring and answers_referring_queries(cfg):
        evaluators.append(ReferringEvaluator(dataset_name, output_dir=output_folder))
    if not evaluators and (any(counts.values()) or num_referring):
        raise ValueError(
            f"Dataset {dataset_name!r} has no ground truth for what {cfg.MODEL.META_ARCHITECTURE} predicts "
            f"({', '.join(outputs)}): its {len(records)} records carry "
            + ", ".join(f"{n} {kind}" for kind, n in counts.items())
        )
    if not evaluators:
        raise ValueError(
            f"Dataset {dataset_name!r} has no ground truth to evaluate: none of its {len(records)} records "
            "carries 'sem_seg_file_name', 'depth_file_name' or panoptic labels"
        )
    return DatasetEvaluators(evaluators)


@contextlib.contextmanager
def _ddp_for_cpu_models():
    """detectron2's DefaultTrainer wraps the model with ``create_ddp_model``, which always passes
    ``device_ids=[local_rank]``; DistributedDataParallel rejects that for CPU models, and
    multi-process CPU training (gloo) is something we support and test. Within this context a
    CPU model gets ``device_ids=None``."""
    original = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if next(model.parameters()).device.type == "cpu":
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class SegDepTrainer(DefaultTrainer):
    """DefaultTrainer with segdep_d2's mapper, evaluators, optimizer and DeepLab's LR schedule."""

    def __init__(self, cfg):
        register_config_datasets(cfg)
        with _ddp_for_cpu_models():
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(
            cfg, mapper=DepthPanopticDatasetMapper(cfg, is_train=True), dataset=training_dicts(cfg)
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        register_config_datasets(cfg)  # --eval-only builds no trainer
        loader = build_detection_test_loader(cfg, dataset_name, mapper=DepthPanopticDatasetMapper(cfg, is_train=False))
        if "open_vocab_seg" in model_outputs(cfg) and label_counts(DatasetCatalog.get(dataset_name))["sem_seg"]:
            # the names OpenVocabEvaluator scores reach the model as each input's "class_names"
            loader = VocabularyDataLoader(loader, open_vocab_evaluator(cfg, dataset_name).queries)
        # Referring records need no wrapping: the test-time mapper keeps a record's "queries" (the dicts,
        # untouched) and SegDep reads each dict's "text"; ReferringEvaluator compares the texts of dicts or
        # strings alike (queries_as_text). A model that answers no queries ignores them.
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)  # DeepLab's, adds WarmupPolyLR

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Panoptic-DeepLab's optimizer choice (SGD, Adam or AdamW) with detectron2's param groups. Every
        trainable parameter is in them (frozen ones, e.g. a frozen CLIP text tower, are not), HydraNet's
        learned task log-variances (``UncertaintyWeighting.log_variances``) included, those without
        weight decay.

        A model may declare its own parameter groups (SegDep does):

        * ``lr_factor(name) -> float``: the LR multiplier of the parameter ``name`` (as in
          ``named_parameters``), through detectron2's ``lr_factor_func``; e.g. SegDep's pretrained
          backbone at ``MODEL.SEGDEP.BACKBONE_LR_MULTIPLIER`` x ``SOLVER.BASE_LR`` (the seed's 1e-4
          backbone / 1e-3 heads);
        * ``NO_WEIGHT_DECAY``: parameter names (the last name component) kept out of weight decay,
          e.g. CLIP's learned temperature ``logit_scale``.
        """
        inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        lr_factor = getattr(inner, "lr_factor", None)
        overrides = {"log_variances": {"weight_decay": 0.0}}
        overrides.update({name: {"weight_decay": 0.0} for name in getattr(inner, "NO_WEIGHT_DECAY", ())})
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            # detectron2 passes "<module>.<param>"; under DDP the names start with "module."
            lr_factor_func=(lambda name: lr_factor(name[len("module."):] if name.startswith("module.") else name))
            if callable(lr_factor) else None,
            overrides=overrides,
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
