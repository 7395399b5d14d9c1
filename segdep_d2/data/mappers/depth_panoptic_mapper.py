import copy
import logging
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
from ..label_io import has_panoptic, read_panoptic, read_sem_seg
from ..transforms import build_augmentations, transform_depth

__all__ = ["DepthPanopticDatasetMapper"]


class DepthPanopticDatasetMapper:
    """Image + semantic / panoptic targets + metric depth, from one random augmentation draw.

    Output keys (each only where the sample has that label type; asymmetric data is normal):

    * ``image``: uint8 tensor (C, H, W);
    * ``sem_seg`` (+ ``center``, ``offset`` and their weights for panoptic samples, from
      detectron2's Panoptic-DeepLab target generator);
    * ``depth``: float32 (H, W) metres, 0 = invalid, and ``depth_valid``: bool (H, W), true where
      ``depth_range[0] < depth < depth_range[1]``.

    At test time (``is_train=False``) only the image is prepared: evaluators read ground truth
    at full resolution themselves.
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
    ):
        """
        Args:
            panoptic_targets: build center / offset targets (the model has a panoptic output).
                When False (HydraNet), a record with ``sem_seg_file_name`` is read as semantic
                labels only; one whose semantics exist only as panoptic labels still goes through
                the target generator, whose ``sem_seg`` is the one the model needs.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.depth_range = tuple(depth_range)
        self.panoptic_target_generator = panoptic_target_generator
        self.panoptic_targets = panoptic_targets
        logging.getLogger(__name__).info(
            f"[DepthPanopticDatasetMapper] {'train' if is_train else 'test'} augmentations: {augmentations}"
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        from ...modeling.meta_arch import model_outputs  # at call time: modeling imports data

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
        return dataset_dict
