"""segdep_d2.data.pseudo_labels: a teacher's predictions written as a dataset's missing labels."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from segdep_testing import drop_keys as _drop
from segdep_testing import register_records as _register
from segdep_d2.data import DepthPanopticDatasetMapper, read_depth, read_sem_seg
from segdep_d2.data.datasets.metadata import depth_panoptic_metadata
from segdep_d2.data.datasets.vkitti2 import load_vkitti2, vkitti2_metadata
from segdep_d2.data.depth_io import DepthFormatError, encode_depth, write_depth
from segdep_d2.data.pseudo_labels import (
    INFO_NAME,
    MANIFEST_NAME,
    ClassMismatchError,
    PseudoLabelError,
    class_lookup,
    generate_pseudo_labels,
    load_teacher,
    register_pseudo_labels,
    sem_seg_pseudo_label,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(
    REPO, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
OPTS = ["INPUT.MIN_SIZE_TEST", "32", "MODEL.DEVICE", "cpu"]
VKITTI2_CLASSES = vkitti2_metadata()["stuff_classes"]
SEG_KEYS = ("sem_seg_file_name", "label_format", "colors_file_name", "instance_file_name")
DEPTH_KEYS = ("depth_file_name", "depth_format")


# ---- the depth encoder next to the decoder ----


@pytest.mark.parametrize(
    "depth_format, tolerance",
    [
        ("vkitti2_cm", 0.005), ("kitti_png256", 0.5 / 256), ("nyu_mm", 0.0005), ("npy_m", 0.0),
        ("cityscapes_disparity", None),
    ],
)
def test_write_depth_round_trips_through_read_depth(tmp_path, depth_format, tolerance):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 60.0, size=(6, 9)).astype(np.float32)
    depth[0, :3] = 0.0  # no measurement stays no measurement
    if depth_format == "nyu_mm":
        depth = np.minimum(depth, 9.5)
    if depth_format == "cityscapes_disparity":  # nearest storable: 0.22 * 2262.5 / 255.996 = 1.94 m
        depth[depth > 0] = np.maximum(depth[depth > 0], 2.0)
    camera = tmp_path / "camera.json"
    camera.write_text(json.dumps({"extrinsic": {"baseline": 0.22}, "intrinsic": {"fx": 2262.5}}))
    path = str(tmp_path / ("d.npy" if depth_format == "npy_m" else "d.png"))
    write_depth(path, depth, depth_format, camera_file_name=str(camera))
    decoded = read_depth({"depth_file_name": path, "depth_format": depth_format, "camera_file_name": str(camera)})
    assert decoded.dtype == np.float32 and decoded.shape == depth.shape
    assert np.all(decoded[0, :3] == 0) and np.all(decoded[depth > 0] > 0)
    if depth_format == "cityscapes_disparity":  # 1/256 px of disparity: relative error grows with depth
        disparity_error = np.abs(0.22 * 2262.5 / decoded[depth > 0] - 0.22 * 2262.5 / depth[depth > 0])
        assert disparity_error.max() <= 0.5 / 256 + 1e-6
        # nearer than the largest storable disparity: no measurement rather than a wrong distance
        near = str(tmp_path / "near.png")
        write_depth(near, np.array([[1.0, 3.0]]), depth_format, camera_file_name=str(camera))
        decoded = read_depth({"depth_file_name": near, "depth_format": depth_format, "camera_file_name": str(camera)})
        assert decoded[0, 0] == 0 and decoded[0, 1] == pytest.approx(3.0, rel=1e-3)
    else:
        np.testing.assert_allclose(decoded, depth, rtol=0, atol=tolerance + 1e-6)


def test_encode_depth_refuses_what_no_format_stores():
    with pytest.raises(DepthFormatError, match="NaN"):
        encode_depth(np.array([[1.0, np.nan]]), "vkitti2_cm")
    with pytest.raises(DepthFormatError, match="negative"):
        encode_depth(np.array([[1.0, -2.0]]), "npy_m")
    with pytest.raises(DepthFormatError, match="camera"):
        encode_depth(np.ones((2, 2)), "cityscapes_disparity")
    # beyond the range of the uint16 encoding: clipped (VKITTI2's sky value), never wrapped
    assert encode_depth(np.array([[700.0]]), "vkitti2_cm")[0, 0] == 65535


# ---- pure class handling ----


def test_class_lookup_identity_permutation_mismatch_and_map():
    np.testing.assert_array_equal(class_lookup(["a", "b"], ["a", "b"]), [0, 1])
    np.testing.assert_array_equal(class_lookup(["a", "b"], ["b", "a"]), [1, 0])
    with pytest.raises(ClassMismatchError, match=r"\['Tree'\].*\['vegetation'\].*--class-map"):
        class_lookup(["Sky", "Tree"], ["Sky", "vegetation"])
    np.testing.assert_array_equal(class_lookup(["Sky", "Tree", "Misc"], ["sky", "veg"], {"Sky": "sky", "Tree": "veg"}),
                                  [0, 1, -1])
    with pytest.raises(ClassMismatchError, match="Bush"):
        class_lookup(["Sky", "Tree"], ["sky"], {"Bush": "sky"})
    with pytest.raises(ClassMismatchError, match="forest"):
        class_lookup(["Sky", "Tree"], ["sky"], {"Tree": "forest"})


def test_sem_seg_pseudo_label_merges_mapped_probabilities():
    # 3 teacher classes, two mapped onto dataset class 0, one unmapped
    probs = torch.tensor([[[0.4, 0.1, 0.3]], [[0.4, 0.1, 0.3]], [[0.2, 0.8, 0.4]]])  # (C=3, 1, 3)
    labels, fraction = sem_seg_pseudo_label(probs.log(), np.array([0, 0, -1]), 1, 0.55)
    # pixel 0: 0.8 for class 0; pixel 1: the unmapped class wins -> ignore; pixel 2: 0.6 vs 0.4 -> class 0
    np.testing.assert_array_equal(labels, [[0, 255, 0]])
    assert fraction == pytest.approx(2 / 3)
    labels, _ = sem_seg_pseudo_label(probs.log(), np.array([0, 0, -1]), 1, 0.7)
    np.testing.assert_array_equal(labels, [[0, 255, 255]])


# ---- a real teacher on synthetic VKITTI2 frames ----


@pytest.fixture(scope="module")
def teacher(teacher_weights):
    """(cfg, model, weights): the tiny CPU PanopticDepthLab with random weights saved and loaded back."""
    weights = teacher_weights
    cfg, model = load_teacher(CONFIG, weights, OPTS)
    return cfg, model, weights


@pytest.fixture(scope="module")
def frames(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    return load_vkitti2(root, ("Scene01",), ("clone", "fog"))[:3]




def _direct(cfg, model, record):
    """The teacher's output on one image, preprocessed by hand as DatasetMapper does at test time."""
    image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    assert resized.shape[0] == 32  # the test-time resize did happen
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    with torch.no_grad():
        return model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])[0]


def test_sem_seg_pseudo_labels_are_the_confident_argmax(teacher, frames, tmp_path):
    cfg, model, _ = teacher
    # two images without segmentation, one keeping its real labels (skipped)
    records = _drop(frames[:2], SEG_KEYS) + frames[2:3]
    name = _register("pseudo_test_depth_only", records, **vkitti2_metadata())
    probs = torch.softmax(_direct(cfg, model, records[0])["sem_seg"], dim=0)
    confidence, argmax = probs.max(dim=0)
    threshold = float(confidence.median())  # half the pixels confident

    summary = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=threshold,
                                     progress=False)
    assert summary["name"] == "pseudo_test_depth_only_pseudo_sem_seg"
    assert (summary["images"], summary["written"], summary["already_done"], summary["skipped_labelled"]) == (3, 2, 0, 1)

    with Image.open(tmp_path / "sem_seg" / f"{records[0]['image_id']}.png") as im:
        assert im.mode == "L" and (im.height, im.width) == (64, 208)
        labels = np.asarray(im)
    expected = np.where(confidence.numpy() >= threshold, argmax.numpy(), 255)
    clear = np.abs(confidence.numpy() - threshold) > 1e-5
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert 0.3 < (labels != 255).mean() < 0.7

    # the registered manifest: pseudo records point at the PNGs and keep depth; the labelled one is unchanged
    loaded = DatasetCatalog.get(summary["name"])
    assert [r["image_id"] for r in loaded] == [r["image_id"] for r in records]
    assert loaded[0]["pseudo_labels"] == ["sem_seg"] and "label_format" not in loaded[0]
    assert loaded[2]["sem_seg_file_name"] == frames[2]["sem_seg_file_name"] and loaded[2]["label_format"] == "vkitti2"
    mean_fraction = np.mean([(read_sem_seg(r) != 255).mean() for r in loaded[:2]])
    assert summary["confident_fraction"] == pytest.approx(mean_fraction)
    meta = MetadataCatalog.get(summary["name"])
    assert meta.stuff_classes == VKITTI2_CLASSES and meta.pseudo_label_task == "sem_seg"
    # segdep_d2's training mapper reads it: labels from the pseudo PNG, depth from the original file
    mapper = DepthPanopticDatasetMapper(True, augmentations=[], image_format="RGB", depth_range=(1e-3, 80.0))
    sample = mapper(loaded[0])
    np.testing.assert_array_equal(sample["sem_seg"].numpy(), labels)
    np.testing.assert_array_equal(sample["depth"].numpy(), read_depth(records[0]))

    # a later process: only the folder (the source dataset unknown there) -> metadata from the snapshot
    DatasetCatalog.remove(summary["name"])
    MetadataCatalog.remove(summary["name"])
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    assert register_pseudo_labels(str(tmp_path)) == summary["name"]
    meta = MetadataCatalog.get(summary["name"])
    assert meta.stuff_classes == VKITTI2_CLASSES
    assert meta.stuff_dataset_id_to_contiguous_id == vkitti2_metadata()["stuff_dataset_id_to_contiguous_id"]
    assert DatasetCatalog.get(summary["name"])[0]["sem_seg_file_name"] == loaded[0]["sem_seg_file_name"]


@pytest.mark.parametrize("metadata_format, extension, tolerance", [("vkitti2_cm", ".png", 0.005), (None, ".npy", 0.0)])
def test_depth_pseudo_labels_decode_to_the_teachers_depth(teacher, frames, tmp_path, metadata_format, extension,
                                                          tolerance):
    cfg, model, _ = teacher
    records = _drop(frames[:1], DEPTH_KEYS)  # segmentation only
    metadata = {k: v for k, v in vkitti2_metadata().items() if k != "depth_format"}
    if metadata_format:
        metadata["depth_format"] = metadata_format  # VKITTI2's own metadata says so too
    name = _register("pseudo_test_seg_only", records, **metadata)
    summary = generate_pseudo_labels(cfg, model, name, "depth", str(tmp_path), progress=False)
    assert summary["depth_format"] == (metadata_format or "npy_m") and summary["written"] == 1
    path = tmp_path / "depth" / f"{records[0]['image_id']}{extension}"
    record = DatasetCatalog.get(summary["name"])[0]
    assert record["depth_file_name"] == str(path) and record["depth_format"] == summary["depth_format"]
    decoded = read_depth(record)
    teacher_depth = _direct(cfg, model, records[0])["depth"].numpy()
    assert decoded.shape == (64, 208) and teacher_depth.min() > 0
    np.testing.assert_allclose(decoded, teacher_depth, rtol=0, atol=tolerance + 1e-6)


def test_resume_skips_finished_files_and_redoes_broken_ones(teacher, frames, tmp_path):
    cfg, model, _ = teacher
    name = _register("pseudo_test_resume", _drop(frames, SEG_KEYS), **vkitti2_metadata())
    first = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=0.0, progress=False)
    assert first["written"] == 3
    paths = [str(tmp_path / "sem_seg" / f"{r['image_id']}.png") for r in frames]
    original = [open(p, "rb").read() for p in paths]
    with open(paths[1], "wb") as f:  # a half-written file from a killed copy
        f.write(original[1][: len(original[1]) // 2])
    os.remove(paths[2])
    leftover = tmp_path / "sem_seg" / ".tmp-999999999-x.png"  # no such process: left over
    leftover.write_bytes(b"partial")
    os.utime(paths[0], (1, 1))

    again = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=0.0, progress=False)
    assert (again["written"], again["already_done"]) == (2, 1)
    assert os.stat(paths[0]).st_mtime == 1  # not rewritten
    assert [open(p, "rb").read() for p in paths] == original
    assert not leftover.exists()
    assert again["confident_fraction"] == first["confident_fraction"] == 1.0

    # other settings on the same folder are refused, unless everything is redone
    with pytest.raises(PseudoLabelError, match=r"min_confidence: 0\.0 -> 1\.0.*overwrite"):
        generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=1.0, progress=False)
    redone = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=1.0, overwrite=True,
                                    progress=False)
    assert redone["written"] == 3 and redone["confident_fraction"] == 0.0
    assert os.path.isfile(tmp_path / MANIFEST_NAME) and os.path.isfile(tmp_path / INFO_NAME)


def test_other_classes_need_a_class_map(teacher, frames, tmp_path):
    cfg, model, _ = teacher
    categories = [{"id": i + 1, "name": n, "isthing": 0} for i, n in enumerate(["road", "sky", "vegetation"])]
    records = _drop(frames[:1], SEG_KEYS)
    meta = depth_panoptic_metadata(categories, depth_range=(1e-3, 80))
    name = _register("pseudo_test_other_classes", records, **meta)
    with pytest.raises(ClassMismatchError) as error:
        generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), progress=False)
    message = str(error.value)
    assert "'Terrain'" in message and "'vegetation'" in message and "--class-map" in message
    assert not os.path.exists(tmp_path / "sem_seg")  # refused before writing anything

    groups = {
        "road": ["Road", "Terrain", "GuardRail", "Misc"],
        "sky": ["Sky", "Building", "TrafficSign", "TrafficLight", "Pole"],
        "vegetation": ["Tree", "Vegetation", "Truck", "Car"],
    }
    class_map = {teacher_class: target for target, members in groups.items() for teacher_class in members}
    class_map["Van"] = None  # explicitly ignored
    probs = torch.softmax(_direct(cfg, model, records[0])["sem_seg"], dim=0).numpy()
    index = {c: i for i, c in enumerate(VKITTI2_CLASSES)}
    merged = np.stack(
        [sum(probs[index[c]] for c in groups[t]) for t in ("road", "sky", "vegetation")] + [probs[index["Van"]]]
    )
    threshold = float(np.median(merged.max(0)))
    summary = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=threshold,
                                     class_map=class_map, progress=False)
    assert summary["written"] == 1
    labels = read_sem_seg(DatasetCatalog.get(summary["name"])[0])
    expected = np.where(merged.max(0) >= threshold, merged.argmax(0), 255)
    expected[expected == 3] = 255  # the unmapped class won
    top2 = np.sort(merged, axis=0)[-2:]
    clear = (top2[1] - top2[0] > 1e-5) & (np.abs(merged.max(0) - threshold) > 1e-5)
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert set(np.unique(labels)) <= {0, 1, 2, 255} and 0.3 < (labels != 255).mean() < 0.7


SEMANTIC_SEGMENTOR_YAML = """
MODEL:
  META_ARCHITECTURE: "SemanticSegmentor"
  DEVICE: "cpu"
  BACKBONE: {NAME: "build_resnet_fpn_backbone"}
  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64, OUT_FEATURES: ["res2", "res3", "res4", "res5"]}
  FPN: {IN_FEATURES: ["res2", "res3", "res4", "res5"], OUT_CHANNELS: 32}
  SEM_SEG_HEAD: {NAME: "SemSegFPNHead", IN_FEATURES: ["p2", "p3", "p4", "p5"], NUM_CLASSES: 14, CONVS_DIM: 32}
DATASETS:
  TRAIN: ("vkitti2_train",)
  TEST: ("vkitti2_val",)
INPUT: {FORMAT: "RGB", MIN_SIZE_TEST: 32, MAX_SIZE_TEST: 1024}
VERSION: 2
"""


def test_a_detectron2_semantic_segmentor_teaches_segmentation_only(frames, tmp_path):
    """Any model build_model makes: detectron2's SemanticSegmentor (logits at the original size)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    config = tmp_path / "semseg.yaml"
    config.write_text(SEMANTIC_SEGMENTOR_YAML)
    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("semseg")
    cfg, model = load_teacher(str(config), str(tmp_path / "semseg.pth"))

    records = _drop(frames[:1], SEG_KEYS + DEPTH_KEYS)
    name = _register("pseudo_test_unlabelled", records, **vkitti2_metadata())
    summary = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path / "seg"), min_confidence=0.0,
                                     progress=False)
    labels = read_sem_seg(DatasetCatalog.get(summary["name"])[0])
    expected = _direct(cfg, model, records[0])["sem_seg"].argmax(dim=0).numpy()
    np.testing.assert_array_equal(labels, expected)

    with pytest.raises(PseudoLabelError, match=r"outputs \['sem_seg'\], no 'depth'"):
        generate_pseudo_labels(cfg, model, name, "depth", str(tmp_path / "depth"), progress=False)
    assert not os.path.exists(tmp_path / "depth" / INFO_NAME)  # nothing claims the folder
