"""Dataset metadata in detectron2's panoptic convention, built the same way for every dataset."""


def depth_panoptic_metadata(categories, *, depth_range, label_divisor=1000, ignore_label=255):
    """MetadataCatalog fields for a dataset with panoptic labels and depth.

    Args:
        categories: ``[{"id", "name", "isthing", "color"?, "trainId"?}]``; the contiguous training
            id is ``trainId`` when given, else the rank of ``id``.
        depth_range: (min, max) metres of valid ground-truth depth, for losses and metrics.

    As detectron2's Cityscapes panoptic registration, ``thing_classes`` and ``stuff_classes`` both
    list every class (the Visualizer reads either); ``stuff_dataset_id_to_contiguous_id`` covers
    every class too, so that SemSegEvaluator can map any predicted label back to a dataset id.
    """
    for c in categories:
        missing = {"id", "name", "isthing"} - set(c)
        if missing:
            raise ValueError(f"category {c} lacks {sorted(missing)}")
    ordered = sorted(categories, key=lambda c: c["id"])
    contiguous = {c["id"]: c.get("trainId", rank) for rank, c in enumerate(ordered)}
    names = [c["name"] for c in ordered]
    colors = [list(c.get("color", (0, 0, 0))) for c in ordered]
    return dict(
        thing_classes=names,
        thing_colors=colors,
        stuff_classes=names,
        stuff_colors=colors,
        thing_dataset_id_to_contiguous_id={c["id"]: contiguous[c["id"]] for c in ordered if c["isthing"]},
        stuff_dataset_id_to_contiguous_id=contiguous,
        ignore_label=ignore_label,
        label_divisor=label_divisor,
        depth_range=tuple(depth_range),
        evaluator_type="panoptic_depth",
    )
