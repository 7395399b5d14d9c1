"""Pseudo-labels: a teacher model fills in the label type a dataset lacks (HydraNet's distillation).

``tools/generate_pseudo_labels.py`` is the command line; this module is the logic::

    cfg, model = load_teacher("teacher.yaml", "model_final.pth")
    summary = generate_pseudo_labels(cfg, model, "my_depth_only_train", "sem_seg", "out/pseudo")
    # later, in another process (training):
    register_pseudo_labels("out/pseudo")          # -> "my_depth_only_train_pseudo_sem_seg"

The teacher is any model ``build_model(cfg)`` makes (segdep_d2's meta-architectures, or detectron2's
``SemanticSegmentor`` and friends) whose inference output has ``sem_seg`` (C x H x W scores) or
``depth`` (H x W metres). Each image goes through detectron2's test-time preprocessing
(``cfg.INPUT.FORMAT``, ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``, as ``DatasetMapper``)
and the outputs come back at the original size (``height`` / ``width`` in the model input).

Or a Hugging Face SegFormer checkpoint folder (what ``SegformerForSemanticSegmentation.save_pretrained``
writes, optionally with ``SegformerImageProcessor.save_pretrained``'s ``preprocessor_config.json``),
such as the SafeTrip-Q seed's mit-b2 teacher (semantic pseudo-labels only)::

    cfg, model = load_teacher("checkpoints/segformer_b2")      # a folder: no weights argument
    cfg, model = load_hf_teacher("checkpoints/segformer_b2", device="cpu")    # the same, explicitly

It is loaded from the local files only (``local_files_only=True``, never a download) and wrapped in
:class:`SegformerTeacher`, which speaks detectron2's model interface; ``cfg`` is a detectron2 config
describing it (:func:`load_hf_teacher`), and :func:`teacher_classes` gives its ``config.id2label``
names in id order. ``transformers`` is imported only for such a teacher.

Written under ``output_dir``:

* ``sem_seg/<stem>.png``: uint8 label-id PNG (the dataset's contiguous train ids, 255 = ignore):
  the class of highest softmax probability, 255 where that probability is under ``min_confidence``
  (or where the teacher's class has no counterpart in the dataset's classes).
* ``depth/<stem>.<png|npy>``: depth in the dataset's own encoding (:func:`choose_depth_format`),
  through :func:`segdep_d2.data.depth_io.write_depth`; pixels the teacher gives no finite positive
  depth are 0 (invalid).
* ``manifest.json``: a JSON list of detectron2 dicts: every record of the dataset, with the new
  ``sem_seg_file_name`` or ``depth_file_name`` / ``depth_format`` where a pseudo-label was written
  (paths relative to the folder, so it can be moved) and ``pseudo_labels: [task, ...]``.
* ``pseudo_labels.json``: what made them (source dataset, task, teacher, settings) and a snapshot of
  the source dataset's metadata, for :func:`register_pseudo_labels` in a process that does not know
  the source dataset.

Resumable: each file is written under a temporary name and renamed (``segdep_d2.utils.files``), a
re-run removes leftover temporary files, skips images whose pseudo-label exists and decodes through
segdep_d2's own readers at the image's size, and redoes those that do not (truncated, wrong size).
A folder written with other settings (teacher, threshold, class map, depth format) is refused
unless ``overwrite=True``.
"""
import collections
import copy
import json
import logging
import os
import re

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ..utils.files import json_writer, png_writer, remove_leftovers, replace_into
from .datasets.generic import MANIFEST_PATH_KEYS, load_depth_manifest, resolve_depth_format
from .depth_io import DEPTH_FORMATS, read_depth, write_depth
from .label_io import read_sem_seg

__all__ = [
    "PSEUDO_TASKS",
    "MANIFEST_NAME",
    "INFO_NAME",
    "PseudoLabelError",
    "ClassMismatchError",
    "pseudo_dataset_name",
    "load_teacher",
    "load_hf_teacher",
    "is_hf_checkpoint",
    "SegformerTeacher",
    "teacher_classes",
    "read_class_map",
    "class_lookup",
    "scores_to_probabilities",
    "sem_seg_pseudo_label",
    "choose_depth_format",
    "generate_pseudo_labels",
    "register_pseudo_labels",
]

logger = logging.getLogger(__name__)

PSEUDO_TASKS = ("sem_seg", "depth")
MANIFEST_NAME = "manifest.json"
INFO_NAME = "pseudo_labels.json"
IGNORE_LABEL = 255
# keys that describe a record's ground-truth segmentation; replaced together by a pseudo sem_seg
# (cvat_*: the sidewalk dataset's CVAT mask labels)
_SEGMENTATION_KEYS = ("sem_seg_file_name", "label_format", "colors_file_name", "instance_file_name",
                      "pan_seg_file_name", "segments_info", "cvat_image_name", "cvat_label_to_id",
                      "cvat_attribute_to_id")
# Hugging Face checkpoint folders
HF_CONFIG_NAME = "config.json"
HF_PREPROCESSOR_NAME = "preprocessor_config.json"
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")
# SegformerImageProcessor's defaults (transformers' IMAGENET_DEFAULT_MEAN / _STD, 1/255, 512 x 512)
_SEGFORMER_PREPROCESSOR = {
    "do_resize": True, "size": {"height": 512, "width": 512},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
}


class PseudoLabelError(ValueError):
    """A teacher, dataset, class map or output folder that cannot make pseudo-labels (the message
    says what is wrong); the command line prints it without a traceback."""


class ClassMismatchError(PseudoLabelError):
    """The teacher's classes are not the dataset's and no class map says how they correspond."""


def pseudo_dataset_name(dataset_name, task):
    return f"{dataset_name}_pseudo_{task}"


def _has_label(record, task):
    return ("sem_seg_file_name" in record or "pan_seg_file_name" in record) if task == "sem_seg" \
        else "depth_file_name" in record


# ---------------------------------------------------------------------------------------------
# the teacher
# ---------------------------------------------------------------------------------------------


def load_teacher(config_file, weights=None, opts=()):
    """``(cfg, model)``: the config as tools/train_net.py builds it (``get_cfg`` +
    ``add_segdep_config``, which adds detectron2's DeepLab keys, + the file + ``opts``) with
    ``MODEL.WEIGHTS = weights``, and its model in eval mode with the weights loaded through
    ``DetectionCheckpointer`` (.pth / .pkl, d2 model-zoo conversions included).

    ``config_file`` may instead be a Hugging Face checkpoint folder (a directory with
    ``config.json``): then ``weights`` is None (the folder holds them) and this is
    :func:`load_hf_teacher` ``(config_file, opts=opts)``.
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from ..config import add_segdep_config

    if os.path.isdir(config_file):
        if weights and os.path.abspath(weights) != os.path.abspath(config_file):
            raise PseudoLabelError(
                f"the teacher {config_file} is a folder (a Hugging Face checkpoint), which holds its own weights: "
                f"pass no teacher weights (--teacher-weights) with it, got {weights}"
            )
        return load_hf_teacher(config_file, opts=opts)
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Teacher config not found: {config_file}")
    if not weights:
        raise PseudoLabelError(
            f"the teacher config {config_file} needs its weights (--teacher-weights FILE, weights=); only a "
            f"Hugging Face checkpoint folder is a teacher by itself"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"Teacher weights not found: {weights}")
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    return cfg, model.eval()


def is_hf_checkpoint(path):
    """Whether ``path`` is a Hugging Face checkpoint folder (a directory with ``config.json``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, HF_CONFIG_NAME))


def _hf_teacher(cfg):
    """The ``HF_TEACHER`` node of a config :func:`load_hf_teacher` made, else None."""
    node = cfg.get("HF_TEACHER", None)
    return node if node is not None and node.get("PATH", None) else None


def _read_json(path, what):
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PseudoLabelError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from e
    if not isinstance(value, dict):
        raise PseudoLabelError(f"{path}: the {what} is not a JSON object")
    return value


def _segformer_preprocessing(folder):
    """The preprocessing of ``folder``'s ``preprocessor_config.json`` (SegformerImageProcessor's
    defaults for what it leaves out, or without it)."""
    settings = dict(_SEGFORMER_PREPROCESSOR)
    path = os.path.join(folder, HF_PREPROCESSOR_NAME)
    if os.path.isfile(path):
        settings.update({k: v for k, v in _read_json(path, "image processor config").items()
                         if k in _SEGFORMER_PREPROCESSOR and v is not None})
    else:
        logger.info(f"{folder} has no {HF_PREPROCESSOR_NAME}: SegFormer's default preprocessing "
                    f"(ImageNet mean / std, shortest edge 512)")
    mean, std = settings["image_mean"], settings["image_std"]
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise PseudoLabelError(f"{path}: image_mean {mean} / image_std {std}: expected 3 values each, std > 0")
    if not settings["do_normalize"]:
        mean, std = [0.0] * 3, [1.0] * 3
    rescale = float(settings["rescale_factor"]) if settings["do_rescale"] else 1.0
    size = settings["size"] if settings["do_resize"] else None
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if size is None:
        min_size, max_size = 0, 0  # ResizeShortestEdge(0): the image as it is
    elif size.get("shortest_edge"):
        min_size = int(size["shortest_edge"])
        max_size = int(size.get("longest_edge") or max(1333, 2 * min_size))
    elif size.get("height") and size.get("width"):
        min_size = int(min(size["height"], size["width"]))
        max_size = int(size.get("longest_edge") or max(1333, 2 * min_size))
    else:
        raise PseudoLabelError(f"{path}: size {size}: expected shortest_edge or height and width")
    return {"image_mean": mean, "image_std": std, "rescale_factor": rescale,
            "min_size_test": min_size, "max_size_test": max_size}


class SegformerTeacher(torch.nn.Module):
    """A Hugging Face ``SegformerForSemanticSegmentation`` behind detectron2's model interface.

    ``forward(list of {"image": C x H x W tensor (0..255, ``input_format``), "height", "width"})``
    returns ``[{"sem_seg": num_labels x height x width logits}]``: each image is rescaled
    (``rescale_factor``, 1/255) and normalised (``image_mean`` / ``image_std``) as
    SegformerImageProcessor does, run through the model (logits at 1/4 of the input's resolution),
    and the logits are upsampled bilinearly to the input's size, then to ``height`` x ``width``
    (the original image's, when the input was resized). Images are run one at a time (they may
    differ in size).
    """

    def __init__(self, hf_model, image_mean, image_std, rescale_factor=1 / 255, input_format="RGB"):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise PseudoLabelError(f"a SegFormer teacher reads RGB (or BGR) images, not INPUT.FORMAT {input_format!r}")
        self.model = hf_model
        self.input_format = input_format
        self.rescale_factor = float(rescale_factor)
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.image_mean.device

    def normalize(self, image):
        """C x H x W 0..255 (``input_format``) -> the model's 1 x 3 x H x W float ``pixel_values``."""
        image = image.to(self.device, torch.float32)
        if self.input_format == "BGR":
            image = image.flip(0)
        return ((image * self.rescale_factor - self.image_mean) / self.image_std)[None]

    def forward(self, batched_inputs):
        import torch.nn.functional as F

        outputs = []
        for inputs in batched_inputs:
            pixel_values = self.normalize(inputs["image"])
            size = tuple(pixel_values.shape[-2:])
            logits = self.model(pixel_values=pixel_values).logits
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            original = (int(inputs.get("height", size[0])), int(inputs.get("width", size[1])))
            if original != size:
                logits = F.interpolate(logits, size=original, mode="bilinear", align_corners=False)
            outputs.append({"sem_seg": logits[0]})
        return outputs


def load_hf_teacher(folder, device=None, opts=()):
    """``(cfg, model)`` for a Hugging Face SegFormer checkpoint folder (``save_pretrained``'s
    ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, optionally
    ``preprocessor_config.json``), loaded with ``SegformerForSemanticSegmentation.from_pretrained(folder,
    local_files_only=True)``.

    ``model`` is a :class:`SegformerTeacher` in eval mode on ``cfg.MODEL.DEVICE``. ``cfg`` is a
    frozen detectron2 config for the rest of this module: ``INPUT.FORMAT`` "RGB";
    ``INPUT.MIN_SIZE_TEST`` the processor's ``size`` (``shortest_edge``, or the smaller of
    ``height`` / ``width``: the shortest edge is resized to it keeping the aspect ratio, where
    SegformerImageProcessor squashes to height x width), ``MAX_SIZE_TEST`` its ``longest_edge`` or
    max(1333, 2 x that), 0 / 0 (no resize) for ``do_resize: false``; ``MODEL.DEVICE`` ``device``,
    else cuda where available, else cpu; ``MODEL.WEIGHTS`` the folder; ``HF_TEACHER.PATH`` /
    ``MODEL_TYPE`` / ``CLASSES`` (``config.id2label``'s names in id order) / the normalisation.
    ``opts`` (KEY VALUE ...) override it, e.g. ``["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "1024"]``.

    Raises :class:`PseudoLabelError` (naming the folder) for a folder without ``config.json``,
    another ``model_type`` than segformer, no weights file, weights that leave parameters
    uninitialised, or no ``transformers`` installed.
    """
    from detectron2.config import CfgNode as CN
    from detectron2.config import get_cfg

    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Teacher checkpoint folder not found: {folder}")
    config_path = os.path.join(folder, HF_CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise PseudoLabelError(
            f"the teacher folder {folder} is not a Hugging Face checkpoint: it has no {HF_CONFIG_NAME} "
            f"(a detectron2 teacher is a config file plus --teacher-weights)"
        )
    model_type = _read_json(config_path, "Hugging Face model config").get("model_type")
    if model_type != "segformer":
        raise PseudoLabelError(
            f"the teacher folder {folder} holds a Hugging Face {model_type!r} model ({HF_CONFIG_NAME}'s model_type); "
            f"only 'segformer' checkpoints (SegformerForSemanticSegmentation) can be pseudo-label teachers"
        )
    if not any(os.path.isfile(os.path.join(folder, name)) for name in _HF_WEIGHT_FILES):
        raise PseudoLabelError(
            f"the teacher folder {folder} has a {HF_CONFIG_NAME} but no weights "
            f"(none of {', '.join(_HF_WEIGHT_FILES)}): "
            f"save the trained model there with SegformerForSemanticSegmentation.save_pretrained"
        )
    preprocessing = _segformer_preprocessing(folder)

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SegformerForSemanticSegmentation"
    cfg.MODEL.WEIGHTS = folder
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TEST = preprocessing["min_size_test"]
    cfg.INPUT.MAX_SIZE_TEST = preprocessing["max_size_test"]
    cfg.HF_TEACHER = CN()
    cfg.HF_TEACHER.PATH = folder
    cfg.HF_TEACHER.MODEL_TYPE = model_type
    cfg.HF_TEACHER.CLASSES = []
    cfg.HF_TEACHER.IMAGE_MEAN = preprocessing["image_mean"]
    cfg.HF_TEACHER.IMAGE_STD = preprocessing["image_std"]
    cfg.HF_TEACHER.RESCALE_FACTOR = preprocessing["rescale_factor"]
    cfg.merge_from_list(list(opts))

    try:
        from transformers import SegformerForSemanticSegmentation
    except ImportError as e:
        raise PseudoLabelError(
            f"the teacher {folder} is a Hugging Face SegFormer checkpoint, which needs the transformers package "
            f"(pip install transformers): {e}"
        ) from e
    try:
        hf_model, info = SegformerForSemanticSegmentation.from_pretrained(
            folder, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise PseudoLabelError(
            f"cannot load the SegFormer teacher from {folder}: {type(e).__name__}: {e}"
        ) from e
    missing = list(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise PseudoLabelError(
            f"the weights in {folder} do not fill SegformerForSemanticSegmentation: "
            + (f"missing {sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "")
            + ("; " if missing and mismatched else "")
            + (f"other shapes for {[m[0] if isinstance(m, (tuple, list)) else m for m in mismatched][:5]}"
               if mismatched else "")
            + " (is it a semantic segmentation checkpoint, decode head included?)"
        )
    id2label = hf_model.config.id2label or {}
    classes = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if len(classes) != hf_model.config.num_labels or [int(k) for k in sorted(id2label, key=int)] != list(
        range(len(classes))
    ):
        raise PseudoLabelError(
            f"{os.path.join(folder, HF_CONFIG_NAME)}: id2label {dict(id2label)} does not name the model's "
            f"{hf_model.config.num_labels} output channels 0..{hf_model.config.num_labels - 1}"
        )
    cfg.HF_TEACHER.CLASSES = classes
    cfg.freeze()
    model = SegformerTeacher(
        hf_model, cfg.HF_TEACHER.IMAGE_MEAN, cfg.HF_TEACHER.IMAGE_STD, cfg.HF_TEACHER.RESCALE_FACTOR, cfg.INPUT.FORMAT
    )
    return cfg, model.to(cfg.MODEL.DEVICE).eval()


def _teacher_name(cfg):
    """How messages name the teacher."""
    hf = _hf_teacher(cfg)
    if hf is not None:
        return f"the teacher ({hf.PATH})"
    return f"the teacher ({cfg.DATASETS.TRAIN[0]})" if cfg.DATASETS.TRAIN else "the teacher"


def _teacher_settings(cfg):
    """The teacher's identity, as pseudo_labels.json records it."""
    settings = {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "weights": os.path.abspath(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS and "://" not in cfg.MODEL.WEIGHTS
        else cfg.MODEL.WEIGHTS,
        "train_dataset": cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
    }
    hf = _hf_teacher(cfg)
    if hf is not None:
        settings.update(
            hugging_face_checkpoint=hf.PATH, model_type=hf.MODEL_TYPE, classes=list(hf.CLASSES),
            image_mean=list(hf.IMAGE_MEAN), image_std=list(hf.IMAGE_STD), rescale_factor=hf.RESCALE_FACTOR,
        )
    return settings


def _teacher_input(cfg, augmentations, record):
    """DatasetMapper's test-time preprocessing: read in ``cfg.INPUT.FORMAT``, resize the shortest
    edge; ``height`` / ``width`` ask the model for outputs at the original size."""
    image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    height, width = image.shape[:2]
    aug_input = T.AugInput(image)
    augmentations(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    return {"file_name": record["file_name"], "image_id": record.get("image_id"), "image": tensor,
            "height": height, "width": width}


def teacher_classes(cfg):
    """Class names of the teacher's outputs: ``stuff_classes`` of ``cfg.DATASETS.TRAIN[0]``; for a
    Hugging Face teacher (:func:`load_hf_teacher`) its ``config.id2label`` names in id order."""
    hf = _hf_teacher(cfg)
    if hf is not None:
        return list(hf.CLASSES)
    if not cfg.DATASETS.TRAIN:
        raise PseudoLabelError("the teacher config has no DATASETS.TRAIN: cannot tell which classes its outputs mean")
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("stuff_classes", None)
    if not classes:
        raise PseudoLabelError(
            f"the teacher's training dataset {name!r} (DATASETS.TRAIN[0]) has no 'stuff_classes' metadata, so "
            f"the teacher's output channels have no class names: register it (or set "
            f"MetadataCatalog.get({name!r}).stuff_classes) before generating semantic pseudo-labels"
        )
    return list(classes)


# ---------------------------------------------------------------------------------------------
# classes
# ---------------------------------------------------------------------------------------------


def read_class_map(path):
    """A class map file: a JSON object ``{"teacher class": "dataset class" or null}``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Class map not found: {path}")
    with open(path) as f:
        try:
            class_map = json.load(f)
        except json.JSONDecodeError as e:
            raise PseudoLabelError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(class_map, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in class_map.items()
    ):
        raise PseudoLabelError(
            f'{path}: expected a JSON object mapping teacher class names to dataset class names (or null), '
            f'e.g. {{"Tree": "vegetation", "Sky": "sky", "Misc": null}}'
        )
    return class_map


def class_lookup(teacher, dataset, class_map=None, *, teacher_name="the teacher", dataset_name="the dataset"):
    """int64 array: teacher class index -> dataset class index, -1 = ignore.

    Without ``class_map`` the two class lists must hold the same names (same order: identity; other
    order: matched by name); otherwise :class:`ClassMismatchError` names the differences. With it,
    teacher classes it does not map (or maps to null) become ignore; names it uses must exist.
    """
    teacher, dataset = list(teacher), list(dataset)
    if class_map is None:
        if teacher == dataset:
            return np.arange(len(teacher), dtype=np.int64)
        if sorted(teacher) == sorted(dataset) and len(set(dataset)) == len(dataset):
            logger.info(f"{teacher_name} lists {dataset_name}'s classes in another order: matched by name")
            return np.array([dataset.index(c) for c in teacher], dtype=np.int64)
        only_teacher = [c for c in teacher if c not in dataset]
        only_dataset = [c for c in dataset if c not in teacher]
        example = {c: (only_dataset[0] if only_dataset else None) for c in only_teacher[:2]}
        raise ClassMismatchError(
            f"the classes of {teacher_name} differ from those of {dataset_name}: "
            f"{teacher_name} has {only_teacher or 'the same names in other multiplicities'}"
            + (f" that {dataset_name} lacks" if only_teacher else "")
            + (f"; {dataset_name} has {only_dataset} that {teacher_name} lacks" if only_dataset else "")
            + f". Pass --class-map FILE.json (class_map=) mapping {teacher_name}'s class names to "
            f"{dataset_name}'s (a teacher class left out or mapped to null becomes ignore, {IGNORE_LABEL}), "
            f"e.g. {json.dumps(example)}"
        )
    unknown_teacher = sorted(set(class_map) - set(teacher))
    unknown_dataset = sorted({v for v in class_map.values() if v is not None} - set(dataset))
    if unknown_teacher or unknown_dataset:
        raise ClassMismatchError(
            "the class map names "
            + "; ".join(
                part for part in (
                    f"teacher classes {unknown_teacher} that {teacher_name} does not have (it has {teacher})"
                    if unknown_teacher else "",
                    f"dataset classes {unknown_dataset} that {dataset_name} does not have (it has {dataset})"
                    if unknown_dataset else "",
                ) if part
            )
        )
    lookup = np.full(len(teacher), -1, dtype=np.int64)
    for i, name in enumerate(teacher):
        if class_map.get(name) is not None:
            lookup[i] = dataset.index(class_map[name])
    unmapped = [c for c in teacher if class_map.get(c) is None]
    if unmapped:
        logger.info(f"class map: teacher classes {unmapped} become ignore ({IGNORE_LABEL})")
    return lookup


def scores_to_probabilities(scores):
    """(C, H, W) semantic scores -> class probabilities. detectron2's semantic heads return logits
    (softmax is taken); scores that are already a distribution (non-negative, summing to 1 over C)
    are kept as they are."""
    scores = scores.float()
    if scores.min() >= 0 and torch.allclose(scores.sum(dim=0), torch.ones_like(scores[0]), atol=1e-4):
        return scores
    return torch.softmax(scores, dim=0)


def sem_seg_pseudo_label(scores, lookup, num_classes, min_confidence):
    """``(labels, confident_fraction)``: uint8 H x W dataset class ids, 255 where the teacher is
    less sure than ``min_confidence``.

    With the identity lookup a pixel's label is the teacher's argmax and its confidence the softmax
    maximum. Otherwise the probabilities of teacher classes that map to the same dataset class are
    added up (and those of unmapped classes into an "ignore" bucket) before taking the maximum, so
    that a pixel split between two teacher classes of one dataset class keeps that class.
    """
    probs = scores_to_probabilities(scores)
    lookup_t = torch.as_tensor(lookup, device=probs.device)
    if probs.shape[0] != lookup_t.numel():
        raise PseudoLabelError(
            f"the teacher's sem_seg has {probs.shape[0]} channels but its training dataset lists "
            f"{lookup_t.numel()} classes"
        )
    if torch.equal(lookup_t, torch.arange(num_classes, device=probs.device)):
        confidence, labels = probs.max(dim=0)
    else:
        target = torch.where(lookup_t < 0, torch.full_like(lookup_t, num_classes), lookup_t)
        merged = probs.new_zeros((num_classes + 1,) + tuple(probs.shape[1:]))
        merged.index_add_(0, target, probs)
        confidence, labels = merged.max(dim=0)
        labels[labels == num_classes] = IGNORE_LABEL
    labels[confidence < min_confidence] = IGNORE_LABEL
    labels = labels.to(torch.uint8).cpu().numpy()
    return labels, float((labels != IGNORE_LABEL).mean())


# ---------------------------------------------------------------------------------------------
# depth
# ---------------------------------------------------------------------------------------------


def choose_depth_format(dataset_name, records, depth_format=None):
    """The encoding depth pseudo-labels are written in: ``depth_format`` when given; else the
    ``depth_format`` of the dataset's records that have depth (the most common one); else its
    metadata's ``depth_format``; else ``npy_m`` (float32 metres)."""
    if depth_format is not None:
        if depth_format not in DEPTH_FORMATS:
            raise PseudoLabelError(f"depth format {depth_format!r}; expected one of {', '.join(DEPTH_FORMATS)}")
        return depth_format
    formats = collections.Counter(
        r["depth_format"] for r in records if "depth_file_name" in r and r.get("depth_format")
    )
    if formats:
        chosen = formats.most_common(1)[0][0]
        if len(formats) > 1:
            logger.warning(f"{dataset_name} mixes depth formats {dict(formats)}: writing {chosen}")
        return chosen
    meta_format = MetadataCatalog.get(dataset_name).get("depth_format", None)
    if meta_format is not None:
        if meta_format not in DEPTH_FORMATS:
            raise PseudoLabelError(
                f"{dataset_name}: metadata depth_format {meta_format!r} is not one of {', '.join(DEPTH_FORMATS)}"
            )
        return meta_format
    return "npy_m"


def _metres(depth):
    """The teacher's depth as float32 metres, 0 where it is not a finite positive number."""
    depth = depth.detach().float().cpu().numpy()
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def _stems(records):
    """A file-name stem per record, unique and the same on every run over the same dataset."""
    used, stems = set(), []
    for record in records:
        stem = str(record["image_id"]) if "image_id" in record \
            else os.path.splitext(os.path.basename(record["file_name"]))[0]
        stem = re.sub(r"[^\w.-]+", "_", stem)
        unique, k = stem, 1
        while unique in used:
            unique, k = f"{stem}_{k}", k + 1
        used.add(unique)
        stems.append(unique)
    return stems


def _image_size(record):
    if "height" in record and "width" in record:
        return int(record["height"]), int(record["width"])
    with Image.open(record["file_name"]) as im:  # the header only
        return im.height, im.width


def _with_pseudo_label(record, task, path, depth_format):
    out = copy.deepcopy(record)
    if task == "sem_seg":
        for key in _SEGMENTATION_KEYS:
            out.pop(key, None)
        out["sem_seg_file_name"] = path
    else:
        out["depth_file_name"] = path
        out["depth_format"] = depth_format
    out["pseudo_labels"] = sorted(set(out.get("pseudo_labels", [])) | {task})
    return out


def _decoded_fraction(record, task, size):
    """Read a finished pseudo-label back through segdep_d2's readers: the fraction of labelled
    (sem_seg) / valid (depth) pixels, or None where the file is absent, does not decode, or has
    another size than the image (an interrupted or foreign file: redone)."""
    key = "sem_seg_file_name" if task == "sem_seg" else "depth_file_name"
    if not os.path.isfile(record[key]):
        return None
    try:
        if task == "sem_seg":
            values = read_sem_seg(record)
            labelled = values != IGNORE_LABEL
        else:
            values = read_depth({**record, "height": size[0], "width": size[1]})
            labelled = values > 0
    except (OSError, ValueError, SyntaxError) as e:  # truncated PNG / npy, wrong bit depth, ...
        logger.info(f"redoing {record[key]}: {type(e).__name__}: {e}")
        return None
    if values.shape != tuple(size):
        logger.info(f"redoing {record[key]}: size {values.shape} is not the image's {tuple(size)}")
        return None
    return float(labelled.mean())


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON serialisable")


def _manifest_record(record, output_dir):
    """Original paths absolute (the manifest's folder is no base for them), pseudo-label paths
    relative to ``output_dir`` (so that the folder can move)."""
    out = dict(record)
    for key in MANIFEST_PATH_KEYS:
        if key not in out:
            continue
        path = os.path.abspath(out[key])
        inside = os.path.commonpath([path, os.path.abspath(output_dir)]) == os.path.abspath(output_dir)
        out[key] = os.path.relpath(path, output_dir) if inside else path
    return out


def _metadata_snapshot(dataset_name):
    """The JSON-serialisable part of the dataset's metadata."""
    snapshot = {}
    for key, value in MetadataCatalog.get(dataset_name).as_dict().items():
        if key == "name":
            continue
        try:
            snapshot[key] = json.loads(json.dumps(value, default=_json_default))
        except (TypeError, ValueError):
            logger.debug(f"metadata {key!r} of {dataset_name} is not JSON serialisable: not kept")
    return snapshot


def _restore_metadata(snapshot):
    """JSON turned the integer keys of the id maps into strings: turn them back."""
    meta = dict(snapshot)
    for key, value in snapshot.items():
        if key.endswith("_id_to_contiguous_id") and isinstance(value, dict):
            meta[key] = {int(k): v for k, v in value.items()}
    return meta


def _settings_differ(old, new):
    return {k: (old.get(k), new.get(k)) for k in new if old.get(k) != new.get(k)}


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


def generate_pseudo_labels(
    cfg,
    model,
    dataset_name,
    task,
    output_dir,
    *,
    min_confidence=0.7,
    class_map=None,
    depth_format=None,
    overwrite=False,
    overwrite_existing_labels=False,
    register=True,
    progress=True,
):
    """Label every image of ``dataset_name`` that lacks ``task``'s label with ``model``'s output.

    Args:
        cfg, model: the teacher (:func:`load_teacher` / :func:`load_hf_teacher`); the model in eval mode.
        task: ``"sem_seg"`` or ``"depth"``.
        min_confidence: sem_seg: pixels whose (class-map merged) softmax maximum is below it are 255.
        class_map: sem_seg: ``{teacher class: dataset class or None}`` (:func:`read_class_map`);
            needed when the teacher's classes (``stuff_classes`` of its ``DATASETS.TRAIN[0]``, or a
            Hugging Face teacher's ``id2label``) are not the dataset's. A dataset without
            ``stuff_classes`` takes the teacher's.
        depth_format: depth: the encoding to write (default :func:`choose_depth_format`).
        overwrite: redo every pseudo-label (and accept a folder written with other settings).
        overwrite_existing_labels: also label images that have a real label of this type
            (replacing it in the manifest); by default they are kept as they are.
        register: register the result as ``<dataset_name>_pseudo_<task>``.

    Returns:
        dict: ``name``, ``output``, ``manifest``, ``images``, ``written``, ``already_done``
        (finished files a previous run wrote), ``skipped_labelled`` (images with a real label),
        ``confident_fraction`` (mean over pseudo-labelled images of the fraction of pixels
        labelled (sem_seg) or with valid depth (depth); None when there is none), ``depth_format``.
    """
    if task not in PSEUDO_TASKS:
        raise PseudoLabelError(f"task {task!r}; expected one of {PSEUDO_TASKS}")
    if not 0.0 <= float(min_confidence) <= 1.0:
        raise PseudoLabelError(f"min_confidence {min_confidence} must lie in [0, 1]")
    if dataset_name not in DatasetCatalog.list():
        raise PseudoLabelError(f"dataset {dataset_name!r} is not registered (DatasetCatalog.list() has the names)")
    records = DatasetCatalog.get(dataset_name)
    if not records:
        raise PseudoLabelError(f"dataset {dataset_name!r} lists no images")
    todo = [overwrite_existing_labels or not _has_label(r, task) for r in records]
    if not any(todo):
        logger.warning(f"every image of {dataset_name} already has a {task} label: nothing to pseudo-label "
                       f"(--overwrite-existing-labels labels them anyway)")
    dataset_meta = MetadataCatalog.get(dataset_name)

    lookup, dataset_classes, metadata_update = None, None, {}
    if task == "sem_seg":
        teacher = teacher_classes(cfg)
        dataset_classes = dataset_meta.get("stuff_classes", None)
        if dataset_classes:
            lookup = class_lookup(
                teacher, dataset_classes, class_map,
                teacher_name=_teacher_name(cfg), dataset_name=dataset_name,
            )
        else:
            if class_map is not None:
                raise ClassMismatchError(f"{dataset_name} has no 'stuff_classes' metadata for the class map to map to")
            logger.info(f"{dataset_name} has no stuff_classes: its pseudo-labels use the teacher's classes")
            dataset_classes = teacher
            lookup = np.arange(len(teacher), dtype=np.int64)
            teacher_meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
            metadata_update = {"stuff_classes": list(teacher), "ignore_label": IGNORE_LABEL}
            if teacher_meta is not None and teacher_meta.get("stuff_colors", None):
                metadata_update["stuff_colors"] = [list(c) for c in teacher_meta.stuff_colors]
        if len(dataset_classes) > IGNORE_LABEL:
            raise PseudoLabelError(
                f"{len(dataset_classes)} classes do not fit a uint8 label PNG with ignore {IGNORE_LABEL}"
            )
        depth_format = None
        extension = ".png"
    else:
        depth_format = choose_depth_format(dataset_name, records, depth_format)
        extension = resolve_depth_format(depth_format)[1]
        if depth_format == "cityscapes_disparity":
            lacking = [r["file_name"] for r, t in zip(records, todo) if t and "camera_file_name" not in r]
            if lacking:
                raise PseudoLabelError(
                    f"cityscapes_disparity pseudo-depth needs each image's camera_file_name; {len(lacking)} images "
                    f"lack it (first: {lacking[0]}): pass --depth-format npy_m (depth_format=) instead"
                )

    output_dir = os.path.abspath(output_dir)
    label_dir = os.path.join(output_dir, task)
    os.makedirs(label_dir, exist_ok=True)
    info_path = os.path.join(output_dir, INFO_NAME)
    settings = {
        "source_dataset": dataset_name,
        "task": task,
        "min_confidence": float(min_confidence) if task == "sem_seg" else None,
        "class_map": class_map if task == "sem_seg" else None,
        "depth_format": depth_format,
        "teacher": _teacher_settings(cfg),
    }
    settings = json.loads(json.dumps(settings, default=_json_default))  # compared with the JSON on disk
    if os.path.isfile(info_path) and not overwrite:
        with open(info_path) as f:
            previous = json.load(f).get("settings", {})
        differ = _settings_differ(previous, settings)
        if differ:
            raise PseudoLabelError(
                f"{output_dir} holds pseudo-labels made with other settings ("
                + "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differ.items())
                + "): pass --overwrite (overwrite=True) to redo them all, or choose another output folder"
            )
    # the settings go in before the first pseudo-label (a re-run after an interruption checks them),
    # the manifest last (its presence means the folder is complete)
    info = {
        "name": pseudo_dataset_name(dataset_name, task),
        "settings": settings,
        "metadata": {**_metadata_snapshot(dataset_name), **metadata_update},
        "metadata_update": metadata_update,
    }
    write_info, settings_written = json_writer(info, indent=2, default=_json_default), False
    manifest = os.path.join(output_dir, MANIFEST_NAME)
    if os.path.exists(manifest):  # until this run finishes, the folder is not a finished dataset
        os.remove(manifest)
    leftovers = remove_leftovers([output_dir, label_dir])
    if leftovers:
        logger.info(f"removed {leftovers} unfinished temporary files under {output_dir}")

    augmentations = T.AugmentationList(utils.build_augmentation(cfg, is_train=False))
    counts = {"written": 0, "already_done": 0, "skipped_labelled": 0}
    fractions, entries = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"{task} pseudo-labels for {dataset_name}", unit="image")
    try:
        for record, stem, label_it in zip(records, _stems(records), todo):
            if not label_it:
                counts["skipped_labelled"] += 1
                entries.append(record)
            else:
                path = os.path.join(label_dir, stem + extension)
                labelled = _with_pseudo_label(record, task, path, depth_format)
                size = _image_size(record)
                fraction = None if overwrite else _decoded_fraction(labelled, task, size)
                if fraction is not None:
                    counts["already_done"] += 1
                else:
                    write, fraction = _predict(cfg, model, augmentations, record, task, lookup,
                                               len(dataset_classes or ()), min_confidence, depth_format)
                    if not settings_written:  # the teacher works: from here on the folder is this run's
                        replace_into(info_path, write_info)
                        settings_written = True
                    replace_into(path, write)
                    counts["written"] += 1
                fractions.append(fraction)
                entries.append(labelled)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()

    if not settings_written:
        replace_into(info_path, write_info)
    replace_into(manifest, json_writer([_manifest_record(e, output_dir) for e in entries], default=_json_default))
    name = register_pseudo_labels(output_dir) if register else info["name"]
    return {
        "name": name,
        "output": output_dir,
        "manifest": manifest,
        "images": len(records),
        **counts,
        "confident_fraction": float(np.mean(fractions)) if fractions else None,
        "depth_format": depth_format,
    }


def _predict(cfg, model, augmentations, record, task, lookup, num_classes, min_confidence, depth_format):
    """Run the teacher on one image: ``(write, fraction)``, a writer for :func:`replace_into` and the
    fraction of labelled (sem_seg) / valid-depth pixels."""
    inputs = _teacher_input(cfg, augmentations, record)
    with torch.no_grad():
        output = model([inputs])[0]
    if task not in output:
        raise PseudoLabelError(
            f"the teacher ({cfg.MODEL.META_ARCHITECTURE}) outputs {sorted(output)}, no {task!r}: it cannot make "
            f"{task} pseudo-labels"
        )
    if task == "sem_seg":
        labels, fraction = sem_seg_pseudo_label(output["sem_seg"], lookup, num_classes, min_confidence)
        return png_writer(labels), fraction
    depth = _metres(output["depth"])
    camera = record.get("camera_file_name")
    return (lambda tmp: write_depth(tmp, depth, depth_format, camera)), float((depth > 0).mean())


def register_pseudo_labels(output_dir, name=None):
    """Register a pseudo-label folder (its ``manifest.json``) in DatasetCatalog / MetadataCatalog as
    ``<source>_pseudo_<task>`` (or ``name``); returns the name.

    Metadata: the source dataset's where it is registered in this process, else the snapshot the
    folder keeps; plus ``pseudo_label_dir``, ``pseudo_label_task``, ``source_dataset``. A name that
    is already registered is replaced if it is a pseudo-label dataset, refused otherwise.
    """
    output_dir = os.path.abspath(output_dir)
    info_path, manifest = os.path.join(output_dir, INFO_NAME), os.path.join(output_dir, MANIFEST_NAME)
    for path in (info_path, manifest):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: {output_dir} is not a finished pseudo-label folder "
                f"(tools/generate_pseudo_labels.py writes it last; re-run it to finish)"
            )
    with open(info_path) as f:
        info = json.load(f)
    name = name or info["name"]
    source = info["settings"]["source_dataset"]
    if source in DatasetCatalog.list():
        meta = {k: v for k, v in MetadataCatalog.get(source).as_dict().items() if k != "name"}
        meta.update(_restore_metadata(info.get("metadata_update", {})))
    else:
        meta = _restore_metadata(info["metadata"])
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("pseudo_label_dir", None) is None:
            raise PseudoLabelError(
                f"{name!r} is already registered and is not a pseudo-label dataset: pass another name"
            )
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    # (a source that is itself a pseudo-label dataset brings these keys along: this folder's win)
    meta.update(pseudo_label_dir=output_dir, pseudo_label_task=info["settings"]["task"], source_dataset=source)
    DatasetCatalog.register(name, lambda: load_depth_manifest(manifest))
    MetadataCatalog.get(name).set(**meta)
    return name
