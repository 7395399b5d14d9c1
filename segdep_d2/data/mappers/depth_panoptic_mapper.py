import copy
import logging
import re
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.projects.panoptic_deeplab.target_generator import PanopticDeepLabTargetGenerator
from panopticapi.utils import id2rgb, rgb2id

from ..depth_io import read_depth
from ..flow_io import read_vkitti2_flow
from ..label_io import _read_vkitti2_track_ids, has_panoptic, read_panoptic, read_sem_seg
from ..sparse_depth import sample_sparse_depth, sparse_depth_input
from ..transforms import build_augmentations, transform_depth, transform_flow, transform_sparse_depth

__all__ = ["DepthPanopticDatasetMapper"]


class DepthPanopticDatasetMapper:
    """Image + semantic / panoptic targets + metric depth, from one random augmentation draw.

    Output keys (each only where the sample has that label type; asymmetric data is normal):

    * ``image``: uint8 tensor (C, H, W);
    * ``sem_seg`` (+ ``center``, ``offset`` and their weights for panoptic samples, from
      detectron2's Panoptic-DeepLab target generator);
    * ``depth``: float32 (H, W) metres, 0 = invalid, and ``depth_valid``: bool (H, W), true where
      ``depth_range[0] < depth < depth_range[1]``;
    * for a record with referring ``queries`` (``[{"text", "instance_id", ...}]``, e.g.
      ``load_vkitti2_referring``): ``queries`` becomes the list of sentences and ``referring_masks`` a
      bool (Q, H, W) tensor, each query's target (the pixels of its ``instance_id`` in the record's
      ``instance_file_name``), resampled exactly as the labels (see :func:`referring_targets`);
    * with ``previous_frame`` (SegDep's temporal training), for a record with ``prev_file_name``
      (e.g. :func:`~segdep_d2.data.datasets.load_vkitti2`): ``prev_image``, the previous frame as a
      uint8 (C, H, W) tensor under the very transforms of ``image``, and where the record has
      ``prev_flow_file_name`` (VKITTI2 backward flow, current -> previous frame) ``prev_flow``:
      float32 (2, H, W) pixels at the augmented size (x, y; 0 where invalid) and ``prev_flow_valid``:
      bool (H, W) (see :func:`read_previous_frame`). A record without ``prev_file_name`` (a first
      frame, a dataset without video) gets none of them and the model takes its plain path.
    * with ``sparse_depth`` (depth completion), in training and at test time: ``sparse_depth``, float32
      (H, W) metres, 0 = no point, the record's sparse input (see :func:`read_sparse_input`) scattered
      through the image's transforms point by point (:func:`~segdep_d2.data.transforms.transform_sparse_depth`),
      so each point sits on the image pixel, and the ``depth`` / ``sem_seg`` pixel, it belongs to.

    At test time (``is_train=False``) only the image is prepared: evaluators read ground truth
    at full resolution themselves (a record's ``queries`` pass through untouched, dicts included).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str,
        depth_range: Tuple[float, float],
        panoptic_target_generator: Optional[Callable] = None,
        panoptic_targets: bool = True,
        previous_frame: bool = False,
        sparse_depth: bool = False,
        sparse_depth_samples: int = 0,
        semantic_input: bool = False,
    ):
        """
        Args:
            panoptic_targets: build center / offset targets (the model has a panoptic output).
                When False (HydraNet), a record with ``sem_seg_file_name`` is read as semantic
                labels only; one whose semantics exist only as panoptic labels still goes through
                the target generator, whose ``sem_seg`` is the one the model needs.
            previous_frame: in training, deliver ``prev_image`` (+ ``prev_flow``,
                ``prev_flow_valid``) for records with ``prev_file_name`` (a model with temporal
                refinement: SegDep with ``MODEL.SEGDEP.TEMPORAL``).
            sparse_depth: deliver ``sparse_depth`` (a model that reads a sparse depth input: depth
                completion), in training and at test time.
            sparse_depth_samples: ``INPUT.SPARSE_DEPTH.NUM_SAMPLES``. 0: the record's
                ``sparse_depth_file_name``; N > 0: N points sampled from the record's dense ground truth
                at its original size, before the augmentation: a fresh draw every time in training,
                the image's fixed evaluation points (:func:`~segdep_d2.data.sparse_depth.evaluation_rng`)
                at test time.
            semantic_input: deliver ``sem_seg`` at test time too, where the record has
                ``sem_seg_file_name`` (a model that takes the label map as an input: depth completion with
                ``MODEL.DEPTH_COMPLETION.SEMANTIC_INPUT "labels"``).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.depth_range = tuple(depth_range)
        self.panoptic_target_generator = panoptic_target_generator
        self.panoptic_targets = panoptic_targets
        self.previous_frame = previous_frame
        self.sparse_depth = bool(sparse_depth)
        self.sparse_depth_samples = int(sparse_depth_samples or 0)
        self.semantic_input = bool(semantic_input)
        if self.sparse_depth_samples < 0:
            raise ValueError(f"sparse_depth_samples (INPUT.SPARSE_DEPTH.NUM_SAMPLES) must be >= 0, got {sparse_depth_samples}")
        logging.getLogger(__name__).info(
            f"[DepthPanopticDatasetMapper] {'train' if is_train else 'test'} augmentations: {augmentations}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        from ...modeling.meta_arch import (  # at call time: modeling imports data
            model_outputs,
            reads_previous_frame,
            reads_semantic_labels,
            reads_sparse_depth,
        )

        dataset_name = cfg.DATASETS.TRAIN[0] if is_train else cfg.DATASETS.TEST[0]
        meta = MetadataCatalog.get(dataset_name)
        generator = PanopticDeepLabTargetGenerator(
            ignore_label=meta.ignore_label,
            thing_ids=list(meta.thing_dataset_id_to_contiguous_id.values()),
            sigma=cfg.INPUT.GAUSSIAN_SIGMA,
            ignore_stuff_in_offset=cfg.INPUT.IGNORE_STUFF_IN_OFFSET,
            small_instance_area=cfg.INPUT.SMALL_INSTANCE_AREA,
            small_instance_weight=cfg.INPUT.SMALL_INSTANCE_WEIGHT,
            ignore_crowd_in_semantic=cfg.INPUT.IGNORE_CROWD_IN_SEMANTIC,
        )
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "depth_range": meta.get("depth_range", (1e-3, 80.0)),
            "panoptic_target_generator": generator,
            "panoptic_targets": "panoptic_seg" in model_outputs(cfg),
            # only a model that declares it reads the previous frame (SegDep with its motion module);
            # others would only pay for the reading
            "previous_frame": reads_previous_frame(cfg),
            # only a model with a sparse depth input (depth completion)
            "sparse_depth": reads_sparse_depth(cfg),
            "sparse_depth_samples": cfg.INPUT.SPARSE_DEPTH.NUM_SAMPLES,
            "semantic_input": reads_semantic_labels(cfg),
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        label, segments_info = None, None
        depth = None
        if self.is_train:
            use_panoptic = self.panoptic_targets or "sem_seg_file_name" not in dataset_dict
            if has_panoptic(dataset_dict) and self.panoptic_target_generator is not None and use_panoptic:
                ids, segments_info = read_panoptic(dataset_dict)
                # RGB-packed ids go through the uint8 segmentation path (nearest resize).
                label = id2rgb(ids)
            elif "sem_seg_file_name" in dataset_dict:
                label = read_sem_seg(dataset_dict)
            if "depth_file_name" in dataset_dict:
                depth = read_depth(dataset_dict)
        elif self.semantic_input and "sem_seg_file_name" in dataset_dict:
            label = read_sem_seg(dataset_dict)  # an input of the model, not a target
        # referring records only (every other record takes none of these steps)
        instance_ids = None
        if self.is_train and dataset_dict.get("queries"):
            instance_ids = read_instance_ids(dataset_dict, image.shape[:2])
        previous = None
        if self.is_train and self.previous_frame and "prev_file_name" in dataset_dict:
            previous = read_previous_frame(dataset_dict, image.shape[:2], self.image_format)
        sparse = None
        if self.sparse_depth:
            sparse = read_sparse_input(dataset_dict, self.sparse_depth_samples, self.is_train, depth, image.shape[:2])

        aug_input = T.AugInput(image, sem_seg=label)
        transforms = self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if depth is not None:
            depth = transform_depth(transforms, depth)
            dataset_dict["depth"] = torch.from_numpy(depth)
            lo, hi = self.depth_range
            dataset_dict["depth_valid"] = torch.from_numpy((depth > lo) & (depth < hi))
        if segments_info is not None:
            dataset_dict.update(self.panoptic_target_generator(rgb2id(label), segments_info))
        elif label is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(label.astype(np.int64))
        if instance_ids is not None:
            dataset_dict.update(referring_targets(dataset_dict["queries"], instance_ids, transforms))
        if previous is not None:
            dataset_dict.update(previous_frame_targets(*previous, transforms))
        if sparse is not None:
            sparse = transform_sparse_depth(transforms, sparse, output_shape=image.shape[:2])
            dataset_dict["sparse_depth"] = torch.from_numpy(sparse)
        return dataset_dict


def read_sparse_input(dataset_dict, num_samples: int, is_train: bool, depth=None, shape=None) -> np.ndarray:
    """The record's sparse depth input at its original size, float32 (H, W) metres, 0 = no point.

    ``num_samples == 0``: its ``sparse_depth_file_name`` (the readers' errors name the file: 8-bit PNG,
    size, NaN ...; a record without one raises a KeyError). ``num_samples > 0``: that many points drawn
    from the dense ground truth (``depth``, the mapper's already-read map, else the record's
    ``depth_file_name``) -- in training a fresh draw each call, at test time the image's fixed points
    (:func:`~segdep_d2.data.sparse_depth.sparse_depth_input`'s default generator).

    Training draws use a generator seeded per call from NumPy's global state, the state detectron2's
    augmentations draw from and seeds per DataLoader worker (``seed_all_rng`` / ``worker_init_reset_seed``):
    reproducible with a seed, different in every worker. (One generator made in ``__init__`` would be forked
    identical into every worker, which would then feed the same points.)
    """
    if num_samples > 0:
        if "depth_file_name" not in dataset_dict and depth is None:
            raise KeyError(
                f"{dataset_dict.get('file_name')}: INPUT.SPARSE_DEPTH.NUM_SAMPLES = {num_samples} samples the sparse "
                "input from the dense ground truth, but the record has no 'depth_file_name'"
            )
        if not is_train:
            sparse = sparse_depth_input(dataset_dict, num_samples)  # the image's fixed evaluation points
        else:
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
            if depth is not None:
                sparse = sample_sparse_depth(depth, num_samples, rng)
            else:
                sparse = sparse_depth_input(dataset_dict, num_samples, rng)
        source = dataset_dict.get("depth_file_name")
    else:
        sparse = sparse_depth_input(dataset_dict, 0)
        source = dataset_dict.get("sparse_depth_file_name")
    if shape is not None and sparse.shape != tuple(shape):  # read_depth checks it where the record has a size
        raise ValueError(
            f"sparse depth from {source} is {sparse.shape[1]}x{sparse.shape[0]} (WxH) but the image "
            f"{dataset_dict.get('file_name')} is {shape[1]}x{shape[0]}"
        )
    return sparse


def read_previous_frame(dataset_dict, shape, image_format: str):
    """``(prev_image (H, W, C) uint8, prev_flow (H, W, 2) float32 or None, prev_flow_valid (H, W) bool or
    None)`` of a record with ``prev_file_name`` (+ ``prev_flow_file_name``, a VKITTI2 backward-flow PNG),
    both checked against the current image's size ``shape`` (H, W): the previous frame must go through
    the current frame's transforms, which are only defined for that size."""
    current, path = dataset_dict["file_name"], dataset_dict["prev_file_name"]
    try:
        prev_image = utils.read_image(path, format=image_format)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"previous frame {path} (prev_file_name of {current}) not found") from e
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"previous frame {path} (prev_file_name of {current}) cannot be read: {e}") from e
    if prev_image.shape[:2] != tuple(shape):
        raise ValueError(
            f"previous frame {path} is {prev_image.shape[1]}x{prev_image.shape[0]} (WxH) but the frame "
            f"{current} is {shape[1]}x{shape[0]}: a previous frame must have the current frame's size"
        )
    if "prev_flow_file_name" not in dataset_dict:
        return prev_image, None, None
    flow_path = dataset_dict["prev_flow_file_name"]
    flow, valid = read_vkitti2_flow(flow_path)  # its errors name the file
    if flow.shape[:2] != tuple(shape):
        raise ValueError(
            f"flow {flow_path} is {flow.shape[1]}x{flow.shape[0]} (WxH) but the frame {current} is "
            f"{shape[1]}x{shape[0]}"
        )
    return prev_image, flow, valid


def previous_frame_targets(prev_image, flow, valid, transforms) -> dict:
    """``prev_image`` (C, H, W) uint8 (+ ``prev_flow`` (2, H, W) float32, ``prev_flow_valid`` (H, W)
    bool) after the current image's ``transforms``: the same resize, crop and flip, so the model sees
    both frames under one geometry (the flow's vectors follow it, see :func:`transform_flow`)."""
    prev_image = transforms.apply_image(prev_image)
    out = {"prev_image": torch.as_tensor(np.ascontiguousarray(prev_image.transpose(2, 0, 1)))}
    if flow is not None:
        flow, valid = transform_flow(transforms, flow, valid)
        out["prev_flow"] = torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1)))
        out["prev_flow_valid"] = torch.from_numpy(valid)
    return out


def read_instance_ids(dataset_dict, shape) -> np.ndarray:
    """int32 (H, W) instance ids of a referring record's ``instance_file_name`` (VKITTI2: trackID + 1,
    0 = no vehicle), the values its queries' ``instance_id`` name."""
    if "instance_file_name" not in dataset_dict:
        raise ValueError(
            f"{dataset_dict.get('file_name')}: a record with referring 'queries' needs 'instance_file_name' "
            "(the instance ids its queries' 'instance_id' refer to) to build their target masks"
        )
    path = dataset_dict["instance_file_name"]
    if dataset_dict.get("label_format") == "vkitti2":
        return _read_vkitti2_track_ids(path, tuple(shape))
    from PIL import Image

    with Image.open(path) as im:
        ids = np.asarray(im)
    if ids.ndim != 2 or ids.shape != tuple(shape):
        raise ValueError(f"{path}: expected a single-channel instance PNG of size {tuple(shape)}, got {ids.shape}")
    return ids.astype(np.int32)


_LEFT_RIGHT = re.compile(r"\b(left|right)", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """"the van on the left" <-> "... right", "leftmost" <-> "rightmost", "from the right" <-> "from
    the left" (case kept): what a horizontally flipped image makes of a sentence. Exact for the VKITTI2
    referring grammar (:mod:`segdep_d2.data.referring`), whose left / right phrases are all defined by
    box centres (x < W / 2, order along x), which a flip mirrors."""

    def swap(match):
        word = match.group(1)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


def referring_targets(queries, instance_ids: np.ndarray, transforms) -> dict:
    """``{"queries": [sentences], "referring_masks": bool (Q, H, W)}`` after ``transforms``.

    The instance ids go through the labels' resampling path bit-exactly (int32 viewed as float32 through
    :func:`transform_depth`: nearest neighbour on whole pixels, padding 0 = no instance), so each mask
    covers exactly the pixels of its ``instance_id`` that the labels show. Horizontal flips are kept as
    augmentation and the sentences follow them: an odd number of ``HFlipTransform`` swaps left and right
    (:func:`swap_left_right`). Vertical flips change no phrase of the grammar (it has no above / below).
    Crops are not re-checked: a target cropped away leaves an empty mask (VKITTI2's configs do not crop).
    """
    texts, targets = [], []
    for q in queries:
        if not isinstance(q, dict) or "instance_id" not in q or "text" not in q:
            raise ValueError(f"a training query must be a dict with 'text' and 'instance_id', got {q!r}")
        texts.append(str(q["text"]))
        targets.append(int(q["instance_id"]))
    ids = np.ascontiguousarray(instance_ids, dtype=np.int32)
    ids = transform_depth(transforms, ids.view(np.float32)).view(np.int32)
    steps = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    if sum(isinstance(t, T.HFlipTransform) for t in steps) % 2:
        texts = [swap_left_right(t) for t in texts]
    masks = ids[None] == np.asarray(targets, dtype=np.int32)[:, None, None]
    return {"queries": texts, "referring_masks": torch.from_numpy(np.ascontiguousarray(masks))}
