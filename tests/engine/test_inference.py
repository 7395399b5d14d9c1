"""segdep_d2.engine.inference: the predictor, the drawing and the image / video runs, on tiny
randomly initialised models of both families (HydraNet: sem_seg + depth; PanopticDepthLab: + panoptic)."""
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from segdep_d2 import add_segdep_config
from segdep_d2.engine.inference import (
    BadInputError,
    FrameTimes,
    Predictor,
    image_files,
    render,
    run_on_images,
    run_on_video,
    unique_stem,
    video_frame,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HYDRANET_CONFIG = os.path.join(REPO_ROOT, "projects/HydraNet/configs/Synthetic-HydraNet/hydranet_mbv2_cpu.yaml")
PANOPTIC_CONFIG = os.path.join(
    REPO_ROOT, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml"
)
H, W = 48, 80  # the images; not multiples of 32, so resizing, padding and cropping all happen
MIN_SIZE = 64  # INPUT.MIN_SIZE_TEST: the model sees 64 x 107


def _cfg(config):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", str(MIN_SIZE), "MODEL.WEIGHTS", ""])
    cfg.freeze()
    return cfg


def _model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # depth that varies over the image (a fresh build says ~10 m everywhere)
        model.depth_head.predictor.weight.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def hydranet():
    cfg = _cfg(HYDRANET_CONFIG)
    return Predictor(cfg, model=_model(cfg))


@pytest.fixture(scope="module")
def panoptic():
    cfg = _cfg(PANOPTIC_CONFIG)
    return Predictor(cfg, model=_model(cfg))


def _image(seed=0, height=H, width=W):
    """Smooth gradients and a block, BGR uint8: closer to a photograph than noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 40 * seed)], axis=-1)
    image[height // 3 : 2 * height // 3, width // 3 : width // 2] = (200, 30 * seed, 90)
    return image.astype(np.uint8)


def _write_images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"frame_{i}.png"), _image(i))
    return folder


# ---- the predictor --------------------------------------------------------------------------------
def test_predictor_resizes_like_default_predictor_and_converts_to_the_input_format(hydranet):
    bgr = _image()
    inputs = hydranet.model_input(bgr)  # BGR, as detectron2's DefaultPredictor takes it
    assert hydranet.input_format == "RGB"
    assert (inputs["height"], inputs["width"]) == (H, W)
    assert inputs["image"].shape == (3, MIN_SIZE, 107) and inputs["image"].dtype == torch.uint8  # 80 * 64 / 48
    assert torch.equal(inputs["image"], hydranet.model_input(np.ascontiguousarray(bgr[:, :, ::-1]), "RGB")["image"])
    # RGB order reaches the model: the red block (BGR (200, 0, 90)) reads 90 in channel 0
    assert int(inputs["image"][0, 32, 45]) == 90 and int(inputs["image"][2, 32, 45]) == 200
    with pytest.raises(ValueError, match="image_format"):
        hydranet.model_input(bgr, "YUV")


@pytest.mark.parametrize("family", ["hydranet", "panoptic"])
def test_predictor_outputs_come_back_at_the_original_size(family, request):
    predictor = request.getfixturevalue(family)
    output = predictor(_image())
    assert output["sem_seg"].shape == (14, H, W)
    depth = output["depth"]
    assert depth.shape == (H, W) and torch.isfinite(depth).all()
    assert 1e-3 <= float(depth.min()) < float(depth.max()) <= 80.0
    assert ("panoptic_seg" in output) == (family == "panoptic")
    if family == "panoptic":
        assert output["panoptic_seg"][0].shape == (H, W)
    assert predictor.model_seconds > 0 and predictor.runtime == "eager"


# ---- drawing --------------------------------------------------------------------------------------
def test_render_draws_a_semantic_overlay_without_panoptic_output(hydranet):
    bgr = _image()
    output = hydranet(bgr)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    images = render(rgb, output, hydranet.metadata)
    assert list(images) == ["sem_seg", "depth", "panel"]
    assert images["sem_seg"].shape == (H, W, 3) and not np.array_equal(images["sem_seg"], rgb)
    bar = images["depth"].shape[1] - W
    assert images["depth"].shape[0] == H and 20 < bar < 200
    # input | overlay over depth (+ its colour bar), 4 px spacers
    assert images["panel"].shape == (2 * H + 4, max(2 * W + 4, W + bar), 3)
    frame = video_frame(images)  # overlay | depth, even-sized
    assert frame.shape[0] == H and frame.shape[1] in (2 * W + 4 + bar, 2 * W + 5 + bar) and frame.shape[1] % 2 == 0
    # a deployed labels-only graph (export --outputs labels) draws the same overlay
    labels_only = {"sem_seg_labels": output["sem_seg"].argmax(dim=0), "depth": output["depth"]}
    assert np.array_equal(render(rgb, labels_only, hydranet.metadata)["sem_seg"], images["sem_seg"])


def test_render_draws_the_panoptic_overlay_and_error_with_ground_truth(panoptic):
    bgr = _image()
    output = panoptic(bgr)
    gt = np.linspace(2.0, 60.0, H * W, dtype=np.float32).reshape(H, W)
    gt[:, :10] = 0.0  # no measurement
    images = render(np.ascontiguousarray(bgr[:, :, ::-1]), output, panoptic.metadata, gt_depth=gt)
    assert list(images) == ["panoptic", "depth", "error", "panel"]
    assert images["panoptic"].shape == (H, W, 3)
    assert (images["error"][:, :10] == 0).all()  # pixels without GT are black


# ---- inputs ---------------------------------------------------------------------------------------
def test_image_files_from_files_folders_and_globs(tmp_path):
    images = _write_images(tmp_path / "images")
    (images / "notes.txt").write_text("not an image")
    files = image_files([str(images), str(images / "frame_1.png"), str(images / "*_0.png")])
    assert [os.path.relpath(f, images) for f in files] == ["frame_0.png", "frame_1.png", "frame_1.png", "frame_0.png"]
    used = set()
    assert [unique_stem("frame_1", used) for _ in range(3)] == ["frame_1", "frame_1_1", "frame_1_2"]
    assert unique_stem("Scene20/clone/00001", used) == "Scene20_clone_00001"


def test_bad_inputs_are_named_in_the_error(tmp_path, hydranet):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    for paths, message in (
        ([str(tmp_path / "missing.png")], "missing.png'?: no such file"),
        ([str(empty)], "empty'? is a folder with no images"),
        ([str(tmp_path / "*.jpg")], r"\*\.jpg'?: no such file, folder or glob match"),
        ([str(tmp_path / "*.txt")], r"\*\.txt'? matches no image \(1 other files\)"),
    ):
        with pytest.raises(FileNotFoundError, match=message):
            image_files(paths)
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    with pytest.raises(BadInputError, match="cannot read image .*broken.png"):
        run_on_images(hydranet, [str(broken)], str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="video .*missing.mp4.* does not exist"):
        run_on_video(hydranet, str(tmp_path / "missing.mp4"), str(tmp_path / "out"))
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(BadInputError, match="cannot read video .*text.mp4"):
        run_on_video(hydranet, str(tmp_path / "text.mp4"), str(tmp_path / "out"))


# ---- runs -----------------------------------------------------------------------------------------
def test_run_on_images_writes_overlay_depth_and_panel_with_fps(hydranet, tmp_path):
    images = _write_images(tmp_path / "images")
    out = tmp_path / "out"
    result = run_on_images(hydranet, [str(images)], str(out))
    names = [os.path.basename(p) for p in result["written"]]
    assert names == [f"frame_{i}_{kind}.png" for i in range(2) for kind in ("seg", "depth", "panel")]
    assert sorted(os.listdir(out)) == sorted(names)
    seg = cv2.imread(str(out / "frame_0_seg.png"))
    assert seg.shape == (H, W, 3) and cv2.imread(str(out / "frame_0_depth.png")).shape[:2][0] == H
    assert result["frames"] == 2
    assert result["model_fps"] > 0 and result["end_to_end_fps"] > 0
    # the model call is part of each frame's time: it can only be faster
    assert result["model_fps"] > result["end_to_end_fps"]
    assert result["model_ms_median"] == pytest.approx(1000.0 / result["model_fps"])


def _write_video(path, frames=3, fps=5.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(_image(i))
    writer.release()


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    rate = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, rate


def test_video_round_trip(panoptic, tmp_path):
    clip = tmp_path / "clip.mp4"
    _write_video(clip)
    decoded, _ = _read_video(clip)
    result = run_on_video(panoptic, str(clip), str(tmp_path / "out"))
    assert result["written"] == [str(tmp_path / "out" / "clip.mp4")]
    frames, rate = _read_video(result["written"][0])
    assert len(frames) == result["frames"] == 3 and rate == pytest.approx(5.0)
    # each frame: overlay | depth of that input frame (mp4v is lossy: close, not equal)
    expected = video_frame(render(decoded[1][:, :, ::-1], panoptic(decoded[1]), panoptic.metadata))[:, :, ::-1]
    assert frames[1].shape == expected.shape and expected.shape[0] == H and expected.shape[1] > 2 * W
    assert np.abs(frames[1].astype(float) - expected).mean() < 12
    assert result["model_fps"] > result["end_to_end_fps"] > 0
    with pytest.raises(BadInputError, match="would overwrite its input"):
        run_on_video(panoptic, result["written"][0], str(tmp_path / "out"))


def test_frame_times_summary_uses_medians():
    times = FrameTimes()
    for model_s, total_s in ((2.0, 3.0), (0.1, 0.2), (0.1, 0.25)):  # a slow first (warm-up) frame
        times.add(model_s, total_s)
    summary = times.summary()
    assert summary["frames"] == 3
    assert summary["model_fps"] == pytest.approx(10.0) and summary["end_to_end_fps"] == pytest.approx(4.0)
    assert "model 10.0 FPS" in FrameTimes.describe(summary) and "end to end 4.0 FPS" in FrameTimes.describe(summary)
    assert FrameTimes().summary() == {"frames": 0}


# ---- ONNX -----------------------------------------------------------------------------------------
def test_onnx_predictor_gives_the_eager_outputs(hydranet, tmp_path):
    pytest.importorskip("onnxruntime")
    from segdep_d2.modeling.export import export_onnx

    path = str(tmp_path / "hydranet.onnx")
    export_onnx(hydranet.model, hydranet.cfg, 64, 96, path)  # dynamic H x W: runs at 64 x 107 below
    onnx_predictor = Predictor(hydranet.cfg, onnx_path=path)
    assert onnx_predictor.runtime == "onnxruntime"
    image = _image(1)
    exported, eager = onnx_predictor(image), hydranet(image)
    assert exported["depth"].shape == (H, W) and onnx_predictor.model_seconds > 0
    assert float((exported["depth"] - eager["depth"]).abs().max()) < 1e-3
    agreement = (exported["sem_seg"].argmax(0) == eager["sem_seg"].argmax(0)).float().mean()
    assert float(agreement) > 0.99
