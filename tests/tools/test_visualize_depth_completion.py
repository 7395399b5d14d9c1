"""tools/visualize_depth_panoptic.py with a depth-completion model (random weights, CPU) on a tiny synthetic
KITTI depth completion set: points | depth | error (| confidence) panels, --sparse-depth for plain images."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO_ROOT, "tools", "visualize_depth_panoptic.py")
CONFIG = os.path.join(
    REPO_ROOT, "projects/DepthCompletion/configs/Synthetic-DepthCompletion/depth_completion_cpu.yaml"
)
H, W = 64, 160  # the synthetic frames
TEST_SIZE = 48  # the model runs on resized inputs: the sparse points must follow the resize
OVERRIDES = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", str(TEST_SIZE)]
PAD = 4  # side_by_side's gap
STEM = "2011_09_26_drive_0002_sync_image_02_0000000001"  # the val split's frame with ground truth


@pytest.fixture(scope="module")
def tool(visualize_tool):
    return visualize_tool


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """tools/make_synthetic_dataset.py --format kitti_completion at H x W: one drive per split, 2 frames."""
    from segdep_d2.data.synthetic import generate_kitti_completion

    root = tmp_path_factory.mktemp("datasets")
    generate_kitti_completion(str(root / "kitti"), frames=2, test_frames=1, height=H, width=W, seed=0)
    return root


@pytest.fixture(scope="module")
def val_record(datasets_root):
    from segdep_d2.data.datasets.kitti_completion import load_kitti_depth_completion

    records = load_kitti_depth_completion(str(datasets_root / "kitti"), "val")
    assert len(records) == 1 and "depth_file_name" in records[0] and "sparse_depth_file_name" in records[0]
    return records[0]


def _depth_range():
    from detectron2.data import MetadataCatalog

    from segdep_d2.utils.visualizer import display_depth_range

    return display_depth_range(MetadataCatalog.get("kitti_depth_completion_val"))


def _read(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def _check_points_image(points_rgb, sparse):
    """Colour exactly within 1 pixel (the 3 x 3 squares at this size) of a point, grey elsewhere; each
    point's own pixel in the depth colour map's colour of its depth."""
    from segdep_d2.utils.visualizer import colorize_depth

    assert points_rgb.shape == sparse.shape + (3,)
    coloured = (points_rgb[..., 0] != points_rgb[..., 1]) | (points_rgb[..., 1] != points_rgb[..., 2])
    near = cv2.dilate((sparse > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert near.sum() < near.size // 2  # a sparse input, not a dense one
    assert (coloured == near).all(), (np.argwhere(coloured != near)[:5], coloured.sum(), near.sum())
    lo, hi = _depth_range()
    for r, c in (np.argwhere(sparse == sparse[sparse > 0].min())[0], np.argwhere(sparse == sparse.max())[0]):
        expected = colorize_depth(np.array([[sparse[r, c]]]), lo, hi)[0, 0]
        assert (points_rgb[r, c] == expected).all(), (r, c, sparse[r, c], points_rgb[r, c], expected)


def test_dataset_cli(datasets_root, val_record, tmp_path):
    """--dataset: points, depth, error and a one-row panel of the three."""
    from segdep_d2.data.depth_io import read_sparse_depth

    out = tmp_path / "out"
    cmd = [sys.executable, TOOL, "--config-file", CONFIG, "--dataset", "kitti_depth_completion_val",
           "--output", str(out)] + OVERRIDES
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == [f"{STEM}_{k}.png" for k in ("depth", "error", "panel", "points")]

    points, depth, error, panel = (_read(out / f"{STEM}_{k}.png") for k in ("points", "depth", "error", "panel"))
    assert points.shape == (H, W, 3) and depth.shape[0] == error.shape[0] == H and depth.shape[1] > W
    assert panel.shape == (H, points.shape[1] + depth.shape[1] + error.shape[1] + 2 * PAD, 3)  # 3 in a row
    assert (panel[:, :W] == points).all()
    _check_points_image(points, read_sparse_depth(val_record))


def test_visualize_with_confidence(tool, val_record, tmp_path):
    """The predictor path (no mapper) with a model that predicts depth_confidence: a 4th panel."""
    cfg = tool.setup_cfg(CONFIG, OVERRIDES + ["MODEL.DEPTH_COMPLETION.PREDICT_CONFIDENCE", "True"])
    model = tool.load_model(cfg)
    written = tool.visualize(cfg, model, [val_record], str(tmp_path / "out"))
    kinds = ("points", "depth", "error", "confidence", "panel")
    assert [os.path.basename(p) for p in written] == [f"{STEM}_{k}.png" for k in kinds]
    images = dict(zip(kinds, (_read(p) for p in written)))
    assert images["confidence"].shape[0] == H and images["confidence"].shape[1] > W
    widths = sum(images[k].shape[1] for k in kinds[:4])
    assert images["panel"].shape == (H, widths + 3 * PAD, 3)  # 4 in a row


def test_input_without_sparse_depth_errors(tool, val_record, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--config-file", CONFIG, "--input", val_record["file_name"], "--output", str(tmp_path / "out")]
                  + OVERRIDES)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "depth-completion model" in err and "--sparse-depth" in err and "--dataset" in err
    assert not (tmp_path / "out").exists()


def test_input_with_sparse_depth(tool, val_record, tmp_path):
    """--input + --sparse-depth (a folder, matched by stem): points and depth, no error panel (no GT)."""
    from segdep_d2.data.depth_io import read_sparse_depth

    sparse_dir = os.path.dirname(val_record["sparse_depth_file_name"])
    out = tmp_path / "out"
    written = tool.main(["--config-file", CONFIG, "--input", val_record["file_name"], "--sparse-depth", sparse_dir,
                         "--output", str(out)] + OVERRIDES)
    stem = "0000000001"
    assert [os.path.basename(p) for p in written] == [f"{stem}_{k}.png" for k in ("points", "depth", "panel")]
    points, depth, panel = (_read(p) for p in written)
    assert panel.shape == (H, points.shape[1] + depth.shape[1] + PAD, 3)
    _check_points_image(points, read_sparse_depth(val_record))


def test_attach_sparse_depth(tool, tmp_path):
    images = [{"file_name": str(tmp_path / f"img_{i}.png")} for i in range(2)]
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    for name in ("b.png", "a.png"):
        shutil.copyfile(__file__, sparse / name)  # only names matter here
    # no stem matches: by order (a folder lists sorted)
    attached = tool.attach_sparse_depth(images, [str(sparse)], "nyu_mm")
    assert [os.path.basename(d["sparse_depth_file_name"]) for d in attached] == ["a.png", "b.png"]
    assert {d["sparse_depth_format"] for d in attached} == {"nyu_mm"}
    # by stem, whatever the order
    for i in range(2):
        shutil.copyfile(__file__, sparse / f"img_{i}.png")
    attached = tool.attach_sparse_depth(images[::-1], [str(sparse / "img_*.png")])
    assert [os.path.basename(d["sparse_depth_file_name"]) for d in attached] == ["img_1.png", "img_0.png"]
    with pytest.raises(ValueError, match="no sparse depth file"):
        tool.attach_sparse_depth(images, [str(sparse / "a.png")])


def test_predictor_scatters_sparse_depth_through_the_resize(tool):
    """Predictor.model_input resizes the sparse points with the image (transform_sparse_depth: same count,
    same values); a depth-completion model without sparse depth is refused clearly."""
    from segdep_d2.data.transforms import transform_sparse_depth
    from segdep_d2.engine.inference import Predictor

    cfg = tool.setup_cfg(CONFIG, OVERRIDES)
    predictor = Predictor(cfg, model=torch.nn.Identity())
    image = np.zeros((H, W, 3), np.uint8)
    sparse = np.zeros((H, W), np.float32)
    sparse[[3, 20, 40, 63], [5, 80, 81, 159]] = [1.5, 7.0, 30.0, 79.0]
    inputs = predictor.model_input(image, "RGB", sparse_depth=sparse)
    assert inputs["image"].shape == (3, TEST_SIZE, W * TEST_SIZE // H) and (inputs["height"], inputs["width"]) == (H, W)
    moved = inputs["sparse_depth"].numpy()
    assert moved.shape == tuple(inputs["image"].shape[1:])
    expected = transform_sparse_depth(predictor.aug.get_transform(image), sparse, output_shape=moved.shape)
    assert (moved == expected).all()
    assert sorted(moved[moved > 0].tolist()) == [1.5, 7.0, 30.0, 79.0]
    with pytest.raises(ValueError, match="sparse depth"):
        predictor.model_input(image, "RGB")


def test_render_without_segmentation():
    """An output with depth only: no overlay (and no crash), the input and the depth in the panel."""
    from detectron2.data import MetadataCatalog

    from segdep_d2.engine.inference import overlay_of, render

    image = np.full((H, W, 3), 128, np.uint8)
    images = render(image, {"depth": torch.full((H, W), 10.0)}, MetadataCatalog.get("kitti_depth_completion_val"))
    assert list(images) == ["depth", "panel"] and overlay_of(images) is None
    assert images["panel"].shape == (H, W + images["depth"].shape[1] + PAD, 3)
