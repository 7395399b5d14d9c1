"""Dataset metadata in detectron2's panoptic convention, built the same way for every dataset."""
from detectron2.data import MetadataCatalog


def depth_panoptic_metadata(
    categories, *, depth_range, label_divisor=1000, ignore_label=255, classes_without_depth=(), depth_format=None
):
    """MetadataCatalog fields for a dataset with panoptic labels and depth.

    Args:
        categories: ``[{"id", "name", "isthing", "color"?, "trainId"?}]``; the contiguous training
            id is ``trainId`` when given, else the rank of ``id``.
        depth_range: (min, max) metres of valid ground-truth depth, for losses and metrics.
        classes_without_depth: names of classes that never have a valid distance (sky): their
            predicted segments are flagged ``depth_valid: False`` and drawn without a distance.
        depth_format: the dataset's depth encoding (``read_depth``'s formats), for tools that write
            depth in it (pseudo-labels) where a record has none yet.

    As detectron2's Cityscapes panoptic registration, ``thing_classes`` and ``stuff_classes`` both
    list every class (the Visualizer reads either); ``stuff_dataset_id_to_contiguous_id`` covers
    every class too, so that SemSegEvaluator can map any predicted label back to a dataset id.
    """
    for c in categories:
        missing = {"id", "name", "isthing"} - set(c)
        if missing:
            raise ValueError(f"category {c} lacks {sorted(missing)}")
    ordered = sorted(categories, key=lambda c: c["id"])
    unknown = set(classes_without_depth) - {c["name"] for c in ordered}
    if unknown:
        raise ValueError(f"classes_without_depth {sorted(unknown)} are not category names")
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
        classes_without_depth=list(classes_without_depth),
        **({} if depth_format is None else {"depth_format": depth_format}),
        evaluator_type="panoptic_depth",
    )


def valid_depth_range(dataset_name, min_depth=None, max_depth=None):
    """(min, max) metres of valid ground-truth depth: the arguments where given, else the dataset's
    metadata ``depth_range``. The one rule every evaluator follows: no silent default, since a
    wrong range silently changes which pixels are scored (VKITTI2 stores sky as 655.35 m)."""
    if min_depth is not None and max_depth is not None:
        return float(min_depth), float(max_depth)
    depth_range = MetadataCatalog.get(dataset_name).get("depth_range", None)
    if depth_range is None:
        raise ValueError(
            f"Dataset {dataset_name!r} has no metadata 'depth_range' (valid ground-truth depth in metres): "
            f"set it with MetadataCatalog.get({dataset_name!r}).set(depth_range=(min, max)) or pass "
            "min_depth= and max_depth="
        )
    return float(depth_range[0] if min_depth is None else min_depth), float(depth_range[1] if max_depth is None else max_depth)
