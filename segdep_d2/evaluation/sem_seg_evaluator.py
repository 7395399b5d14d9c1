"""detectron2's SemSegEvaluator on datasets where only some records carry semantic labels."""
import logging
from collections import OrderedDict

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm

from ..data.label_io import read_sem_seg

__all__ = ["LabelledSemSegEvaluator"]

logger = logging.getLogger(__name__)


def _sem_seg_loader(dataset_name):
    """A ``sem_seg_loading_fn`` for SemSegEvaluator that decodes any label layout we read
    (VKITTI2's colour PNGs, CVAT XMLs included) through :func:`read_sem_seg`.

    It is keyed by the image ``file_name``, not by ``sem_seg_file_name``: the images of one CVAT
    XML share that file (the XML), and each must get its own labels. The evaluator hands it
    ``file_name`` (see ``LabelledSemSegEvaluator.__init__``)."""
    records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name) if "sem_seg_file_name" in r}

    def load(file_name, dtype=int):
        return read_sem_seg(records[file_name]).astype(dtype)

    return load


def _labelled_subset(dataset_name, has_label, suffix):
    """The name of a dataset holding only the records of ``dataset_name`` with a label type
    (same metadata), registered once. detectron2's SemSegEvaluator reads ``sem_seg_file_name``
    from every record of the dataset it is given, so a partly labelled dataset needs this view."""
    subset = f"{dataset_name}@{suffix}"
    if subset not in DatasetCatalog.list():
        DatasetCatalog.register(subset, lambda: [r for r in DatasetCatalog.get(dataset_name) if has_label(r)])
        meta = MetadataCatalog.get(dataset_name).as_dict()
        meta.pop("name", None)
        MetadataCatalog.get(subset).set(**meta)
    return subset


class LabelledSemSegEvaluator(SemSegEvaluator):
    """detectron2's SemSegEvaluator over the records that carry ``sem_seg_file_name`` (any label
    layout :func:`read_sem_seg` decodes); other records are skipped and ``num_images`` reports how
    many were evaluated."""

    def __init__(self, dataset_name, distributed=True, output_dir=None):
        subset = _labelled_subset(dataset_name, lambda r: "sem_seg_file_name" in r, "sem_seg")
        super().__init__(subset, distributed=distributed, output_dir=output_dir,
                         sem_seg_loading_fn=_sem_seg_loader(subset))
        # SemSegEvaluator.process loads sem_seg_loading_fn(input_file_to_gt_file[file_name]); our
        # loader is keyed by the image itself (records may share sem_seg_file_name: CVAT XMLs).
        self.input_file_to_gt_file = {file_name: file_name for file_name in self.input_file_to_gt_file}
        self._num_images = 0

    def reset(self):
        super().reset()
        self._num_images = 0

    def process(self, inputs, outputs):
        pairs = [(i, o) for i, o in zip(inputs, outputs) if i["file_name"] in self.input_file_to_gt_file]
        self._num_images += len(pairs)
        if pairs:
            super().process(*zip(*pairs))

    def evaluate(self):
        num_images = sum(comm.gather(self._num_images)) if self._distributed else self._num_images
        if num_images == 0 and (not self._distributed or comm.is_main_process()):
            logger.warning(f"[LabelledSemSegEvaluator] {self._dataset_name}: no image with semantic labels")
            return OrderedDict({"sem_seg": {"num_images": 0}})
        results = super().evaluate()
        if results is None:  # not the main process
            return {}
        results["sem_seg"]["num_images"] = num_images
        return results
