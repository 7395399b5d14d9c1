"""segdep_d2.data.pseudo_labels with a Hugging Face SegFormer checkpoint folder as the teacher
(the SafeTrip-Q seed's mit-b2 teacher, here a tiny random one)."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

pytest.importorskip("transformers")

from segdep_testing import drop_keys as _drop  # noqa: E402
from segdep_testing import register_records as _register  # noqa: E402
from segdep_testing import save_tiny_segformer  # noqa: E402
from segdep_d2.data import read_depth, read_sem_seg  # noqa: E402
from segdep_d2.data.datasets.metadata import depth_panoptic_metadata  # noqa: E402
from segdep_d2.data.datasets.vkitti2 import load_vkitti2, vkitti2_metadata  # noqa: E402
from segdep_d2.data.pseudo_labels import (  # noqa: E402
    INFO_NAME,
    ClassMismatchError,
    PseudoLabelError,
    SegformerTeacher,
    generate_pseudo_labels,
    is_hf_checkpoint,
    load_hf_teacher,
    load_teacher,
    teacher_classes,
)

VKITTI2_CLASSES = vkitti2_metadata()["stuff_classes"]
SEG_KEYS = ("sem_seg_file_name", "label_format", "colors_file_name", "instance_file_name")
CPU = ["MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_segformer(tmp_path_factory.mktemp("segformer"), VKITTI2_CLASSES)


@pytest.fixture(scope="module")
def teacher(checkpoint):
    return load_teacher(checkpoint, None, CPU)


@pytest.fixture(scope="module")
def frames(synthetic_vkitti2):
    root, _ = synthetic_vkitti2
    return load_vkitti2(root, ("Scene01",), ("clone", "fog"))[:2]




def _resized(cfg, record):
    """The image as _predict feeds it: cfg.INPUT.FORMAT, shortest edge resized to MIN_SIZE_TEST."""
    image = utils.read_image(record["file_name"], format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    return image, resize.get_transform(image).apply_image(image)


def _reference_logits(checkpoint, resized, original_size):
    """HF's own processor (no resize) and model, then bilinear upsampling: input size, original size."""
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    processor = SegformerImageProcessor.from_pretrained(checkpoint, local_files_only=True)
    pixel_values = processor(images=resized.copy(), do_resize=False, return_tensors="pt")["pixel_values"]
    model = SegformerForSemanticSegmentation.from_pretrained(checkpoint, local_files_only=True).eval()
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits
    logits = F.interpolate(logits, size=resized.shape[:2], mode="bilinear", align_corners=False)
    return pixel_values, F.interpolate(logits, size=original_size, mode="bilinear", align_corners=False)[0]


def test_a_segformer_folder_loads_as_a_detectron2_style_teacher(checkpoint, teacher, frames):
    cfg, model = teacher
    assert is_hf_checkpoint(checkpoint) and isinstance(model, SegformerTeacher) and not model.training
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.DEVICE == "cpu" and model.device.type == "cpu"
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (32, 1333)  # min(32, 48) of the processor
    assert cfg.HF_TEACHER.PATH == checkpoint and cfg.HF_TEACHER.MODEL_TYPE == "segformer"
    assert teacher_classes(cfg) == VKITTI2_CLASSES
    # the explicit entry point makes the same teacher
    cfg2, model2 = load_hf_teacher(checkpoint, device="cpu")
    assert cfg2 == cfg
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)

    image, resized = _resized(cfg, frames[0])
    assert image.shape[:2] == (64, 208) and resized.shape[:2] == (32, 104)  # non-square, resized
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    with torch.no_grad():
        output = model([{"image": tensor, "height": 64, "width": 208}])[0]
    assert set(output) == {"sem_seg"} and output["sem_seg"].shape == (len(VKITTI2_CLASSES), 64, 208)

    pixel_values, expected = _reference_logits(checkpoint, resized, (64, 208))
    torch.testing.assert_close(model.normalize(tensor), pixel_values, rtol=0, atol=1e-5)  # processor's mean/std
    torch.testing.assert_close(output["sem_seg"], expected, rtol=1e-4, atol=1e-5)
    # no height / width: outputs at the input's size
    with torch.no_grad():
        assert model([{"image": tensor}])[0]["sem_seg"].shape == (len(VKITTI2_CLASSES), 32, 104)


def test_without_a_preprocessor_config_segformers_defaults_apply(tmp_path):
    folder = save_tiny_segformer(tmp_path / "bare", ["a", "b"], processor_size=None)
    cfg, model = load_hf_teacher(folder, device="cpu")
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (512, 1333)
    np.testing.assert_allclose(model.image_mean.flatten().numpy(), [0.485, 0.456, 0.406])
    np.testing.assert_allclose(model.image_std.flatten().numpy(), [0.229, 0.224, 0.225])
    assert model.rescale_factor == pytest.approx(1 / 255) and teacher_classes(cfg) == ["a", "b"]


def test_segformer_pseudo_labels_for_a_registered_dataset(checkpoint, teacher, frames, tmp_path):
    cfg, model = teacher
    records = _drop(frames, SEG_KEYS)  # depth only
    name = _register("segformer_test_depth_only", records, **vkitti2_metadata())
    summary = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=0.0, progress=False)
    assert (summary["images"], summary["written"], summary["skipped_labelled"]) == (2, 2, 0)
    assert summary["name"] == "segformer_test_depth_only_pseudo_sem_seg" and summary["confident_fraction"] == 1.0

    loaded = DatasetCatalog.get(summary["name"])
    assert [r["file_name"] for r in loaded] == [r["file_name"] for r in records]
    reference = []
    for record, original in zip(loaded, records):
        assert record["pseudo_labels"] == ["sem_seg"] and record["sem_seg_file_name"].startswith(str(tmp_path))
        with Image.open(record["sem_seg_file_name"]) as im:
            assert im.mode == "L" and (im.height, im.width) == (64, 208)
        labels = read_sem_seg(record)
        _, resized = _resized(cfg, original)
        logits = _reference_logits(checkpoint, resized, (64, 208))[1]
        reference.append(logits)
        top2 = logits.topk(2, dim=0).values.numpy()
        clear = top2[0] - top2[1] > 1e-4  # near-ties of an untrained model may go either way
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(labels[clear], logits.argmax(dim=0).numpy()[clear])
        np.testing.assert_array_equal(read_depth(record), read_depth(original))  # depth kept

    with open(tmp_path / INFO_NAME) as f:
        settings = json.load(f)["settings"]
    assert settings["teacher"]["hugging_face_checkpoint"] == checkpoint
    assert settings["teacher"]["model_type"] == "segformer" and settings["teacher"]["weights"] == checkpoint
    assert settings["teacher"]["classes"] == VKITTI2_CLASSES and settings["teacher"]["train_dataset"] is None
    assert MetadataCatalog.get(summary["name"]).stuff_classes == VKITTI2_CLASSES

    # resumable: the recorded HF teacher compares equal to the loaded one
    again = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=0.0, progress=False)
    assert (again["written"], again["already_done"]) == (0, 2)
    # a threshold: the softmax of the (upsampled) logits decides
    confidence = torch.softmax(reference[0], dim=0).max(dim=0).values.numpy()
    threshold = float(np.median(confidence))
    strict = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path / "strict"), min_confidence=threshold,
                                    progress=False)
    labels = read_sem_seg(DatasetCatalog.get(strict["name"])[0])
    clear = np.abs(confidence - threshold) > 1e-5
    expected = np.where(confidence >= threshold, reference[0].argmax(dim=0).numpy(), 255)
    np.testing.assert_array_equal(labels[clear], expected[clear])
    assert 0.3 < (labels != 255).mean() < 0.7

    # a SegFormer has no depth head
    with pytest.raises(PseudoLabelError, match=r"outputs \['sem_seg'\], no 'depth'"):
        generate_pseudo_labels(cfg, model, name, "depth", str(tmp_path / "depth"), overwrite_existing_labels=True,
                               progress=False)


def test_other_id2label_names_need_a_class_map(checkpoint, teacher, frames, tmp_path):
    cfg, model = teacher
    categories = [{"id": i + 1, "name": n, "isthing": 0} for i, n in enumerate(["road", "sky", "vegetation"])]
    name = _register("segformer_test_other_classes", _drop(frames[:1], SEG_KEYS),
                     **depth_panoptic_metadata(categories, depth_range=(1e-3, 80)))
    with pytest.raises(ClassMismatchError) as error:
        generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), progress=False)
    message = str(error.value)
    assert "'Terrain'" in message and "'vegetation'" in message and "--class-map" in message and checkpoint in message
    assert not os.path.exists(tmp_path / "sem_seg")

    summary = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=0.0,
                                     class_map={"Road": "road", "Sky": "sky", "Tree": "vegetation"}, progress=False)
    assert summary["written"] == 1
    assert set(np.unique(read_sem_seg(DatasetCatalog.get(summary["name"])[0]))) <= {0, 1, 2, 255}


def test_a_dataset_without_classes_takes_the_id2label_names(teacher, frames, tmp_path):
    cfg, model = teacher
    metadata = {k: v for k, v in vkitti2_metadata().items() if not k.startswith("stuff_")}
    name = _register("segformer_test_no_classes", _drop(frames[:1], SEG_KEYS), **metadata)
    summary = generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path), min_confidence=0.0, progress=False)
    meta = MetadataCatalog.get(summary["name"])
    assert meta.stuff_classes == VKITTI2_CLASSES and meta.ignore_label == 255


def test_a_pseudo_sem_seg_replaces_cvat_labels_and_keeps_the_confidence_map(teacher, frames, tmp_path):
    """Sidewalk records: CVAT mask labels go together; the ZED confidence PNG path is kept (absolute)."""
    cfg, model = teacher
    record = dict(_drop(frames[:1], SEG_KEYS)[0], sem_seg_file_name=str(tmp_path / "annotations.xml"),
                  label_format="cvat", cvat_image_name="frame.png", cvat_label_to_id={"road": 1},
                  cvat_attribute_to_id={}, confidence_file_name=os.path.relpath(frames[0]["file_name"]))
    name = _register("segformer_test_cvat", [record], **vkitti2_metadata())
    generate_pseudo_labels(cfg, model, name, "sem_seg", str(tmp_path / "out"), min_confidence=0.0,
                           overwrite_existing_labels=True, progress=False)
    with open(tmp_path / "out" / "manifest.json") as f:
        written = json.load(f)[0]
    assert not {"cvat_image_name", "cvat_label_to_id", "cvat_attribute_to_id", "label_format"} & set(written)
    assert written["sem_seg_file_name"] == os.path.join("sem_seg", f"{record['image_id']}.png")
    assert written["confidence_file_name"] == os.path.abspath(frames[0]["file_name"])


def test_folders_that_are_no_segformer_teacher_are_refused_by_name(checkpoint, tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(PseudoLabelError, match="'bert'") as error:
        load_teacher(str(bert), None)
    assert str(bert) in str(error.value) and "segformer" in str(error.value)

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(open(os.path.join(checkpoint, "config.json")).read())
    with pytest.raises(PseudoLabelError, match="no weights") as error:
        load_hf_teacher(str(no_weights), device="cpu")
    assert str(no_weights) in str(error.value)

    # a SegFormer backbone without its decode head: random logits are no teacher
    from transformers import SegformerConfig, SegformerModel

    backbone = tmp_path / "backbone"
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1],
                             sr_ratios=[2, 1], strides=[4, 2], patch_sizes=[7, 3], mlp_ratios=[2, 2])
    SegformerModel(config).save_pretrained(str(backbone))
    with pytest.raises(PseudoLabelError, match=r"missing \['decode_head") as error:
        load_hf_teacher(str(backbone), device="cpu")
    assert str(backbone) in str(error.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PseudoLabelError, match="no config.json") as error:
        load_teacher(str(empty), None)
    assert str(empty) in str(error.value)

    with pytest.raises(PseudoLabelError, match="holds its own weights"):
        load_teacher(checkpoint, "model_final.pth")
