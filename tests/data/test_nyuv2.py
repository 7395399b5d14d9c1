"""NYU Depth v2: datasets/prepare_nyuv2.py (labelled .mat -> PNGs) and the names nyuv2_{train,test}.

The synthetic .mat is written the way MATLAB writes v7.3 files: HDF5 behind a 512-byte MATLAB
header, arrays column-major, so that h5py reports MATLAB's H x W x 3 x N ``images`` as (N, 3, W, H).
"""
import contextlib
import importlib.util
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from segdep_d2.data import read_depth
from segdep_d2.data.datasets.nyuv2 import (
    NYUV2_CLASSES,
    NYUv2FormatError,
    NYUv2LabeledMat,
    apply_class_mapping,
    nyuv2_frame_paths,
    prepare_nyuv2,
    read_class_mapping,
    read_splits,
    register_all_nyuv2,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "datasets", "prepare_nyuv2.py")
N, H, W, K = 4, 48, 64, 10  # frames, height, width, class ids in the .mat (894 in the real one)
# mapClass of the synthetic classMapping40.mat: class id k (1..K) -> NYU-40 class (1..40, 0 = void)
MAP_CLASS = np.array([1, 2, 40, 5, 5, 0, 7, 22, 39, 0])
SPLIT = {"train": [1, 3], "test": [4, 2]}
PLANTED = (5, 40)  # (row, col) of the pixel made distinctive in frame 1


def _matlab_header(path):
    """Give an HDF5 file (created with a 512-byte user block) MATLAB's v7.3 header."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(text.ljust(116, b" ") + b" " * 8 + b"\x00\x02IM")


def _write_labeled_mat(path, rgb, depth, labels, num_names=K):
    """``rgb`` (N, H, W, 3), ``depth`` / ``labels`` (N, H, W), stored as MATLAB would (h5py: reversed axes)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=rgb.transpose(0, 3, 2, 1))  # (N, 3, W, H)
        f.create_dataset("depths", data=depth.transpose(0, 2, 1).astype(np.float32))  # (N, W, H)
        f.create_dataset("labels", data=labels.transpose(0, 2, 1).astype(np.uint16))
        refs = f.create_group("#refs#")
        names = f.create_dataset("names", (1, num_names), dtype=h5py.ref_dtype)  # a 1 x K cell of strings
        for k in range(num_names):
            refs.create_dataset(f"n{k}", data=np.frombuffer(f"class{k + 1}".encode(), np.uint8).astype(np.uint16)[:, None])
            names[0, k] = refs[f"n{k}"].ref
    _matlab_header(path)


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    rgb[0, PLANTED[0], PLANTED[1]] = (255, 0, 7)
    rgb[0, :, :, 0][rgb[0, :, :, 0] == 255] = 254  # the planted pixel is the only R = 255 one
    rgb[0, PLANTED[0], PLANTED[1], 0] = 255
    depth = rng.uniform(0.3, 9.9, (N, H, W))
    depth[:, 0, :3] = 0.0  # no measurement
    depth[1, 2, 2] = np.nan
    labels = rng.integers(0, K + 1, (N, H, W))  # 0 = unlabelled, 1..K
    labels[0, PLANTED[0], PLANTED[1]] = 3  # -> NYU-40 40 (otherprop), train id 39
    return rgb, depth, labels


def _expected_train_ids(labels):
    table = np.concatenate([[255], np.where(MAP_CLASS == 0, 255, MAP_CLASS - 1)])
    return table[labels].astype(np.uint8)


@pytest.fixture
def nyu_inputs(tmp_path):
    """The three inputs under ``<tmp>/datasets/nyuv2`` with their official names, and the frames."""
    root = tmp_path / "datasets" / "nyuv2"
    root.mkdir(parents=True)
    frames = _frames()
    _write_labeled_mat(str(root / "nyu_depth_v2_labeled.mat"), *frames)
    class_names = np.empty((1, 40), dtype=object)
    class_names[0, :] = list(NYUV2_CLASSES)
    scipy.io.savemat(str(root / "classMapping40.mat"), {"mapClass": MAP_CLASS[None, :].astype(float), "className": class_names})
    scipy.io.savemat(
        str(root / "splits.mat"),
        {"trainNdxs": np.array(SPLIT["train"], float)[:, None], "testNdxs": np.array(SPLIT["test"], float)[:, None]},
    )
    inputs = {k: str(root / n) for k, n in (("mat", "nyu_depth_v2_labeled.mat"), ("mapping", "classMapping40.mat"), ("splits", "splits.mat"))}
    return str(root), inputs, frames


def _prepare(inputs, output, **kwargs):
    return prepare_nyuv2(inputs["mat"], inputs["mapping"], inputs["splits"], output, progress=False, **kwargs)


def _check_outputs(root, frames):
    rgb, depth, labels = frames
    for i in range(N):
        paths = nyuv2_frame_paths(root, f"{i + 1:04d}")
        with Image.open(paths["image"]) as im:
            assert im.mode == "RGB" and im.size == (W, H)
            np.testing.assert_array_equal(np.asarray(im), rgb[i])
        with Image.open(paths["sem_seg"]) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), _expected_train_ids(labels[i]))
        decoded = read_depth({"depth_file_name": paths["depth"], "depth_format": "nyu_mm", "height": H, "width": W})
        valid = np.isfinite(depth[i]) & (depth[i] > 0)
        assert np.abs(decoded[valid] - depth[i][valid]).max() <= 0.0005 + 1e-6  # rounded to the millimetre
        assert (decoded[~valid] == 0).all() and (decoded[valid] > 0).all()


def test_prepare_writes_what_the_mat_holds(nyu_inputs):
    root, inputs, frames = nyu_inputs
    summary = _prepare(inputs, root)
    assert summary["output"] == root and (summary["frames"], summary["converted"], summary["skipped"]) == (4, 4, 0)
    _check_outputs(root, frames)
    # orientation: the pixel planted at (row, col) of frame 1 is there, with its label
    with Image.open(nyuv2_frame_paths(root, "0001")["image"]) as im:
        image = np.asarray(im)
    assert tuple(np.argwhere(image[..., 0] == 255)[0]) == PLANTED and tuple(image[PLANTED]) == (255, 0, 7)
    with Image.open(nyuv2_frame_paths(root, "0001")["sem_seg"]) as im:
        assert np.asarray(im)[PLANTED] == 39  # 894-id 3 -> otherprop
    # the split lists, in the order of the split file
    for split, indices in SPLIT.items():
        path, count = summary["splits"][split]
        with open(path) as f:
            assert f.read().split() == [f"{i:04d}" for i in indices] and count == len(indices)
    # the reader sees the same layout
    with NYUv2LabeledMat(inputs["mat"]) as mat:
        assert (mat.num_frames, mat.height, mat.width, mat.num_names) == (N, H, W, K)
        np.testing.assert_array_equal(mat.frame(2)[2], frames[2][1])


def test_mapping_and_split_formats(nyu_inputs, tmp_path):
    _, inputs, _ = nyu_inputs
    table = read_class_mapping(inputs["mapping"])
    assert table.tolist() == _expected_train_ids(np.arange(K + 1)).tolist()
    # .npy / .txt: index = 894-class id (0 first), value = NYU-40 class, 0 = void
    full = np.concatenate([[0], MAP_CLASS])
    np.save(tmp_path / "map.npy", full)
    np.savetxt(tmp_path / "map.txt", full, fmt="%d")
    # classMapping40.mat saved as MATLAB v7.3 (HDF5, transposed)
    with h5py.File(tmp_path / "map73.mat", "w", userblock_size=512) as f:
        f.create_dataset("mapClass", data=MAP_CLASS[:, None].astype(float))
    _matlab_header(str(tmp_path / "map73.mat"))
    for name in ("map.npy", "map.txt", "map73.mat"):
        assert read_class_mapping(str(tmp_path / name)).tolist() == table.tolist(), name
    np.savetxt(tmp_path / "shifted.txt", MAP_CLASS, fmt="%d")  # mapClass without the leading 0
    with pytest.raises(NYUv2FormatError, match="entry 0"):
        read_class_mapping(str(tmp_path / "shifted.txt"))
    np.savetxt(tmp_path / "big.txt", np.concatenate([[0], MAP_CLASS + 1]), fmt="%d")
    with pytest.raises(NYUv2FormatError, match="1..40"):
        read_class_mapping(str(tmp_path / "big.txt"))
    with pytest.raises(NYUv2FormatError, match="label id 11 is outside the class mapping"):
        apply_class_mapping(np.array([[1, 11]]), table)
    # a mapping for another number of classes than the .mat names
    np.savetxt(tmp_path / "short.txt", full[:-1], fmt="%d")
    with pytest.raises(NYUv2FormatError, match="maps 9 class ids but .* names 10"):
        prepare_nyuv2(inputs["mat"], str(tmp_path / "short.txt"), inputs["splits"], str(tmp_path / "out"), progress=False)

    assert read_splits(inputs["splits"]) == SPLIT
    (tmp_path / "split.json").write_text(json.dumps(SPLIT))
    (tmp_path / "split.txt").write_text("# split index\ntrain 1\ntest 4\ntrain 3\ntest 2\n")
    assert read_splits(str(tmp_path / "split.json")) == read_splits(str(tmp_path / "split.txt")) == SPLIT
    (tmp_path / "overlap.json").write_text(json.dumps({"train": [1, 2], "test": [2]}))
    with pytest.raises(NYUv2FormatError, match="both train and test"):
        read_splits(str(tmp_path / "overlap.json"))
    (tmp_path / "zero.json").write_text(json.dumps({"train": [0], "test": [1]}))
    with pytest.raises(NYUv2FormatError, match="1-based"):
        read_splits(str(tmp_path / "zero.json"))
    (tmp_path / "far.json").write_text(json.dumps({"train": [1], "test": [5]}))
    with pytest.raises(NYUv2FormatError, match="holds 4 frames"):
        prepare_nyuv2(inputs["mat"], inputs["mapping"], str(tmp_path / "far.json"), str(tmp_path / "out"), progress=False)
    # the labelled .mat must be HDF5
    with pytest.raises(NYUv2FormatError, match="v7.3"):
        NYUv2LabeledMat(inputs["splits"])  # a v5 .mat


def test_rerun_skips_finished_frames_and_redoes_unfinished_ones(nyu_inputs, tmp_path):
    _, inputs, frames = nyu_inputs
    output = str(tmp_path / "prepared")
    _prepare(inputs, output)
    before = {os.path.join(b, n): os.stat(os.path.join(b, n)).st_mtime_ns for b, _, ns in os.walk(output) for n in ns}
    # a killed run: its temporary file, a depth PNG cut short under its final name, a label missing
    leftover = os.path.join(output, "depth", ".tmp-4242-0003.png")
    with open(leftover, "wb") as f:
        f.write(b"\x89PNG half")
    cut = nyuv2_frame_paths(output, "0002")["depth"]
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    os.remove(nyuv2_frame_paths(output, "0004")["sem_seg"])

    summary = _prepare(inputs, output)
    assert (summary["converted"], summary["skipped"]) == (2, 2)
    assert not os.path.exists(leftover)
    _check_outputs(output, frames)
    for path, mtime in before.items():
        if path.endswith(".png") and not os.path.basename(path).startswith(("0002", "0004")):
            assert os.stat(path).st_mtime_ns == mtime, f"{path} was rewritten"
    assert (_prepare(inputs, output, overwrite=True)["converted"]) == 4


@contextlib.contextmanager
def _builtin_nyuv2_under(datasets_root):
    """``nyuv2_{train,test}`` registered (as ``import segdep_d2`` does) against ``datasets_root``
    for the duration; the catalogs as before afterwards."""
    saved = dict(DatasetCatalog), dict(MetadataCatalog)
    for name in [n for n in DatasetCatalog if n.startswith("nyuv2_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)
    try:
        register_all_nyuv2(str(datasets_root))
        yield
    finally:
        for catalog, before in zip((DatasetCatalog, MetadataCatalog), saved):
            catalog.clear()
            catalog.update(before)


def test_command_line_registration_and_detectron2_mapper(nyu_inputs):
    root, _, frames = nyu_inputs
    datasets_root = os.path.dirname(root)
    # before preparation: the names exist and say how to prepare
    with _builtin_nyuv2_under(datasets_root):
        with pytest.raises(FileNotFoundError, match=r"python datasets/prepare_nyuv2.py.*nyuv2_test.txt|nyuv2_test.txt.*python datasets/prepare_nyuv2.py"):
            DatasetCatalog.get("nyuv2_test")

    # `python datasets/prepare_nyuv2.py` with $DETECTRON2_DATASETS: every input at its default place
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, SCRIPT, "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"NYUv2 prepared under {root}: 4 frames (4 converted, 0 already done)" in run.stdout
    assert "nyuv2_test: 2 frames" in run.stdout and "4/4" in run.stderr  # the progress bar
    _check_outputs(root, frames)
    # in-process main(argv), a second time: nothing left to do; a missing input is named
    spec = importlib.util.spec_from_file_location("prepare_nyuv2_cli", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    summary = cli.main(["--output", root, "--workers", "1", "--no-progress"])
    assert (summary["converted"], summary["skipped"]) == (0, 4)
    with pytest.raises(SystemExit, match="class mapping not found: .*absent.mat"):
        cli.main(["--output", root, "--mapping", os.path.join(root, "absent.mat"), "--no-progress"])

    with _builtin_nyuv2_under(datasets_root):
        test = DatasetCatalog.get("nyuv2_test")
        assert [r["image_id"] for r in test] == ["0004", "0002"]
        assert [r["image_id"] for r in DatasetCatalog.get("nyuv2_train")] == ["0001", "0003"]
        record = test[0]
        assert record == {
            "file_name": os.path.join(root, "images", "0004.png"),
            "image_id": "0004",
            "height": H,
            "width": W,
            "sem_seg_file_name": os.path.join(root, "sem_seg", "0004.png"),
            "depth_file_name": os.path.join(root, "depth", "0004.png"),
            "depth_format": "nyu_mm",
        }
        meta = MetadataCatalog.get("nyuv2_test")
        assert meta.stuff_classes[:3] == ["wall", "floor", "cabinet"] and len(meta.stuff_classes) == 40
        assert meta.stuff_classes[23] == "refridgerator" and meta.stuff_classes[39] == "otherprop"
        assert len(meta.stuff_colors) == 40 and meta.ignore_label == 255
        assert meta.depth_range == (1e-3, 10.0) and meta.evaluator_type == "sem_seg" and meta.eval_crop == "nyu"

        # detectron2's stock DatasetMapper reads the label map as it is
        mapper = DatasetMapper(is_train=False, augmentations=[], image_format="RGB")
        mapped = mapper(dict(record))
        np.testing.assert_array_equal(mapped["sem_seg"].numpy(), _expected_train_ids(frames[2][3]))
        np.testing.assert_array_equal(mapped["image"].permute(1, 2, 0).numpy(), frames[0][3])
        assert float(read_depth(record)[10, 10]) == pytest.approx(frames[1][3][10, 10], abs=5e-4)

        # and detectron2's SemSegEvaluator scores a perfect prediction 100 mIoU
        evaluator = SemSegEvaluator("nyuv2_test", distributed=False)
        evaluator.reset()
        for r in test:
            with Image.open(r["sem_seg_file_name"]) as im:
                gt = torch.from_numpy(np.asarray(im).astype(np.int64))
            logits = torch.nn.functional.one_hot(gt.clamp(max=39), 40).permute(2, 0, 1).float()
            evaluator.process([r], [{"sem_seg": logits}])
        assert evaluator.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)
