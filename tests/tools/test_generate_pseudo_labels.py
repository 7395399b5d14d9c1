"""tools/generate_pseudo_labels.py: the command line over segdep_d2.data.pseudo_labels."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from segdep_d2.data import read_depth
from segdep_d2.data.datasets.metadata import depth_panoptic_metadata
from segdep_d2.data.datasets.vkitti2 import load_vkitti2
from segdep_d2.data.pseudo_labels import register_pseudo_labels

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tools", "generate_pseudo_labels.py")
CONFIG = os.path.join(
    REPO, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
OPTS = ["INPUT.MIN_SIZE_TEST", "32", "MODEL.DEVICE", "cpu"]  # as the teacher_weights fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def tool():
    """The script as a module (tools/ is not a package), as tests/tools/conftest.py loads the others."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("segdep_tool_generate_pseudo_labels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_registered_depth_pseudo_labels(synthetic_vkitti2, teacher_weights, tmp_path):
    """End to end in a fresh process, on the builtin vkitti2_val read from $DETECTRON2_DATASETS
    (two frames: Scene20/clone): the depth is rewritten from the teacher in VKITTI2's own encoding."""
    root, _ = synthetic_vkitti2
    datasets = tmp_path / "datasets"
    shutil.copytree(os.path.join(root, "Scene20", "clone"), datasets / "vkitti2" / "Scene20" / "clone")
    output = tmp_path / "pseudo"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), OMP_NUM_THREADS="1")
    command = [
        sys.executable, SCRIPT, "--teacher-config", CONFIG, "--teacher-weights", teacher_weights,
        "--dataset", "vkitti2_val", "--task", "depth", "--overwrite-existing-labels", "--output", str(output),
        *OPTS,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vkitti2_val_pseudo_depth: 2 images, 2 written, 0 already done, 0 skipped" in result.stdout
    summary = json.loads(result.stdout.split("summary: ", 1)[1].splitlines()[0])
    assert summary["depth_format"] == "vkitti2_cm" and summary["confident_fraction"] == 1.0
    assert "it/s" in result.stderr or "image/s" in result.stderr or "s/image" in result.stderr  # the progress bar

    # a later process registers the folder by itself
    name = register_pseudo_labels(str(output))
    assert name == "vkitti2_val_pseudo_depth"
    records = DatasetCatalog.get(name)
    originals = load_vkitti2(str(datasets / "vkitti2"), ("Scene20",), ("clone",))
    assert [r["file_name"] for r in records] == [r["file_name"] for r in originals]
    for record in records:
        assert record["depth_file_name"].startswith(str(output / "depth")) and record["depth_format"] == "vkitti2_cm"
        depth = read_depth(record)
        assert depth.shape == (64, 208) and depth.min() > 0

    # again: everything is done already
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 images, 0 written, 2 already done" in result.stdout


def test_cli_refuses_a_teacher_with_other_classes(synthetic_vkitti2, teacher_weights, tool, tmp_path, capsys):
    root, _ = synthetic_vkitti2
    records = [
        {k: v for k, v in r.items() if k not in ("sem_seg_file_name", "label_format", "colors_file_name")}
        for r in load_vkitti2(root, ("Scene01",), ("clone",))[:1]
    ]
    name = "pseudo_cli_other_classes"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    categories = [{"id": 1, "name": "road", "isthing": 0}, {"id": 2, "name": "sky", "isthing": 0}]
    MetadataCatalog.get(name).set(**depth_panoptic_metadata(categories, depth_range=(1e-3, 80)))
    args = ["--teacher-config", CONFIG, "--teacher-weights", teacher_weights, "--dataset", name, "--task", "sem_seg",
            "--output", str(tmp_path / "out"), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        tool.main(args + OPTS)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'Road'" in err and "'road'" in err and "--class-map" in err and "Traceback" not in err

    class_map = tmp_path / "map.json"
    class_map.write_text(json.dumps({"Road": "road", "Sky": "sky"}))
    summary = tool.main(args + ["--class-map", str(class_map), "--min-confidence", "0"] + OPTS)
    assert summary["written"] == 1 and summary["name"] == f"{name}_pseudo_sem_seg"
    with Image.open(DatasetCatalog.get(summary["name"])[0]["sem_seg_file_name"]) as im:
        labels = np.asarray(im)
    assert set(np.unique(labels)) <= {0, 1, 255}


def _tiny_segformer(folder, classes):
    """A tiny random SegformerForSemanticSegmentation saved with its image processor (as
    tests/data/test_segformer_teacher.py makes one)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 1], sr_ratios=[2, 1],
        strides=[4, 2], patch_sizes=[7, 3], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=len(classes), id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
    )
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(config).save_pretrained(str(folder))
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return str(folder)


def test_cli_takes_a_hugging_face_segformer_folder_as_teacher(synthetic_vkitti2, teacher_weights, tool, tmp_path,
                                                              capsys):
    pytest.importorskip("transformers")
    root, _ = synthetic_vkitti2
    records = [
        {k: v for k, v in r.items() if k not in ("sem_seg_file_name", "label_format", "colors_file_name")}
        for r in load_vkitti2(root, ("Scene01",), ("clone",))[:1]
    ]
    name = "pseudo_cli_segformer"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    categories = [{"id": 1, "name": "road", "isthing": 0}, {"id": 2, "name": "sky", "isthing": 0}]
    MetadataCatalog.get(name).set(**depth_panoptic_metadata(categories, depth_range=(1e-3, 80)))
    checkpoint = _tiny_segformer(tmp_path / "segformer", ["road", "sky"])
    args = ["--dataset", name, "--task", "sem_seg", "--output", str(tmp_path / "out"), "--no-progress"]

    summary = tool.main(["--teacher-config", checkpoint] + args + ["--min-confidence", "0", "MODEL.DEVICE", "cpu"])
    assert summary["written"] == 1 and summary["name"] == f"{name}_pseudo_sem_seg"
    assert "mean fraction of confident (labelled) pixels: 1.000" in capsys.readouterr().out
    with Image.open(DatasetCatalog.get(summary["name"])[0]["sem_seg_file_name"]) as im:
        assert (im.height, im.width) == (64, 208) and set(np.unique(np.asarray(im))) <= {0, 1}
    with open(tmp_path / "out" / "pseudo_labels.json") as f:
        teacher = json.load(f)["settings"]["teacher"]
    assert teacher["hugging_face_checkpoint"] == checkpoint and teacher["model_type"] == "segformer"

    # a folder carries its weights; a config file needs them; a non-SegFormer folder is named
    other = tmp_path / "vit"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit"}))
    for teacher_args, expected in [
        (["--teacher-config", checkpoint, "--teacher-weights", teacher_weights], "holds its own weights"),
        (["--teacher-config", CONFIG], "needs its weights"),
        (["--teacher-config", str(other)], f"{other} holds a Hugging Face 'vit' model"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            tool.main(teacher_args + args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
