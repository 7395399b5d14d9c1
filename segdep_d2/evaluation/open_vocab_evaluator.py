"""Open-vocabulary semantic segmentation: mIoU when the classes are queried by name.

The model is queried with one or more *vocabularies* (lists of names, one per dataset class, in
class order: see :mod:`segdep_d2.data.vocabularies`), and its scores for each are compared with
the semantic ground truth like detectron2's SemSegEvaluator does: one confusion matrix per
vocabulary, IoU per class, classes absent from the ground truth left out of the mean.

Pure functions (numpy in, numbers out): :func:`sem_seg_confusion`, :func:`per_class_iou`,
:func:`mean_iou`, :func:`open_vocab_metrics`. :class:`OpenVocabEvaluator` wraps them;
:func:`with_vocabularies` / :class:`VocabularyDataLoader` put the vocabularies into the model's
inputs.
"""
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.label_io import read_sem_seg
from ..data.vocabularies import VOCABULARY_KINDS, held_out_split, vocabulary
from .arrays import to_numpy

__all__ = [
    "HELD_OUT",
    "sem_seg_confusion",
    "per_class_iou",
    "mean_iou",
    "open_vocab_metrics",
    "with_vocabularies",
    "VocabularyDataLoader",
    "OpenVocabEvaluator",
]

logger = logging.getLogger(__name__)

HELD_OUT = "held_out"  # the vocabulary whose mIoU is split into held-out / seen classes


# ----------------------------------------------------------------------------------------------
# Pure metrics
# ----------------------------------------------------------------------------------------------
def sem_seg_confusion(pred, gt, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """Confusion matrix ``M[g, p]`` (int64, ``num_classes`` x ``num_classes``): the number of
    pixels of ground-truth class ``g`` predicted as ``p``. Pixels whose ground truth is
    ``ignore_label`` are not counted; any other ground truth or prediction outside
    ``[0, num_classes)`` is an error."""
    pred = np.asarray(pred).astype(np.int64, copy=False).reshape(-1)
    gt = np.asarray(gt).astype(np.int64, copy=False).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"Prediction has {pred.size} pixels, ground truth {gt.size}")
    keep = gt != ignore_label
    pred, gt = pred[keep], gt[keep]
    for what, values in (("ground truth", gt), ("prediction", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{what} holds class ids outside [0, {num_classes}) (ignore label {ignore_label}): "
                f"{sorted(set(np.unique(values).tolist()) - set(range(num_classes)))}"
            )
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_iou(confusion) -> np.ndarray:
    """IoU of every class from a ``M[gt, pred]`` confusion matrix, as fractions. NaN for a class
    with no ground-truth pixel (detectron2's SemSegEvaluator convention: such a class is left out
    of the mean, even if it was predicted)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    pos_gt = confusion.sum(axis=1)
    union = pos_gt + confusion.sum(axis=0) - tp
    iou = np.full(len(tp), np.nan)
    valid = pos_gt > 0
    iou[valid] = tp[valid] / union[valid]
    return iou


def mean_iou(iou, classes: Optional[Iterable[int]] = None) -> float:
    """Mean of the non-NaN IoUs (of ``classes`` only, if given); NaN when none is defined."""
    iou = np.asarray(iou, dtype=np.float64)
    if classes is not None:
        iou = iou[np.asarray(list(classes), dtype=np.int64)]
    iou = iou[~np.isnan(iou)]
    return float(iou.mean()) if iou.size else math.nan


def open_vocab_metrics(
    confusions: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    held_out_indices: Sequence[int] = (),
) -> Dict[str, float]:
    """The ``"open_vocab"`` results from one confusion matrix per vocabulary (percent, like
    detectron2's SemSegEvaluator).

    For every vocabulary ``v``: ``IoU-<class>@<v>`` for each class and ``mIoU_<v>`` over the
    classes present in the ground truth. For ``v == "held_out"`` (the model trained without the
    names of ``held_out_indices``), ``mIoU_held_out`` is the mean over the held-out classes only
    (zero-shot), ``mIoU_held_out_seen_classes`` the mean over the other classes with the same
    queries, and ``hIoU_held_out`` their harmonic mean (the usual zero-shot summary). A mean over
    no class present in the ground truth is NaN.
    """
    results = OrderedDict()
    for vocab, confusion in confusions.items():
        confusion = np.asarray(confusion)
        if confusion.shape != (len(class_names),) * 2:
            raise ValueError(f"Confusion matrix of {vocab!r} is {confusion.shape}, expected {len(class_names)} classes")
        iou = per_class_iou(confusion)
        if vocab == HELD_OUT:
            if not len(held_out_indices):
                raise ValueError("The 'held_out' vocabulary needs held_out_indices")
            held = sorted(set(int(i) for i in held_out_indices))
            others = [i for i in range(len(class_names)) if i not in held]
            unseen, seen = mean_iou(iou, held), mean_iou(iou, others)
            results["mIoU_held_out"] = 100 * unseen
            results["mIoU_held_out_seen_classes"] = 100 * seen
            if math.isnan(seen) or math.isnan(unseen):
                harmonic = math.nan
            else:
                harmonic = 2 * seen * unseen / (seen + unseen) if seen + unseen > 0 else 0.0
            results["hIoU_held_out"] = 100 * harmonic
        else:
            results[f"mIoU_{vocab}"] = 100 * mean_iou(iou)
        for name, value in zip(class_names, iou):
            results[f"IoU-{name}@{vocab}"] = 100 * float(value)
    return results


# ----------------------------------------------------------------------------------------------
# Putting the vocabularies into the model's inputs
# ----------------------------------------------------------------------------------------------
def with_vocabularies(
    batched_inputs: Sequence[dict], vocabularies: Union[Mapping[str, Sequence[str]], Sequence[str]]
) -> List[dict]:
    """Shallow copies of the input dicts with ``"class_names"`` set: a ``{vocabulary: [names]}``
    dict (scores come back per vocabulary) or one list of names (one score tensor). The given
    dicts are not modified. Use ``OpenVocabEvaluator.queries`` as ``vocabularies``."""
    if isinstance(vocabularies, Mapping):
        class_names = {k: [str(n) for n in v] for k, v in vocabularies.items()}
    elif isinstance(vocabularies, str):
        raise TypeError("vocabularies must be a list of names or a {vocabulary: names} dict, not a string")
    else:
        class_names = [str(n) for n in vocabularies]
    return [{**inp, "class_names": class_names} for inp in batched_inputs]


class VocabularyDataLoader:
    """Wraps a test data loader so that every batch carries ``"class_names"`` (see
    :func:`with_vocabularies`); ``len()`` is the wrapped loader's, as detectron2's
    ``inference_on_dataset`` wants::

        evaluator = OpenVocabEvaluator(dataset_name)
        loader = VocabularyDataLoader(build_detection_test_loader(cfg, dataset_name), evaluator.queries)
        inference_on_dataset(model, loader, evaluator)
    """

    def __init__(self, data_loader, vocabularies):
        self.data_loader = data_loader
        self.vocabularies = vocabularies

    def __len__(self):
        return len(self.data_loader)

    def __iter__(self):
        for batch in self.data_loader:
            yield with_vocabularies(batch, self.vocabularies)


# ----------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------
class OpenVocabEvaluator(DatasetEvaluator):
    """Open-vocabulary mIoU per vocabulary (result key ``"open_vocab"``).

    **Model contract** (SegDep inference). An input dict may carry ``"class_names"``:

    * a ``{vocabulary_name: [name, ...]}`` dict: the output dict then has ``"open_vocab_seg"`` =
      a dict with the same keys, each value a ``(len(names), H, W)`` score tensor;
    * a ``[name, ...]`` list: ``"open_vocab_seg"`` is a single ``(len(names), H, W)`` tensor.

    Channel ``i`` scores ``names[i]`` (any scores whose argmax over channels is the prediction:
    logits or probabilities), at the original image size (input ``height`` x ``width``), like
    ``sem_seg``. The evaluator puts no other constraint on how the names are encoded.

    The vocabularies reach the model through the inputs: wrap the test loader in
    :class:`VocabularyDataLoader` (or call :func:`with_vocabularies` on each batch) with
    :attr:`queries`, which holds every distinct name list once (a vocabulary equal to an earlier
    one is answered by that one's scores, e.g. ``"held_out"`` by ``"seen"``).

    **Metrics.** For every input with semantic ground truth (``sem_seg_file_name`` in its dataset
    record, decoded by ``read_sem_seg``), the argmax of each vocabulary's scores is accumulated
    in a confusion matrix against it (``ignore_label`` pixels skipped); records without one are
    skipped and ``num_images`` counts the labelled ones. Results (percent)::

        {"open_vocab": {"mIoU_seen", "mIoU_synonyms", "IoU-<class>@<vocabulary>", ...,
                        "mIoU_held_out", "mIoU_held_out_seen_classes", "hIoU_held_out",
                        "num_images"}}

    ``mIoU_<v>`` averages over the classes present in the ground truth (NaN IoU for the others,
    as detectron2 does). The held-out keys exist when ``held_out_classes`` is given: the model
    was trained without those names (:func:`segdep_d2.data.vocabularies.held_out_split`);
    ``mIoU_held_out`` is the mean IoU over them, queried zero-shot, ``..._seen_classes`` the mean
    over the other classes with the same queries.
    """

    def __init__(
        self,
        dataset_name: str,
        vocabularies: Optional[Mapping[str, Union[str, Sequence[str]]]] = None,
        held_out_classes: Optional[Sequence[Union[str, int]]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset; metadata ``stuff_classes`` are its classes and
                ``ignore_label`` (default 255) its void label.
            vocabularies: ``{name: names or kind}``, each a list of one name per class in class
                order, or ``"seen"`` / ``"synonyms"`` for :func:`vocabulary`'s lists. Default:
                ``{"seen": "seen", "synonyms": "synonyms"}``.
            held_out_classes: class names (or contiguous ids) held out of training. Adds the
                ``"held_out"`` vocabulary (the class names, unless given in ``vocabularies``).
            distributed: gather the confusion matrices of all ranks.
            output_dir: where to write ``open_vocab_evaluation.json`` (main process only).
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        meta = MetadataCatalog.get(dataset_name)
        self._class_names = list(meta.stuff_classes)
        self._ignore_label = int(meta.get("ignore_label", 255))
        num_classes = len(self._class_names)

        records = DatasetCatalog.get(dataset_name)
        self._records = {r["file_name"]: r for r in records if "sem_seg_file_name" in r}
        if not self._records:
            raise ValueError(
                f"OpenVocabEvaluator: dataset {dataset_name!r} has "
                + ("no records" if not records else f"{len(records)} records but none with 'sem_seg_file_name'")
                + "; open-vocabulary mIoU needs semantic ground truth"
            )

        vocabularies = dict(vocabularies) if vocabularies is not None else {k: k for k in VOCABULARY_KINDS}
        if held_out_classes is not None and len(held_out_classes):
            _, self._held_out = held_out_split(self._class_names, held_out_classes)
            vocabularies.setdefault(HELD_OUT, "seen")
        else:
            self._held_out = []
            if HELD_OUT in vocabularies:
                raise ValueError("The 'held_out' vocabulary needs held_out_classes (the classes trained without)")
        if not vocabularies:
            raise ValueError("OpenVocabEvaluator needs at least one vocabulary")
        self._vocabularies = {}
        for key, names in vocabularies.items():
            names = vocabulary(self._class_names, names) if isinstance(names, str) else [str(n) for n in names]
            if len(names) != num_classes:
                raise ValueError(
                    f"Vocabulary {key!r} has {len(names)} names; dataset {dataset_name!r} has {num_classes} classes "
                    "(one name per class, in class order)"
                )
            self._vocabularies[key] = names

        # Ask the model once per distinct name list.
        self._source, first = {}, {}
        for key, names in self._vocabularies.items():
            self._source[key] = first.setdefault(tuple(names), key)
        self.reset()

    @property
    def vocabularies(self) -> Dict[str, List[str]]:
        """``{vocabulary: names}`` that are evaluated (one name per class, in class order)."""
        return {k: list(v) for k, v in self._vocabularies.items()}

    @property
    def queries(self) -> Dict[str, List[str]]:
        """The ``"class_names"`` to give the model: every distinct vocabulary once."""
        return {k: list(v) for k, v in self._vocabularies.items() if self._source[k] == k}

    @property
    def held_out_indices(self) -> List[int]:
        return list(self._held_out)

    def reset(self):
        n = len(self._class_names)
        self._confusions = {k: np.zeros((n, n), dtype=np.int64) for k in self._vocabularies}
        self._num_images = 0

    def _scores(self, scores, vocab, file_name):
        if isinstance(scores, Mapping):
            for key in (vocab, self._source[vocab]):
                if key in scores:
                    return scores[key]
            raise KeyError(
                f"OpenVocabEvaluator: the model's open_vocab_seg for {file_name} has vocabularies "
                f"{sorted(scores)}, not {vocab!r}: pass the evaluator's queries as the input's 'class_names' "
                "(VocabularyDataLoader / with_vocabularies)"
            )
        if len(self.queries) != 1:
            raise TypeError(
                f"OpenVocabEvaluator: open_vocab_seg for {file_name} is a single tensor but {len(self.queries)} "
                "vocabularies are evaluated: the input's 'class_names' must be a {vocabulary: names} dict"
            )
        return scores

    def process(self, inputs, outputs):
        for input_dict, output in zip(inputs, outputs):
            file_name = input_dict.get("file_name")
            record = self._records.get(file_name)
            if record is None:  # no semantic ground truth for this image
                continue
            if "open_vocab_seg" not in output:
                raise KeyError(
                    f"OpenVocabEvaluator: the model output for {file_name} has no 'open_vocab_seg' "
                    "(was 'class_names' in the input?)"
                )
            gt = read_sem_seg(record)
            predictions, confusions = {}, {}
            for vocab in self._vocabularies:
                scores = self._scores(output["open_vocab_seg"], vocab, file_name)
                if not hasattr(scores, "ndim"):
                    scores = np.asarray(scores)
                if scores.ndim != 3 or scores.shape[0] != len(self._class_names):
                    raise ValueError(
                        f"open_vocab_seg[{vocab!r}] for {file_name} has shape {tuple(scores.shape)}; expected "
                        f"({len(self._class_names)}, H, W): one channel per name of the vocabulary"
                    )
                if tuple(scores.shape[1:]) != gt.shape:
                    raise ValueError(
                        f"open_vocab_seg[{vocab!r}] for {file_name} is {tuple(scores.shape[1:])}, the ground truth "
                        f"{gt.shape}: the model must return scores at the original image size"
                    )
                source = self._source[vocab]
                if source not in predictions:
                    # argmax where the scores are (GPU), move only the labels
                    predictions[source] = to_numpy(scores.argmax(0)) if hasattr(scores, "detach") else np.asarray(scores).argmax(0)
                confusions[vocab] = sem_seg_confusion(
                    predictions[source], gt, len(self._class_names), self._ignore_label
                )
            for vocab, confusion in confusions.items():  # only once every vocabulary was checked
                self._confusions[vocab] += confusion
            self._num_images += 1

    def evaluate(self):
        confusions, num_images = self._confusions, self._num_images
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((confusions, num_images))
            if not comm.is_main_process():
                return {}
            confusions = {k: sum(c[k] for c, _ in gathered) for k in self._vocabularies}
            num_images = sum(n for _, n in gathered)
        if num_images == 0:
            logger.warning(f"[OpenVocabEvaluator] {self._dataset_name}: no image with semantic labels was evaluated")
            return OrderedDict({"open_vocab": {"num_images": 0}})
        results = open_vocab_metrics(confusions, self._class_names, self._held_out)
        results["num_images"] = num_images
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "open_vocab_evaluation.json"), "w") as f:
                json.dump(
                    {"results": results, "vocabularies": self._vocabularies,
                     "held_out_classes": [self._class_names[i] for i in self._held_out],
                     "confusions": {k: v.tolist() for k, v in confusions.items()}},
                    f,
                )
        logger.info(
            f"[OpenVocabEvaluator] {self._dataset_name} ({num_images} images): "
            + ", ".join(f"{k}={v:.2f}" for k, v in results.items() if "-" not in k and k != "num_images")
        )
        return OrderedDict({"open_vocab": results})
