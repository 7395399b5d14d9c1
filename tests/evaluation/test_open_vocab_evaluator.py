import json
import math
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES
from detectron2.evaluation import inference_on_dataset
from PIL import Image

from segdep_d2.data.datasets.vkitti2 import vkitti2_metadata
from segdep_d2.data.vocabularies import (
    canonical_name,
    held_out_label_map,
    held_out_split,
    load_synonyms,
    synonyms_of,
    vocabulary,
)
from segdep_d2.evaluation import (
    LabelledSemSegEvaluator,
    OpenVocabEvaluator,
    VocabularyDataLoader,
    mean_iou,
    open_vocab_metrics,
    per_class_iou,
    sem_seg_confusion,
    with_vocabularies,
)

VKITTI2_NAMES = vkitti2_metadata()["stuff_classes"]
CITYSCAPES_NAMES = [c["name"] for c in CITYSCAPES_CATEGORIES]


# ----------------------------------------------------------------------------------------------
# Vocabularies
# ----------------------------------------------------------------------------------------------
def test_dataset_class_lists():
    assert len(VKITTI2_NAMES) == 14 and len(CITYSCAPES_NAMES) == 19


@pytest.mark.parametrize("class_names", [VKITTI2_NAMES, CITYSCAPES_NAMES], ids=["vkitti2", "cityscapes"])
def test_synonyms_cover_every_class_and_differ_from_the_names(class_names):
    table = load_synonyms()
    names = {canonical_name(n) for n in class_names}
    primaries = vocabulary(class_names, "synonyms")
    assert len(primaries) == len(class_names)
    assert len(set(primaries)) == len(primaries), "two classes share a primary synonym"
    seen_synonyms = {}
    for name in class_names:
        synonyms = synonyms_of(name)
        assert synonyms == table[canonical_name(name)] and synonyms
        for s in synonyms:
            # a synonym is neither the class's own name nor any other class's name ...
            assert canonical_name(s) not in names, (name, s)
            assert canonical_name(s).replace(" ", "") != canonical_name(name).replace(" ", "")
            # ... nor a synonym of another class
            assert seen_synonyms.setdefault(canonical_name(s), name) == name, (name, s)


def test_vocabulary_order_and_kinds():
    assert vocabulary(["Car", "TrafficLight", "guard_rail", "Vegetation"], "seen") == [
        "car", "traffic light", "guard rail", "vegetation"]  # in words, as the text encoder is prompted
    assert vocabulary(["Car", "Truck", "Road", "Vegetation"], "synonyms") == ["automobile", "lorry", "roadway", "foliage"]
    assert vocabulary(["traffic light", "TrafficLight", "guard_rail"], "synonyms") == [
        "traffic signal", "traffic signal", "crash barrier"]
    assert vocabulary(["car", "dog"], "synonyms", synonyms={"Car": ["auto"], "dog": "hound"}) == ["auto", "hound"]
    with pytest.raises(KeyError, match="zebra"):
        vocabulary(["car", "zebra"], "synonyms")
    with pytest.raises(ValueError, match="kind"):
        vocabulary(["car"], "antonyms")


def test_load_synonyms_returns_a_copy():
    load_synonyms()["car"].append("banana")
    assert "banana" not in load_synonyms()["car"]


def test_canonical_name():
    assert canonical_name("TrafficLight") == "traffic light"
    assert canonical_name("GuardRail") == "guard rail"
    assert canonical_name("traffic_light") == "traffic light"
    assert canonical_name(" Sky ") == "sky"


def test_held_out_split_and_label_map():
    names = ["road", "car", "sky", "Truck"]
    training, held = held_out_split(names, ["truck", "car"])
    assert training == ["road", "sky"] and held == [1, 3]
    assert held_out_split(names, [2]) == (["road", "car", "Truck"], [2])
    lut = held_out_label_map(len(names), held)
    labels = np.array([[0, 1, 2, 3, 255]], dtype=np.uint8)
    assert lut[labels].tolist() == [[0, 255, 1, 255, 255]]
    for bad in (["bus"], [], names, [7]):
        with pytest.raises(ValueError):
            held_out_split(names, bad)
    with pytest.raises(ValueError):
        held_out_label_map(4, [1], ignore_label=2)


# ----------------------------------------------------------------------------------------------
# Pure metrics
# ----------------------------------------------------------------------------------------------
def test_sem_seg_confusion_counts_gt_rows_pred_columns_and_skips_ignore():
    gt = np.array([[0, 0, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 1], [1, 2, 1]])
    m = sem_seg_confusion(pred, gt, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="prediction"):
        sem_seg_confusion(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match="ground truth"):
        sem_seg_confusion(np.array([0]), np.array([5]), 3)
    with pytest.raises(ValueError):
        sem_seg_confusion(np.zeros(3), np.zeros(4), 3)


def test_per_class_iou_leaves_classes_absent_from_gt_out_of_the_mean():
    # class 2 is predicted once but never in the ground truth
    m = np.array([[3, 0, 1], [1, 2, 0], [0, 0, 0]])
    iou = per_class_iou(m)
    assert iou[0] == pytest.approx(3 / 5) and iou[1] == pytest.approx(2 / 3) and math.isnan(iou[2])
    assert mean_iou(iou) == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert mean_iou(iou, [1, 2]) == pytest.approx(2 / 3)
    assert math.isnan(mean_iou(iou, [2]))


def test_open_vocab_metrics_held_out():
    names = ["road", "car", "sky"]
    seen = np.diag([4, 4, 4])
    held = np.array([[4, 0, 0], [2, 2, 0], [0, 0, 4]])  # car (held out) half predicted as road
    res = open_vocab_metrics({"seen": seen, "held_out": held}, names, held_out_indices=[1])
    assert res["mIoU_seen"] == pytest.approx(100)
    assert res["mIoU_held_out"] == pytest.approx(100 * 2 / 4)  # car: tp 2, union 4
    assert res["mIoU_held_out_seen_classes"] == pytest.approx(100 * (4 / 6 + 1) / 2)
    s, u = (4 / 6 + 1) / 2, 0.5
    assert res["hIoU_held_out"] == pytest.approx(100 * 2 * s * u / (s + u))
    assert res["IoU-car@held_out"] == pytest.approx(50) and res["IoU-road@seen"] == pytest.approx(100)
    assert "mIoU_held_out" not in open_vocab_metrics({"seen": seen}, names)
    with pytest.raises(ValueError, match="held_out"):
        open_vocab_metrics({"held_out": held}, names)


# ----------------------------------------------------------------------------------------------
# Evaluator on hand-built cases: 3 classes, two labelled 4x4 images and one unlabelled
# ----------------------------------------------------------------------------------------------
NAMES = ["road", "car", "sky"]
GT = {
    0: np.array([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 255, 255]]),
    1: np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]),
}
# "seen": image 0 right but one road pixel called car and the ignored pixels called sky; image 1 right
SEEN = {0: np.array([[0, 0, 0, 1], [0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 2, 2]]), 1: GT[1].copy()}
# "synonyms": image 0's cars called road; image 1's lower half row of cars called sky
SYN = {0: np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 2, 2], [2, 2, 0, 0]]),
       1: np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2]])}
# seen: road tp 13 / union 14, car tp 12 / union 13, sky 4 / 4
SEEN_IOU = {"road": 13 / 14, "car": 12 / 13, "sky": 1.0}
# synonyms: road tp 14 / union 18, car tp 4 / union 12, sky tp 4 / union 8
SYN_IOU = {"road": 14 / 18, "car": 4 / 12, "sky": 4 / 8}


def _one_hot(labels, num_classes=3):
    return torch.nn.functional.one_hot(torch.as_tensor(labels).long(), num_classes).permute(2, 0, 1).float()


@pytest.fixture
def dataset(tmp_path):
    names = []

    def make(image_ids=(0, 1), unlabelled=True, metadata=None):
        dicts = []
        for i in image_ids:
            path = tmp_path / f"gt_{i}.png"
            Image.fromarray(GT[i].astype(np.uint8)).save(path)
            dicts.append({"file_name": f"img_{i}.png", "image_id": i, "height": 4, "width": 4,
                          "sem_seg_file_name": str(path)})
        if unlabelled:
            dicts.append({"file_name": "img_9.png", "image_id": 9, "height": 4, "width": 4})
        name = f"segdep_openvocab_test_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).set(**(metadata or dict(stuff_classes=NAMES, ignore_label=255)))
        names.append(name)
        return name, dicts

    yield make
    for name in names:
        for n in (name, f"{name}@sem_seg"):
            if n in DatasetCatalog.list():
                DatasetCatalog.remove(n)
                MetadataCatalog.remove(n)


class _VocabModel(torch.nn.Module):
    """Answers each vocabulary of ``class_names`` with canned labels, chosen by the name list
    (as a real open-vocabulary model would only see the names). Records the queries it got."""

    def __init__(self, canned):
        super().__init__()
        self.canned = canned  # {tuple(names): {image_id: labels}}
        self.queries = []

    def forward(self, inputs):
        outputs = []
        for x in inputs:
            if x["image_id"] == 9:  # unlabelled image: whatever the model says is not scored
                outputs.append({"open_vocab_seg": {k: torch.zeros(3, 2, 2) for k in x["class_names"]}})
                continue
            self.queries.append(x["class_names"])
            if isinstance(x["class_names"], dict):
                seg = {k: _one_hot(self.canned[tuple(v)][x["image_id"]]) for k, v in x["class_names"].items()}
            else:
                seg = _one_hot(self.canned[tuple(x["class_names"])][x["image_id"]])
            outputs.append({"open_vocab_seg": seg})
        return outputs


def _canned_seen_synonyms():
    return {tuple(NAMES): SEEN, tuple(vocabulary(NAMES, "synonyms")): SYN}


def test_evaluator_exact_ious_per_vocabulary_and_skips_unlabelled(dataset):
    name, dicts = dataset()
    evaluator = OpenVocabEvaluator(name, distributed=False)
    assert evaluator.queries == {"seen": NAMES, "synonyms": ["roadway", "automobile", "heavens"]}
    model = _VocabModel(_canned_seen_synonyms())
    loader = VocabularyDataLoader([[d] for d in dicts], evaluator.queries)
    assert len(loader) == 3
    res = inference_on_dataset(model, loader, evaluator)["open_vocab"]
    assert res["num_images"] == 2
    assert res["mIoU_seen"] == pytest.approx(100 * sum(SEEN_IOU.values()) / 3)
    assert res["mIoU_synonyms"] == pytest.approx(100 * sum(SYN_IOU.values()) / 3)
    for cls in NAMES:
        assert res[f"IoU-{cls}@seen"] == pytest.approx(100 * SEEN_IOU[cls])
        assert res[f"IoU-{cls}@synonyms"] == pytest.approx(100 * SYN_IOU[cls])
    assert not any("held_out" in k for k in res)
    assert all("class_names" not in d for d in dicts)  # the loader's dicts are left alone


def test_evaluator_seen_matches_detectron2_sem_seg_evaluator(dataset):
    name, dicts = dataset()
    labelled = [d for d in dicts if "sem_seg_file_name" in d]
    ov = OpenVocabEvaluator(name, vocabularies={"seen": "seen"}, distributed=False)
    d2 = LabelledSemSegEvaluator(name, distributed=False)
    for ev in (ov, d2):
        ev.reset()
    for d in labelled:
        scores = _one_hot(SEEN[d["image_id"]])
        ov.process([d], [{"open_vocab_seg": {"seen": scores}}])
        d2.process([d], [{"sem_seg": scores}])
    a, b = ov.evaluate()["open_vocab"], d2.evaluate()["sem_seg"]
    assert a["mIoU_seen"] == pytest.approx(b["mIoU"])
    for cls in NAMES:
        assert a[f"IoU-{cls}@seen"] == pytest.approx(b[f"IoU-{cls}"])


def test_class_absent_from_gt_is_nan_and_left_out_of_the_mean(dataset):
    name, dicts = dataset(image_ids=(1,), unlabelled=False)  # no sky in image 1
    evaluator = OpenVocabEvaluator(name, distributed=False)
    evaluator.reset()
    syn = SYN[1].copy()
    evaluator.process(dicts, [{"open_vocab_seg": {"seen": _one_hot(SEEN[1]), "synonyms": _one_hot(syn)}}])
    res = evaluator.evaluate()["open_vocab"]
    assert math.isnan(res["IoU-sky@seen"]) and math.isnan(res["IoU-sky@synonyms"])
    assert res["mIoU_seen"] == pytest.approx(100)
    # synonyms: road 8 / 8, car 4 / 8 (the sky predictions are false negatives of car only)
    assert res["mIoU_synonyms"] == pytest.approx(100 * (1 + 0.5) / 2)


def test_held_out_protocol(dataset, tmp_path):
    name, dicts = dataset()
    # the model trained without "car" answers the class names with its own predictions
    held = {0: GT[0].clip(0, 2).copy(), 1: GT[1].copy()}
    held[0][3, 2:] = 0  # ignored pixels: never scored
    held[1][2] = 0  # image 1: first car row called road -> car tp 4+4 / union 12, road 14 / 18
    evaluator = OpenVocabEvaluator(name, held_out_classes=["Car"], distributed=False,
                                   output_dir=str(tmp_path / "out"))
    assert evaluator.held_out_indices == [1]
    assert set(evaluator.vocabularies) == {"seen", "synonyms", "held_out"}
    # "held_out" queries the class names again: asked once, answered by the "seen" scores
    assert set(evaluator.queries) == {"seen", "synonyms"}

    model = _VocabModel({tuple(NAMES): held, tuple(vocabulary(NAMES, "synonyms")): SYN})
    res = inference_on_dataset(model, VocabularyDataLoader([[d] for d in dicts], evaluator.queries),
                               evaluator)["open_vocab"]
    assert res["mIoU_held_out"] == pytest.approx(100 * 8 / 12)
    assert res["mIoU_held_out_seen_classes"] == pytest.approx(100 * (14 / 18 + 1) / 2)
    s, u = (14 / 18 + 1) / 2, 8 / 12
    assert res["hIoU_held_out"] == pytest.approx(100 * 2 * s * u / (s + u))
    assert res["mIoU_seen"] == pytest.approx(100 * (14 / 18 + 8 / 12 + 1) / 3)
    assert res["IoU-car@held_out"] == res["IoU-car@seen"]
    saved = json.loads((tmp_path / "out" / "open_vocab_evaluation.json").read_text())
    assert saved["held_out_classes"] == ["car"] and saved["results"]["num_images"] == 2


def test_held_out_vocabulary_with_its_own_names(dataset):
    name, dicts = dataset(image_ids=(1,), unlabelled=False)
    custom = ["street", "motorcar", "sky"]
    evaluator = OpenVocabEvaluator(name, vocabularies={"held_out": custom}, held_out_classes=[1], distributed=False)
    assert evaluator.queries == {"held_out": custom}
    evaluator.reset()
    # a single tensor answers the single vocabulary (the input's class_names was a list)
    evaluator.process(dicts, [{"open_vocab_seg": _one_hot(SYN[1])}])
    res = evaluator.evaluate()["open_vocab"]
    assert res["mIoU_held_out"] == pytest.approx(100 * 4 / 8)
    assert res["mIoU_held_out_seen_classes"] == pytest.approx(100)
    with pytest.raises(ValueError, match="held_out_classes"):
        OpenVocabEvaluator(name, vocabularies={"held_out": custom}, distributed=False)


def test_with_vocabularies_copies_inputs():
    batch = [{"file_name": "a"}, {"file_name": "b"}]
    out = with_vocabularies(batch, {"seen": ("road", "car")})
    assert out[0]["class_names"] == {"seen": ["road", "car"]} and out[1]["file_name"] == "b"
    assert "class_names" not in batch[0]
    assert with_vocabularies(batch, ["road"])[0]["class_names"] == ["road"]
    with pytest.raises(TypeError):
        with_vocabularies(batch, "road")


def test_default_vocabularies_from_vkitti2_metadata(dataset):
    name, _ = dataset(metadata=vkitti2_metadata())
    evaluator = OpenVocabEvaluator(name, distributed=False)
    assert evaluator.vocabularies["seen"] == [canonical_name(n) for n in VKITTI2_NAMES]
    syn = dict(zip(VKITTI2_NAMES, evaluator.vocabularies["synonyms"]))
    assert syn["Car"] == "automobile" and syn["Truck"] == "lorry" and syn["Road"] == "roadway"
    assert syn["Vegetation"] == "foliage"


def test_errors(dataset, tmp_path):
    name, dicts = dataset(unlabelled=False)
    evaluator = OpenVocabEvaluator(name, distributed=False)
    evaluator.reset()
    good = _one_hot(SEEN[0])
    with pytest.raises(KeyError, match="open_vocab_seg"):
        evaluator.process(dicts[:1], [{"sem_seg": good}])
    with pytest.raises(KeyError, match="synonyms"):
        evaluator.process(dicts[:1], [{"open_vocab_seg": {"seen": good}}])
    with pytest.raises(TypeError, match="single tensor"):
        evaluator.process(dicts[:1], [{"open_vocab_seg": good}])
    with pytest.raises(ValueError, match="channel"):
        evaluator.process(dicts[:1], [{"open_vocab_seg": {"seen": good[:2], "synonyms": good}}])
    with pytest.raises(ValueError, match="original image size"):
        evaluator.process(dicts[:1], [{"open_vocab_seg": {"seen": good[:, :2], "synonyms": good}}])
    with pytest.raises(ValueError, match="3 classes"):
        OpenVocabEvaluator(name, vocabularies={"seen": ["road", "car"]}, distributed=False)
    # nothing evaluated: a clear zero count, no NaN soup
    evaluator.reset()
    assert evaluator.evaluate() == {"open_vocab": {"num_images": 0}}


@pytest.mark.parametrize("records", [[], [{"file_name": "x.png", "image_id": 0, "height": 4, "width": 4}]],
                         ids=["empty", "unlabelled"])
def test_dataset_without_semantic_labels_is_an_error(records):
    name = f"segdep_openvocab_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=NAMES, ignore_label=255)
    try:
        with pytest.raises(ValueError, match="semantic ground truth"):
            OpenVocabEvaluator(name, distributed=False)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
