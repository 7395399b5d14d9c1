"""Panoptic-DepthLab: detectron2's Panoptic-DeepLab plus a third decoder that regresses depth.

Backbone, semantic head, instance (center / offset) head, target generation and panoptic
post-processing are detectron2's own (``detectron2.projects.panoptic_deeplab``); this file adds
the depth branch, batches asymmetric targets, and gives every panoptic segment its distance.
"""
import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.projects.panoptic_deeplab import PanopticDeepLab
from detectron2.projects.panoptic_deeplab.post_processing import get_panoptic_segmentation
from detectron2.structures import BitMasks, ImageList, Instances
from torch.nn import functional as F

from ...evaluation.panoptic_depth_metrics import segment_depths
from ..aspp import adapt_aspp_pooling
from ..heads.depth_head import build_depth_head

__all__ = ["PanopticDepthLab"]


def _batch(batched_inputs, key, default, size_divisibility, pad_value=0.0):
    """Stack ``x[key]`` over the batch, using ``default(x)`` for samples that lack it."""
    tensors = [x[key] if key in x else default(x) for x in batched_inputs]
    return ImageList.from_tensors(tensors, size_divisibility, pad_value).tensor


@META_ARCH_REGISTRY.register()
class PanopticDepthLab(PanopticDeepLab):
    """Panoptic-DeepLab + depth. Configured like detectron2's PanopticDeepLab (``cfg``-only
    constructor, as its parent) plus ``MODEL.DEPTH_HEAD.*``.

    Inference output per image: ``sem_seg`` (C, H, W), ``depth`` (H, W) metres and
    ``panoptic_seg = (ids, segments_info)`` where every segment has ``id``, ``category_id``,
    ``isthing``, ``area``, ``depth`` (mean predicted depth over its pixels), ``depth_median`` and
    ``depth_valid``: False for classes the dataset has no distance for (metadata
    ``classes_without_depth``, e.g. sky) and for segments whose median lies outside the dataset's
    ``depth_range``; such a distance is the network's guess where it was never supervised.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.depth_head = build_depth_head(cfg, self.backbone.output_shape())
        adapt_aspp_pooling(self)  # the three decoders' ASPPs run below the training crop size
        self.thing_ids = set(self.meta.thing_dataset_id_to_contiguous_id.values())
        names = self.meta.get("stuff_classes", [])
        without_depth = set(self.meta.get("classes_without_depth", []))
        self.categories_without_depth = {i for i, name in enumerate(names) if name in without_depth}
        self.depth_range = tuple(self.meta.get("depth_range", (cfg.MODEL.DEPTH_HEAD.MIN_DEPTH, cfg.MODEL.DEPTH_HEAD.MAX_DEPTH)))

    def _size_divisibility(self):
        return self.size_divisibility if self.size_divisibility > 0 else self.backbone.size_divisibility

    def forward(self, batched_inputs):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        images = ImageList.from_tensors(images, self._size_divisibility())
        features = self.backbone(images.tensor)
        if self.training:
            return self.losses(batched_inputs, features)
        return self.inference(batched_inputs, features, images.image_sizes)

    def losses(self, batched_inputs, features):
        div = self._size_divisibility()
        dev = self.device
        ignore = self.sem_seg_head.ignore_value

        def like_image(fill, dtype=torch.float32, channels=None):
            def make(x):
                shape = x["image"].shape[-2:] if channels is None else (channels, *x["image"].shape[-2:])
                return torch.full(shape, fill, dtype=dtype)
            return make

        batch = {
            "sem_seg": _batch(batched_inputs, "sem_seg", like_image(ignore, torch.long), div, ignore),
            "sem_seg_weights": _batch(batched_inputs, "sem_seg_weights", like_image(1.0), div),
            "center": _batch(batched_inputs, "center", like_image(0.0), div).unsqueeze(1),
            "center_weights": _batch(batched_inputs, "center_weights", like_image(0.0, channels=1), div),
            "offset": _batch(batched_inputs, "offset", like_image(0.0, channels=2), div),
            "offset_weights": _batch(batched_inputs, "offset_weights", like_image(0.0, channels=1), div),
            "depth": _batch(batched_inputs, "depth", like_image(0.0), div),
            "depth_valid": _batch(batched_inputs, "depth_valid", like_image(False, torch.bool), div),
        }
        batch = {k: v.to(dev) for k, v in batch.items()}

        losses = {}
        if (batch["sem_seg"] != ignore).any():
            _, sem_losses = self.sem_seg_head(features, batch["sem_seg"], batch["sem_seg_weights"])
        else:
            # No labelled pixel in the batch (depth-only samples): a zero loss that still touches
            # every parameter of the head, so DDP's gradient reduction stays in step.
            sem_losses = {"loss_sem_seg": self.sem_seg_head.layers(features).sum() * 0.0}
        losses.update(sem_losses)
        _, _, center_losses, offset_losses = self.ins_embed_head(
            features, batch["center"], batch["center_weights"], batch["offset"], batch["offset_weights"]
        )
        losses.update(center_losses)
        losses.update(offset_losses)
        _, depth_losses = self.depth_head(features, batch["depth"], batch["depth_valid"])
        losses.update(depth_losses)
        return losses

    def network_outputs(self, features):
        """The three decoders at inference: semantic logits, center heatmap, offsets, depth
        (metres), each at the padded input size. This is what ``tools/export_model.py`` exports."""
        sem_seg_results, _ = self.sem_seg_head(features)
        center_results, offset_results, _, _ = self.ins_embed_head(features)
        depth_results, _ = self.depth_head(features)
        return sem_seg_results, center_results, offset_results, depth_results

    @torch.no_grad()
    def inference(self, batched_inputs, features, image_sizes):
        outputs = self.network_outputs(features)
        if self.benchmark_network_speed:
            return []
        return self.postprocess(*outputs, batched_inputs, image_sizes)

    def postprocess(self, sem_seg_results, center_results, offset_results, depth_results, batched_inputs,
                    image_sizes):
        """Network outputs -> per-image ``sem_seg``, ``depth`` and ``panoptic_seg`` with per-segment
        depth, at each input's original size (also used on the outputs of an exported network)."""
        processed_results = []
        for sem, center, offset, depth, input_per_image, image_size in zip(
            sem_seg_results, center_results, offset_results, depth_results, batched_inputs, image_sizes
        ):
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            r = sem_seg_postprocess(sem, image_size, height, width)
            c = sem_seg_postprocess(center, image_size, height, width)
            o = sem_seg_postprocess(offset, image_size, height, width)
            d = sem_seg_postprocess(depth, image_size, height, width)[0]
            panoptic_image, _ = get_panoptic_segmentation(
                r.argmax(dim=0, keepdim=True),
                c,
                o,
                thing_ids=self.thing_ids,
                label_divisor=self.meta.label_divisor,
                stuff_area=self.stuff_area,
                void_label=-1,
                threshold=self.threshold,
                nms_kernel=self.nms_kernel,
                top_k=self.top_k,
            )
            panoptic_image = panoptic_image.squeeze(0)
            segments_info = self.segments_info(panoptic_image, d)
            result = {"sem_seg": r, "depth": d, "panoptic_seg": (panoptic_image, segments_info)}
            if self.predict_instances:
                instances = self.instances(panoptic_image, segments_info, r, c)
                if instances is not None:
                    result["instances"] = instances
            processed_results.append(result)
        return processed_results

    def segments_info(self, panoptic_image, depth):
        """One dict per segment with its class and distance (one vectorised pass over pixels)."""
        stats = segment_depths(panoptic_image, depth, void_ids=(-1,))
        divisor = self.meta.label_divisor
        lo, hi = self.depth_range
        return [
            {
                "id": int(seg_id),
                "category_id": int(seg_id) // divisor,
                "isthing": int(seg_id) // divisor in self.thing_ids,
                **values,
                "depth_valid": int(seg_id) // divisor not in self.categories_without_depth
                and lo < values["depth_median"] < hi,
            }
            for seg_id, values in stats.items()
        ]

    def instances(self, panoptic_image, segments_info, sem_logits, center_heatmap):
        """Thing segments as Instances scored by mean class probability x center score, as
        detectron2's PanopticDeepLab does, without a Python loop over pixels."""
        things = [s for s in segments_info if s["isthing"]]
        if not things:
            return None
        ids = torch.tensor([s["id"] for s in things], device=panoptic_image.device)
        classes = torch.tensor([s["category_id"] for s in things], device=panoptic_image.device)
        masks = panoptic_image[None] == ids[:, None, None]
        area = masks.flatten(1).sum(1).clamp(min=1)
        probs = F.softmax(sem_logits, dim=0)[classes]
        sem_scores = (probs * masks).flatten(1).sum(1) / area
        ys = torch.arange(masks.shape[1], device=masks.device, dtype=torch.float32)
        xs = torch.arange(masks.shape[2], device=masks.device, dtype=torch.float32)
        cy = (masks.sum(2).float() * ys).sum(1) / area
        cx = (masks.sum(1).float() * xs).sum(1) / area
        center_scores = center_heatmap[0, cy.long(), cx.long()]
        instances = Instances(tuple(panoptic_image.shape))
        instances.pred_classes = classes
        instances.pred_masks = masks
        instances.scores = sem_scores * center_scores
        instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
        return instances
