"""segdep_d2's dataset names read by detectron2's own classes, as another detectron2 project would.

Every check goes through detectron2's mappers / evaluators / trainer on the builtin names
(re-registered for the test against the synthetic data, by the same functions ``import segdep_d2``
calls), and compares with segdep_d2's readers on the depth-aware names.
"""
import contextlib
import os
import shutil

import numpy as np
import pytest
import detectron2
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as d2_utils
from detectron2.data.dataset_mapper import DatasetMapper
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOPanopticEvaluator,
    SemSegEvaluator,
)
from detectron2.projects.panoptic_deeplab import PanopticDeeplabDatasetMapper
from detectron2.projects.panoptic_deeplab.target_generator import PanopticDeepLabTargetGenerator
from detectron2.structures import Instances
from panopticapi.utils import rgb2id
from PIL import Image

from segdep_d2 import add_segdep_config
from segdep_d2.data import DepthPanopticDatasetMapper, read_depth, read_panoptic, read_sem_seg
from segdep_d2.data.datasets.cityscapes_depth import register_all_cityscapes_depth
from segdep_d2.data.datasets.vkitti2 import register_all_vkitti2
from segdep_d2.data.datasets.vkitti2_prepared import prepare_vkitti2, register_all_vkitti2_prepared
from segdep_d2.engine import build_evaluators
from segdep_d2.evaluation import DepthEvaluator, LabelledSemSegEvaluator, PanopticDepthEvaluator

D2_CONFIGS = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")
VIEWS = ("vkitti2_sem_seg_train", "vkitti2_sem_seg_val", "vkitti2_panoptic_train", "vkitti2_panoptic_val")
TARGET_KEYS = ("sem_seg", "sem_seg_weights", "center", "center_weights", "offset", "offset_weights")


@contextlib.contextmanager
def builtin_names_under(datasets_root, prefix, *register_fns):
    """The builtin names starting with ``prefix`` registered (by ``register_fns``, the functions
    ``import segdep_d2`` runs) against ``datasets_root`` for the duration; the catalogs as before
    afterwards."""
    saved = dict(DatasetCatalog), dict(MetadataCatalog)
    for name in [n for n in DatasetCatalog if n.startswith(prefix)]:
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)
    try:
        for register in register_fns:
            register(str(datasets_root))
        yield
    finally:
        for catalog, before in zip((DatasetCatalog, MetadataCatalog), saved):
            catalog.clear()
            catalog.update(before)


def _vkitti2_copy(synthetic_vkitti2, datasets_root):
    root, _ = synthetic_vkitti2
    for scene in ("Scene01", "Scene20"):
        shutil.copytree(os.path.join(root, scene), datasets_root / "vkitti2" / scene)
    return datasets_root


@pytest.fixture(scope="module")
def prepared_datasets(synthetic_vkitti2, tmp_path_factory):
    """$DETECTRON2_DATASETS with the synthetic vkitti2/ prepared in place (vkitti2/prepared)."""
    datasets_root = _vkitti2_copy(synthetic_vkitti2, tmp_path_factory.mktemp("interop") / "datasets")
    prepare_vkitti2(str(datasets_root / "vkitti2"), progress=False)
    return datasets_root


@pytest.fixture
def vkitti2_names(prepared_datasets):
    with builtin_names_under(prepared_datasets, "vkitti2_", register_all_vkitti2, register_all_vkitti2_prepared):
        yield prepared_datasets


@pytest.fixture
def cityscapes_names(synthetic_cityscapes):
    root, _ = synthetic_cityscapes
    with builtin_names_under(os.path.dirname(root), "cityscapes_fine_panoptic_depth_", register_all_cityscapes_depth):
        yield root


def _by_id(name):
    return {r["image_id"]: r for r in DatasetCatalog.get(name)}


def _one_hot(labels, num_classes):
    logits = torch.zeros(num_classes, *labels.shape)
    for c in range(num_classes):
        logits[c][torch.from_numpy(labels == c)] = 1.0
    return logits


def _panoptic_deeplab_prediction(record, thing_ids):
    """A perfect prediction as detectron2's Panoptic-DeepLab returns it: ids = contiguous category
    * 1000 + instance (things 1, 2, ...; stuff and crowd 0), -1 void, ``segments_info`` None.
    The ground truth is read with detectron2's own image reader, not segdep_d2's."""
    ids = rgb2id(d2_utils.read_image(record["pan_seg_file_name"], "RGB"))
    pred = np.full(ids.shape, -1, dtype=np.int32)
    instances = {}
    for seg in record["segments_info"]:
        category = seg["category_id"]
        instance = 0
        if category in thing_ids and not seg["iscrowd"]:
            instance = instances[category] = instances.get(category, 0) + 1
        pred[ids == seg["id"]] = category * 1000 + instance
    return {"panoptic_seg": (torch.from_numpy(pred), None)}


def _pq(dataset_name, records, tmp_path):
    thing_ids = set(MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id.values())
    evaluator = COCOPanopticEvaluator(dataset_name, output_dir=str(tmp_path / "pq"))
    evaluator.reset()
    for record in records:
        evaluator.process([record], [_panoptic_deeplab_prediction(record, thing_ids)])
    return evaluator.evaluate()["panoptic_seg"]


def _target_generator(dataset_name):
    meta = MetadataCatalog.get(dataset_name)
    return PanopticDeepLabTargetGenerator(
        ignore_label=meta.ignore_label, thing_ids=list(meta.thing_dataset_id_to_contiguous_id.values()), sigma=3
    )


# ------------------------------------------------------------------------------------------------
# VKITTI2: the detectron2-standard views
# ------------------------------------------------------------------------------------------------


def test_views_are_registered_by_import_segdep_d2():
    import segdep_d2  # noqa: F401

    assert set(VIEWS) <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("vkitti2_sem_seg_val").evaluator_type == "sem_seg"
    assert MetadataCatalog.get("vkitti2_panoptic_train").evaluator_type == "coco_panoptic_seg"


def test_d2_dataset_mapper_reads_vkitti2_sem_seg_val_labels_exactly(vkitti2_names):
    records = DatasetCatalog.get("vkitti2_sem_seg_val")
    originals = _by_id("vkitti2_val")
    assert sorted(r["image_id"] for r in records) == sorted(originals) and len(records) == 4
    mapper = DatasetMapper(True, augmentations=[], image_format="RGB")
    for record in records:
        original = originals[record["image_id"]]
        assert record["depth_file_name"] == original["depth_file_name"] and record["depth_format"] == "vkitti2_cm"
        assert record["sequence_id"] == original["sequence_id"] and record["frame_index"] == original["frame_index"]
        assert "label_format" not in record and "colors_file_name" not in record
        out = mapper(record)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), read_sem_seg(original).astype(np.int64))
        np.testing.assert_array_equal(
            out["image"].numpy().transpose(1, 2, 0), np.asarray(Image.open(original["file_name"]))
        )
    meta = MetadataCatalog.get("vkitti2_sem_seg_val")
    assert meta.ignore_label == 255 and len(meta.stuff_classes) == len(meta.stuff_colors) == 14
    assert meta.stuff_classes[12] == "Car" and meta.stuff_colors[12] == [255, 127, 80]
    assert meta.depth_range == (1e-3, 80.0)


def test_d2_sem_seg_evaluator_perfect_predictions_give_miou_100(vkitti2_names):
    evaluator = SemSegEvaluator("vkitti2_sem_seg_val", distributed=False)
    evaluator.reset()
    records = DatasetCatalog.get("vkitti2_sem_seg_val")
    originals = _by_id("vkitti2_val")
    for record in records:
        labels = read_sem_seg(originals[record["image_id"]])
        evaluator.process([record], [{"sem_seg": _one_hot(labels, 14)}])
    res = evaluator.evaluate()["sem_seg"]
    assert res["mIoU"] == 100.0 and res["pACC"] == 100.0 and res["fwIoU"] == 100.0


def test_d2_panoptic_deeplab_mapper_matches_segdep_d2_mapper(vkitti2_names):
    generator = _target_generator("vkitti2_panoptic_val")
    d2_mapper = PanopticDeeplabDatasetMapper(augmentations=[], image_format="RGB", panoptic_target_generator=generator)
    ours = DepthPanopticDatasetMapper(
        True, augmentations=[], image_format="RGB", depth_range=(1e-3, 80.0), panoptic_target_generator=generator
    )
    originals = _by_id("vkitti2_val")
    records = DatasetCatalog.get("vkitti2_panoptic_val")
    assert len(records) == 4
    for record in records:
        original = originals[record["image_id"]]
        expected = ours(original)  # segdep_d2 decoding VKITTI2's colour / palette PNGs
        got = d2_mapper(record)
        assert len(got["center_points"]) == len(expected["center_points"]) > 0
        for key in TARGET_KEYS:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)
        # segdep_d2's own mapper reads the view too, depth included
        on_view = ours(record)
        for key in TARGET_KEYS + ("depth", "depth_valid"):
            np.testing.assert_array_equal(on_view[key].numpy(), expected[key].numpy(), err_msg=key)
        # the segments carry contiguous ids, as detectron2's panoptic loaders give them
        ids, segments = read_panoptic(original)
        assert [(s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in record["segments_info"]] == [
            (s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in segments
        ]
        assert all(s["isthing"] == (s["category_id"] in (11, 12, 13)) for s in record["segments_info"])


def test_d2_coco_panoptic_evaluator_perfect_predictions_give_pq_100(vkitti2_names, tmp_path):
    records = DatasetCatalog.get("vkitti2_panoptic_val")
    meta = MetadataCatalog.get("vkitti2_panoptic_val")
    assert os.path.isfile(meta.panoptic_json) and os.path.isdir(meta.panoptic_root)
    assert meta.label_divisor == 1000 and meta.thing_dataset_id_to_contiguous_id == {12: 11, 13: 12, 14: 13}
    # predictions are written as <basename of file_name>.png: every frame needs its own name
    assert len({os.path.basename(r["file_name"]) for r in records}) == len(records)
    res = _pq("vkitti2_panoptic_val", records, tmp_path)
    assert res["PQ"] == 100.0 and res["PQ_th"] == 100.0 and res["PQ_st"] == 100.0


def test_segdep_d2_build_evaluators_on_the_views(vkitti2_names, tmp_path):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    kinds = lambda name: sorted(type(e).__name__ for e in build_evaluators(cfg, name)._evaluators)  # noqa: E731
    assert kinds("vkitti2_panoptic_val") == sorted(
        [LabelledSemSegEvaluator.__name__, DepthEvaluator.__name__, PanopticDepthEvaluator.__name__]
    )
    assert kinds("vkitti2_sem_seg_val") == sorted([LabelledSemSegEvaluator.__name__, DepthEvaluator.__name__])


class _StockSemSegTrainer(DefaultTrainer):
    """What a detectron2 project's train_net does (DeepLab's, for instance): its evaluator from
    the dataset's evaluator_type; the mapper is DefaultTrainer's, detectron2's DatasetMapper."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if MetadataCatalog.get(dataset_name).evaluator_type == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        raise NotImplementedError(dataset_name)


def test_stock_semantic_segmentor_trains_on_vkitti2_sem_seg_train(vkitti2_names, tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(D2_CONFIGS, "Misc", "semantic_R_50_FPN_1x.yaml"))  # detectron2's own
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "14", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "255",
        "DATASETS.TRAIN", ("vkitti2_sem_seg_train",), "DATASETS.TEST", ("vkitti2_sem_seg_val",),
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 208, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 208,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 3, "SOLVER.BASE_LR", 0.01, "SOLVER.WARMUP_ITERS", 0,
        "SOLVER.CHECKPOINT_PERIOD", 1000, "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0,
        "OUTPUT_DIR", str(tmp_path),
    ])
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend on a busy 2-core machine
    try:
        trainer = _StockSemSegTrainer(cfg)
        original_step = trainer._trainer.run_step

        def run_step():
            original_step()
            losses.append(trainer.storage.history("total_loss").latest())

        trainer._trainer.run_step = run_step
        trainer.train()
        results = _StockSemSegTrainer.test(cfg, trainer.model)  # the stock evaluation, on vkitti2_sem_seg_val
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0


def test_views_without_prepared_files_say_to_run_the_preparation(synthetic_vkitti2, tmp_path):
    datasets_root = _vkitti2_copy(synthetic_vkitti2, tmp_path / "datasets")
    prepared = datasets_root / "vkitti2" / "prepared"
    with builtin_names_under(datasets_root, "vkitti2_", register_all_vkitti2, register_all_vkitti2_prepared):
        for name in VIEWS:
            with pytest.raises(FileNotFoundError, match=r"run `python datasets/prepare_vkitti2\.py`") as err:
                DatasetCatalog.get(name)
            assert str(prepared) in str(err.value)
        assert len(DatasetCatalog.get("vkitti2_val")) == 4  # the depth-aware names work as before

        summary = prepare_vkitti2(str(datasets_root / "vkitti2"), progress=False)
        assert (summary["converted"], summary["skipped"]) == (8, 0)
        assert len(DatasetCatalog.get("vkitti2_sem_seg_val")) == len(DatasetCatalog.get("vkitti2_panoptic_val")) == 4

        # a frame whose label PNG is gone: named, not silently dropped
        lost = prepared / "sem_seg" / "Scene20_fog_Camera_0_00001.png"
        lost.unlink()
        with pytest.raises(FileNotFoundError, match=r"1 of 4 frames .*Scene20_fog_Camera_0_00001\.png.*prepare_vkitti2"):
            DatasetCatalog.get("vkitti2_sem_seg_val")
        summary = prepare_vkitti2(str(datasets_root / "vkitti2"), progress=False)
        assert (summary["converted"], summary["skipped"]) == (1, 7)
        assert len(DatasetCatalog.get("vkitti2_sem_seg_val")) == 4

        # the panoptic view also needs its split JSON (detectron2's COCOPanopticEvaluator reads it)
        (prepared / "vkitti2_panoptic_val.json").unlink()
        with pytest.raises(FileNotFoundError, match=r"vkitti2_panoptic_val\.json does not exist.*prepare_vkitti2"):
            DatasetCatalog.get("vkitti2_panoptic_val")


# ------------------------------------------------------------------------------------------------
# Cityscapes + depth: detectron2's Cityscapes and COCO panoptic evaluators, its Panoptic-DeepLab mapper
# ------------------------------------------------------------------------------------------------


def test_cityscapes_depth_metadata_is_detectron2s(cityscapes_names):
    root = cityscapes_names
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"cityscapes_fine_panoptic_depth_{split}")
        d2 = MetadataCatalog.get(f"cityscapes_fine_panoptic_{split}")  # detectron2's own registration
        assert meta.evaluator_type == d2.evaluator_type == "cityscapes_panoptic_seg"
        assert meta.gt_dir == os.path.join(root, "gtFine", split)
        assert meta.panoptic_json == os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json")
        assert meta.label_divisor == d2.label_divisor and meta.ignore_label == d2.ignore_label
        assert meta.thing_dataset_id_to_contiguous_id == d2.thing_dataset_id_to_contiguous_id
        assert meta.thing_classes == d2.thing_classes and meta.stuff_classes == d2.stuff_classes


def test_cityscapes_depth_with_d2_panoptic_deeplab_mapper(cityscapes_names):
    name = "cityscapes_fine_panoptic_depth_train"
    generator = _target_generator(name)
    d2_mapper = PanopticDeeplabDatasetMapper(augmentations=[], image_format="RGB", panoptic_target_generator=generator)
    ours = DepthPanopticDatasetMapper(
        True, augmentations=[], image_format="RGB", depth_range=(1e-3, 80.0), panoptic_target_generator=generator
    )
    for record in DatasetCatalog.get(name):
        got, expected = d2_mapper(record), ours(record)
        for key in TARGET_KEYS:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)
        np.testing.assert_array_equal(expected["depth"].numpy(), read_depth(record))


def test_cityscapes_depth_with_d2_cityscapes_and_coco_panoptic_evaluators(cityscapes_names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cityscapesscripts' instance evaluation writes matches.json to the cwd
    name = "cityscapes_fine_panoptic_depth_val"
    records = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    thing_ids = set(meta.thing_dataset_id_to_contiguous_id.values())
    semantic, instance = CityscapesSemSegEvaluator(name), CityscapesInstanceEvaluator(name)
    semantic.reset()
    instance.reset()
    for record in records:
        labels = np.asarray(Image.open(record["sem_seg_file_name"]))  # labelTrainIds
        ids = rgb2id(d2_utils.read_image(record["pan_seg_file_name"], "RGB"))
        things = [s for s in record["segments_info"] if s["category_id"] in thing_ids and not s["iscrowd"]]
        assert things
        pred = Instances(labels.shape)
        pred.pred_masks = torch.stack([torch.from_numpy(ids == s["id"]) for s in things])
        pred.pred_classes = torch.tensor([s["category_id"] for s in things])
        pred.scores = torch.ones(len(things))
        semantic.process([record], [{"sem_seg": _one_hot(labels, 19)}])
        instance.process([record], [{"instances": pred}])
    assert semantic.evaluate()["sem_seg"]["IoU"] == 100.0
    assert instance.evaluate()["segm"]["AP"] == 100.0
    res = _pq(name, records, tmp_path)
    assert res["PQ"] == 100.0 and res["PQ_th"] == 100.0 and res["PQ_st"] == 100.0
