"""datasets/prepare_vkitti2.py: VKITTI2 classgt / instancegt -> detectron2's label-id and COCO panoptic files."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from panopticapi.utils import rgb2id
from PIL import Image

from segdep_d2.data import read_panoptic, read_sem_seg
from segdep_d2.data.datasets.vkitti2 import load_vkitti2
from segdep_d2.data.datasets.vkitti2_prepared import prepare_vkitti2, prepared_frame_paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "datasets", "prepare_vkitti2.py")
SCENES, VARIATIONS = ("Scene01", "Scene20"), ("clone", "fog")


def _copy(synthetic_vkitti2, dst, scenes=SCENES):
    root, _ = synthetic_vkitti2
    for scene in scenes:
        shutil.copytree(os.path.join(root, scene), os.path.join(dst, scene))
    return str(dst)


def _tree(folder):
    """name -> bytes of every file (links followed) under ``folder``."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def test_prepared_files_hold_what_the_readers_decode(synthetic_vkitti2, tmp_path):
    root = _copy(synthetic_vkitti2, tmp_path / "vkitti2")
    summary = prepare_vkitti2(root, progress=False)
    prepared = os.path.join(root, "prepared")
    assert summary["output"] == prepared and (summary["frames"], summary["converted"], summary["skipped"]) == (8, 8, 0)
    records = load_vkitti2(root, SCENES, VARIATIONS)
    for record in records:
        paths = prepared_frame_paths(prepared, record["image_id"])
        with Image.open(paths["sem_seg"]) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), read_sem_seg(record))
        ids, segments = read_panoptic(record)
        with Image.open(paths["panoptic"]) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(rgb2id(np.asarray(im)), ids)
        # the image link: a relative symlink to the original JPEG (the tree moves as a whole)
        assert os.path.islink(paths["image"]) and not os.path.isabs(os.readlink(paths["image"]))
        assert os.path.samefile(paths["image"], record["file_name"])
        with open(paths["segments"]) as f:
            entry = json.load(f)
        stem = record["image_id"]
        assert entry["image"] == {"id": stem, "file_name": stem + ".jpg", "width": 208, "height": 64}
        assert entry["annotation"]["image_id"] == stem and entry["annotation"]["file_name"] == stem + ".png"
        saved = entry["annotation"]["segments_info"]
        # dataset category ids (trainId + 1) in the JSON, as in COCO / Cityscapes panoptic JSONs
        assert [(s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in saved] == [
            (s["id"], s["category_id"] + 1, s["iscrowd"], s["area"]) for s in segments
        ]
        for s in saved:
            ys, xs = np.nonzero(ids == s["id"])
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    for split, scene in (("train", "Scene01"), ("val", "Scene20")):
        path, count = summary["splits"][split]
        assert path == os.path.join(prepared, f"vkitti2_panoptic_{split}.json") and count == 4
        with open(path) as f:
            data = json.load(f)
        assert [i["id"] for i in data["images"]] == [a["image_id"] for a in data["annotations"]] == [
            f"{scene}_{v}_Camera_0_{k:05d}" for v in VARIATIONS for k in (0, 1)
        ]
        assert [(c["id"], c["name"], c["isthing"]) for c in data["categories"]][11:] == [
            (12, "Truck", 1), (13, "Car", 1), (14, "Van", 1)
        ]


def test_rerun_skips_finished_frames_and_redoes_unfinished_ones(synthetic_vkitti2, tmp_path):
    root = _copy(synthetic_vkitti2, tmp_path / "vkitti2")
    output = str(tmp_path / "elsewhere")  # --output: a folder of its own
    prepare_vkitti2(root, output, progress=False)
    before = {os.path.join(b, n): os.lstat(os.path.join(b, n)).st_mtime_ns for b, _, ns in os.walk(output) for n in ns}
    # a run killed mid-way: a temporary file left behind, a frame without its panoptic outputs
    leftover = os.path.join(output, "panoptic", ".tmp-4242-Scene01_fog_Camera_0_00001.png")
    with open(leftover, "wb") as f:
        f.write(b"\x89PNG half")
    unfinished = prepared_frame_paths(output, "Scene01_fog_Camera_0_00001")
    os.remove(unfinished["panoptic"])
    os.remove(unfinished["segments"])

    summary = prepare_vkitti2(root, output, progress=False)
    assert (summary["converted"], summary["skipped"]) == (1, 7)
    assert not os.path.exists(leftover)
    assert os.path.isfile(unfinished["panoptic"]) and os.path.isfile(unfinished["segments"])
    for path, mtime in before.items():
        if path.endswith((".jpg", ".png")) and "Scene01_fog_Camera_0_00001" not in path:
            assert os.lstat(path).st_mtime_ns == mtime, f"{path} was rewritten"
    # outside the dataset root the image links are absolute
    assert os.path.isabs(os.readlink(unfinished["image"]))


def test_workers_and_the_command_line_write_the_same_files(synthetic_vkitti2, tmp_path):
    root = _copy(synthetic_vkitti2, tmp_path / "datasets" / "vkitti2")
    prepare_vkitti2(root, str(tmp_path / "serial"), progress=False)
    # `python datasets/prepare_vkitti2.py` with $DETECTRON2_DATASETS: every scene, into vkitti2/prepared
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, SCRIPT, "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    prepared = os.path.join(root, "prepared")
    assert f"VKITTI2 prepared under {prepared}: 8 frames (8 converted, 0 already done)" in run.stdout
    assert "vkitti2_panoptic_val: 4 frames" in run.stdout
    assert "frame/s" in run.stderr or "8/8" in run.stderr  # the progress bar
    assert _tree(prepared) == _tree(str(tmp_path / "serial"))
    # in-process main(argv) (what the script runs), a second time: nothing left to do
    spec = importlib.util.spec_from_file_location("prepare_vkitti2_cli", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    summary = cli.main(["--root", root, "--workers", "1", "--no-progress"])
    assert (summary["converted"], summary["skipped"]) == (0, 8)


def test_thing_pixels_without_a_track_become_a_crowd_segment(synthetic_vkitti2, tmp_path):
    root = _copy(synthetic_vkitti2, tmp_path / "vkitti2", scenes=("Scene20",))
    record = load_vkitti2(root, ("Scene20",), ("clone",))[0]
    with Image.open(record["instance_file_name"]) as im:
        palette, track = im.getpalette(), np.array(im)
    ids, _ = read_panoptic(record)
    lost = ids == 13003  # Car (dataset id 13), trackID + 1 = 3: its pixels lose their track id
    assert lost.sum() > 0
    track[lost] = 0
    im = Image.fromarray(track, mode="P")
    im.putpalette(palette)
    im.save(record["instance_file_name"])
    prepare_vkitti2(root, progress=False)
    with open(prepared_frame_paths(os.path.join(root, "prepared"), record["image_id"])["segments"]) as f:
        segments = {s["id"]: s for s in json.load(f)["annotation"]["segments_info"]}
    assert 13003 not in segments
    assert segments[13000]["category_id"] == 13 and segments[13000]["iscrowd"] == 1
    assert segments[13000]["area"] == int(lost.sum())


def test_an_unreadable_frame_is_named(synthetic_vkitti2, tmp_path):
    root = _copy(synthetic_vkitti2, tmp_path / "vkitti2", scenes=("Scene20",))
    record = load_vkitti2(root, ("Scene20",), ("fog",))[1]
    Image.new("RGB", (208, 64), (1, 2, 3)).save(record["sem_seg_file_name"])  # not a VKITTI2 colour
    with pytest.raises(RuntimeError, match=r"Scene20_fog_Camera_0_00001 .*classgt_00001\.png.*colour \(1, 2, 3\)"):
        prepare_vkitti2(root, progress=False)
