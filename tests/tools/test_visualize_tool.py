"""tools/visualize_depth_panoptic.py on a tiny random-weights CPU model."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO_ROOT, "tools", "visualize_depth_panoptic.py")
CONFIG = os.path.join(
    REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
H, W = 96, 320
OVERRIDES = ["INPUT.MIN_SIZE_TEST", str(H), "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def tool(visualize_tool):
    return visualize_tool


@pytest.fixture(scope="module")
def weights(tool, tmp_path_factory):
    """Random-init weights saved as a real checkpoint, so the tool's loading path runs."""
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = tool.setup_cfg(CONFIG, OVERRIDES)
    model = tool.build_model(cfg)
    save_dir = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(save_dir)).save("model")
    return str(save_dir / "model.pth")


def _write_images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(n):
        # smooth gradients + a block: closer to a real image than noise, cheap to segment
        yy, xx = np.mgrid[0:H, 0:W]
        image = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 60 * i)], axis=-1)
        image[30:70, 100:180] = rng.randint(0, 255, size=3)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"frame_{i}.png")
    return folder


def _check_png(path, height=None, min_width=None, min_height=None):
    assert os.path.isfile(path), path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        im.verify()
    with Image.open(path) as im:
        width, h = im.size
        pixels = np.asarray(im)
    if height is not None:
        assert h == height, (path, im.size)
    if min_width is not None:
        assert width >= min_width, (path, im.size)
    if min_height is not None:
        assert h >= min_height, (path, im.size)
    assert pixels.std() > 0  # not a blank image


def test_cli_on_image_folder(weights, tmp_path):
    images = _write_images(tmp_path / "images")
    out = tmp_path / "out"
    cmd = [sys.executable, TOOL, "--config-file", CONFIG, "--input", str(images), "--output", str(out)]
    cmd += ["MODEL.WEIGHTS", weights] + OVERRIDES
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Loading from" in proc.stdout + proc.stderr  # the weights were loaded, not skipped

    for i in range(2):
        stem = out / f"frame_{i}"
        _check_png(f"{stem}_panoptic.png", height=H, min_width=W)
        _check_png(f"{stem}_depth.png", height=H, min_width=W + 20)  # + colour bar
        _check_png(f"{stem}_panel.png", min_width=2 * W, min_height=2 * H)  # input | panoptic / depth
        assert not os.path.exists(f"{stem}_error.png")  # plain files have no GT depth
    assert len(os.listdir(out)) == 6


def test_visualize_in_process_with_gt_depth(tool, tmp_path):
    """A dataset dict with GT depth also gets an error panel; ids become safe file stems."""
    cfg = tool.setup_cfg(CONFIG, OVERRIDES + ["MODEL.WEIGHTS", ""])
    model = tool.load_model(cfg)
    images = _write_images(tmp_path / "images", n=1)
    gt = np.linspace(2.0, 60.0, H * W, dtype=np.float32).reshape(H, W)
    gt[:, :32] = 0.0  # no measurement
    np.save(tmp_path / "gt.npy", gt)
    record = {
        "file_name": str(images / "frame_0.png"),
        "image_id": "Scene20/clone/00001",
        "height": H,
        "width": W,
        "depth_file_name": str(tmp_path / "gt.npy"),
        "depth_format": "npy_m",
    }
    written = tool.visualize(cfg, model, [record], str(tmp_path / "out"))
    names = [os.path.basename(p) for p in written]
    assert names == [f"Scene20_clone_00001_{k}.png" for k in ("panoptic", "depth", "error", "panel")]
    _check_png(written[2], height=H, min_width=W + 20)
    with Image.open(written[2]) as im:
        assert (np.asarray(im)[:, :32] == 0).all()  # pixels without GT are black
    _check_png(written[3], min_width=2 * W, min_height=2 * H)


def test_expand_inputs(tool, tmp_path):
    images = _write_images(tmp_path / "images")
    (images / "notes.txt").write_text("not an image")
    files = [d["file_name"] for d in tool.expand_inputs([str(images), str(images / "frame_1.png")])]
    assert [os.path.basename(f) for f in files] == ["frame_0.png", "frame_1.png", "frame_1.png"]
    assert len(tool.expand_inputs([str(images / "*.png")])) == 2
    with pytest.raises(FileNotFoundError):
        tool.expand_inputs([str(tmp_path / "missing.png")])
