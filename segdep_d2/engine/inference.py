"""Inference for every model family, as detectron2's ``DefaultPredictor`` and ``demo/demo.py`` do it.

* :class:`Predictor`: one image (or video frame) in, the model's output dict out, at the image's
  size: ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, pixels in
  ``INPUT.FORMAT``, ``height`` / ``width`` set so that every output comes back at the original
  resolution. It runs the eager model (``MODEL.WEIGHTS``) or an exported ONNX file
  (:func:`segdep_d2.modeling.export.load_onnx_model`, the real-time path), and times the model call.
* :func:`render`: the pictures of one output, whatever the family produced: the panoptic overlay
  labelled "class 12.3 m" when there is a ``panoptic_seg`` (PanopticDepthLab), else the semantic
  overlay labelled the same way (HydraNet), none without segmentation (DepthCompletion: its sparse
  input points drawn on the image instead), the depth map with its colour bar, the depth error where
  ground truth is given, the depth confidence where the model gives one, and a panel of them all.
* :func:`run_on_images` / :func:`run_on_video`: image files, folders and globs -> PNGs, a video ->
  an MP4 (overlay | depth per frame), each with frames-per-second figures (:class:`FrameTimes`).
"""
import glob
import logging
import os
import re
import statistics
import time

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from ..data.transforms import transform_sparse_depth
from ..modeling.meta_arch import reads_sparse_depth
from ..utils.visualizer import (
    DepthPanopticVisualizer,
    confidence_panel,
    depth_panel,
    display_depth_range,
    draw_sparse_points,
    error_panel,
    side_by_side,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadInputError",
    "FrameTimes",
    "Predictor",
    "image_files",
    "overlay_of",
    "render",
    "run_on_images",
    "run_on_video",
    "unique_stem",
    "video_frame",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_KINDS = ("panoptic", "sem_seg")  # the overlay :func:`render` draws, by what the model output
VIDEO_CODEC = "mp4v"  # in every OpenCV build (pip's opencv-python-headless included), unlike H.264
DEFAULT_VIDEO_FPS = 30.0  # when the container does not say


class BadInputError(ValueError):
    """An input that cannot be used (the message names its path): an image or a video that
    cannot be decoded, or an output that would overwrite its input."""


class Predictor:
    """detectron2's ``DefaultPredictor`` for every segdep_d2 family.

    ``predictor(image)`` takes one (H, W, 3) uint8 image, in BGR order by default (``cv2.imread``,
    ``cv2.VideoCapture``) as detectron2's, and returns the model's output dict for it at H x W:
    ``sem_seg`` (C, H, W) logits and ``depth`` (H, W) metres, plus ``panoptic_seg`` for
    PanopticDepthLab; a depth-completion model (``reads_sparse_depth``) also takes the image's sparse
    depth, ``predictor(image, sparse_depth=points)``, and returns ``depth`` (+ ``depth_confidence``).
    ``model_seconds`` is the duration of the last model call (network and the
    model's own post-processing; no reading, resizing or drawing).
    """

    def __init__(self, cfg, model=None, onnx_path=None):
        """
        Args:
            cfg: the model's config (``DATASETS.TEST[0]`` names the metadata used to draw).
            model: an eager model to use as it is; by default one is built from ``cfg`` and
                ``MODEL.WEIGHTS`` loaded (a warning when empty).
            onnx_path: run this deployed file instead of an eager model: an ONNX file written by
                ``tools/export_model.py --format onnx`` from ``cfg`` (onnxruntime), or any file or
                export folder :func:`~segdep_d2.modeling.deployed.load_deployed` opens.
        """
        self.cfg = cfg.clone()
        if onnx_path is not None:
            from ..modeling.deployed import load_deployed

            # nothing else runs in a predictor's process between frames: onnxruntime's workers may spin
            self.model = load_deployed(onnx_path, self.cfg, spinning=True)
            self.runtime = self.model.runtime
        else:
            if model is None:
                model = build_model(self.cfg)
                if self.cfg.MODEL.WEIGHTS:
                    DetectionCheckpointer(model).load(self.cfg.MODEL.WEIGHTS)
                else:
                    logger.warning("MODEL.WEIGHTS is empty: running a randomly initialised model")
            self.model = model.eval()
            self.runtime = "eager"
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {self.input_format!r}: the predictor takes RGB or BGR models")
        self._cuda = onnx_path is None and self.cfg.MODEL.DEVICE.startswith("cuda")
        self.model_seconds = None
        self.reads_sparse_depth = reads_sparse_depth(self.cfg)

    def model_input(self, original_image, image_format="BGR", sparse_depth=None):
        """The dict the model takes for one image: resized ``image`` (uint8 (3, h, w) in
        ``INPUT.FORMAT``) and the original ``height`` / ``width``, which outputs come back at; for a
        model that reads a sparse depth input (depth completion) also ``sparse_depth``: float32
        (h, w) metres, 0 = no point, the given (H, W) map's points scattered through the image's
        resize (:func:`~segdep_d2.data.transforms.transform_sparse_depth`, as the dataset mapper does)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = original_image[:, :, ::-1] if image_format != self.input_format else original_image
        height, width = image.shape[:2]
        transform = self.aug.get_transform(image)
        resized = transform.apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        inputs = {"image": tensor, "height": height, "width": width}
        if sparse_depth is None:
            if self.reads_sparse_depth:
                raise ValueError(
                    f"{self.cfg.MODEL.META_ARCHITECTURE} is a depth-completion model: it needs the image's sparse "
                    "depth input (sparse_depth=(H, W) metres, 0 = no point)"
                )
            return inputs
        if isinstance(sparse_depth, torch.Tensor):
            sparse_depth = sparse_depth.detach().cpu().numpy()
        sparse_depth = np.asarray(sparse_depth, dtype=np.float32)
        if sparse_depth.shape != (height, width):
            raise ValueError(
                f"sparse depth is {sparse_depth.shape[1]}x{sparse_depth.shape[0]} (WxH) but the image is "
                f"{width}x{height}"
            )
        sparse = transform_sparse_depth(transform, sparse_depth, output_shape=resized.shape[:2])
        inputs["sparse_depth"] = torch.from_numpy(sparse)
        return inputs

    def __call__(self, original_image, image_format="BGR", sparse_depth=None):
        inputs = self.model_input(original_image, image_format, sparse_depth)
        with torch.no_grad():
            self._synchronize()
            start = time.perf_counter()
            output = self.model([inputs])[0]
            self._synchronize()  # CUDA runs asynchronously: the clock stops when the work is done
            self.model_seconds = time.perf_counter() - start
        return output

    def _synchronize(self):
        if self._cuda:
            torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def render(image_rgb, output, metadata, gt_depth=None, depth_range=None, sparse_depth=None):
    """The pictures of one prediction, RGB uint8 each, in this order:

    * ``"points"``: the sparse depth input drawn on the image (:func:`draw_sparse_points`: each point
      in the colour the depth panel gives its depth), only when ``sparse_depth`` is given (depth
      completion);
    * ``"panoptic"``: segments labelled "class 12.3 m" (things in their distance colour), when the
      output has ``panoptic_seg``; otherwise ``"sem_seg"``: the argmax of ``sem_seg`` in the
      dataset's colours, each region labelled "class 12.3 m" (see
      :meth:`DepthPanopticVisualizer.draw_sem_seg_depth`); neither for an output without
      segmentation (depth completion);
    * ``"depth"``: the depth map with its colour bar (log scale, near red, far blue);
    * ``"error"``: AbsRel against ``gt_depth`` (metres, H x W), only when it is given;
    * ``"confidence"``: the output's ``depth_confidence`` in [0, 1] with its colour bar, when present;
    * ``"panel"``: the input and all of the above side by side, two per row; with ``sparse_depth`` the
      points image stands for the input and all go in one row (points | depth | error | confidence).

    Args:
        image_rgb: the (H, W, 3) input image the output belongs to, RGB.
        output: a model's output dict for it (any of ``panoptic_seg``, ``sem_seg``, ``depth``,
            ``depth_confidence``).
        metadata: class names / colours / ``depth_range`` / ``classes_without_depth``.
        depth_range: (near, far) metres of the colours; default :func:`display_depth_range`.
        sparse_depth: the model's sparse depth input at the image's size (H x W metres, 0 = no point).
    """
    lo, hi = depth_range or display_depth_range(metadata)
    depth = output["depth"].detach().cpu().numpy() if "depth" in output else None
    images = {}
    if sparse_depth is not None:
        images["points"] = draw_sparse_points(image_rgb, sparse_depth, lo, hi)
    if "panoptic_seg" in output:
        ids, segments_info = output["panoptic_seg"]
        visualizer = DepthPanopticVisualizer(image_rgb, metadata, near=lo, far=hi)
        images["panoptic"] = visualizer.draw_panoptic_depth(ids.cpu(), segments_info).get_image()
    elif "sem_seg" in output or "sem_seg_labels" in output:
        # logits from the model, or the labels of a deployed graph (export --outputs labels)
        labels = output["sem_seg_labels"].cpu() if "sem_seg_labels" in output else output["sem_seg"].argmax(dim=0).cpu()
        visualizer = DepthPanopticVisualizer(image_rgb, metadata, near=lo, far=hi)
        images["sem_seg"] = visualizer.draw_sem_seg_depth(labels, depth).get_image()
    if depth is not None:
        images["depth"] = depth_panel(depth, lo, hi)
        if gt_depth is not None:
            # error only where GT is valid for the metrics too (metadata depth_range: e.g. VKITTI2 sky
            # is stored as 655.35 m and is no measurement).
            gt_lo, gt_hi = metadata.get("depth_range", (0.0, float("inf")))
            images["error"] = error_panel(depth, gt_depth, gt_lo, gt_hi)
    if "depth_confidence" in output:
        images["confidence"] = confidence_panel(output["depth_confidence"])
    if "points" in images:
        images["panel"] = side_by_side(list(images.values()))
    else:
        images["panel"] = side_by_side([image_rgb] + list(images.values()), max_columns=2)
    return images


def overlay_of(images):
    """The segmentation overlay among :func:`render`'s pictures (panoptic or semantic), or None."""
    return next((images[kind] for kind in OVERLAY_KINDS if kind in images), None)


def video_frame(images):
    """One output video frame: overlay | depth side by side, even-sized (the codecs' 4:2:0
    sampling works on 2 x 2 blocks), RGB."""
    frame = side_by_side([im for im in (overlay_of(images), images.get("depth")) if im is not None])
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255) if pad_h or pad_w else frame


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def image_files(paths, extensions=IMAGE_EXTENSIONS):
    """Image files from files, folders (their images, sorted) and glob patterns, in order
    (``extensions``: what counts as an image in folders and glob matches).

    Raises ``FileNotFoundError`` naming the culprit for a path that is no file, folder or glob
    match, a folder without images and a pattern that matches no image; a file given by name is
    taken whatever its extension (a bad one fails when read).
    """
    files = []
    for path in paths:
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(extensions))
            if not found:
                raise FileNotFoundError(f"{path!r} is a folder with no images ({', '.join(extensions)})")
        elif os.path.isfile(path):
            found = [path]
        else:
            matches = sorted(glob.glob(path))
            if not matches:
                raise FileNotFoundError(f"{path!r}: no such file, folder or glob match")
            found = [m for m in matches if m.lower().endswith(extensions)]
            if not found:
                raise FileNotFoundError(f"{path!r} matches no image ({len(matches)} other files)")
        files += found
    return files


def unique_stem(name, used):
    """``name`` (a file stem or a dataset id such as ``Scene20/clone/00001``) as a safe file-name
    stem, unique within ``used`` (which it joins): two ``a.png`` from two folders give ``a``, ``a_1``."""
    stem = re.sub(r"[^\w.-]+", "_", str(name))
    unique, k = stem, 1
    while unique in used:
        unique, k = f"{stem}_{k}", k + 1
    used.add(unique)
    return unique


def _file_stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _read_image_bgr(path):
    try:
        return utils.read_image(path, format="BGR")  # EXIF orientation applied, as detectron2's demo
    except (OSError, ValueError) as e:
        raise BadInputError(f"cannot read image {path!r}: {e}") from e


def _save_png(image_rgb, path):
    Image.fromarray(image_rgb).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Runs with frames per second
# ---------------------------------------------------------------------------------------------
class FrameTimes:
    """Per-frame seconds of the model call and of the whole frame (reading, resizing, model,
    drawing, writing), summarised by medians: the first frame's warm-up (allocations, onnxruntime's
    first run) then counts for one frame, not for the average."""

    def __init__(self):
        self.model_s, self.total_s = [], []

    def add(self, model_s, total_s):
        self.model_s.append(model_s)
        self.total_s.append(total_s)

    def summary(self):
        """``frames``, ``model_fps`` and ``end_to_end_fps`` (1 / median seconds) and the medians
        in milliseconds."""
        if not self.total_s:
            return {"frames": 0}
        model, total = statistics.median(self.model_s), statistics.median(self.total_s)
        return {
            "frames": len(self.total_s),
            "model_fps": 1.0 / model,
            "end_to_end_fps": 1.0 / total,
            "model_ms_median": 1000.0 * model,
            "end_to_end_ms_median": 1000.0 * total,
        }

    @staticmethod
    def describe(summary):
        """One line for a person: frames per second, model alone and end to end."""
        return (
            f"model {summary['model_fps']:.1f} FPS ({summary['model_ms_median']:.1f} ms median), "
            f"end to end {summary['end_to_end_fps']:.1f} FPS ({summary['end_to_end_ms_median']:.1f} ms median, "
            "reading, drawing and writing included)"
        )


def run_on_images(predictor, paths, output_dir, *, depth_range=None):
    """Run ``predictor`` on image files, folders and glob patterns (:func:`image_files`) and write,
    per image, ``<stem>_seg.png`` (the overlay), ``<stem>_depth.png`` and ``<stem>_panel.png``.

    Returns:
        dict: ``written`` (paths, in order) and the :meth:`FrameTimes.summary` figures.
    """
    files = image_files(paths)
    os.makedirs(output_dir, exist_ok=True)
    times, written, used = FrameTimes(), [], set()
    for path in files:
        start = time.perf_counter()
        image = _read_image_bgr(path)
        output = predictor(image, "BGR")
        images = render(image[:, :, ::-1], output, predictor.metadata, depth_range=depth_range)
        stem = os.path.join(output_dir, unique_stem(_file_stem(path), used))
        for kind, picture in (("seg", overlay_of(images)), ("depth", images.get("depth")), ("panel", images["panel"])):
            if picture is not None:
                written.append(_save_png(picture, f"{stem}_{kind}.png"))
        times.add(predictor.model_seconds, time.perf_counter() - start)
        logger.info(f"{path} -> {stem}_*.png")
    return {"written": written, **times.summary()}


def run_on_video(predictor, video_path, output_dir, *, depth_range=None):
    """Run ``predictor`` on every frame of a video (read with ``cv2.VideoCapture``) and write
    ``output_dir/<stem>.mp4`` (``mp4v``, the input's frame rate): per frame the overlay and the
    depth side by side (:func:`video_frame`).

    Returns:
        dict: ``written`` (the video's path), ``video_fps`` (the input's frame rate) and the
        :meth:`FrameTimes.summary` figures.
    """
    if not os.path.isfile(video_path):
        raise FileNotFoundError(f"video {video_path!r} does not exist")
    out_path = os.path.join(output_dir, unique_stem(_file_stem(video_path), set()) + ".mp4")
    if os.path.abspath(out_path) == os.path.abspath(video_path):
        raise BadInputError(f"the output video would overwrite its input {video_path!r}: choose another output folder")
    capture = cv2.VideoCapture(video_path)
    if not capture.isOpened():
        raise BadInputError(f"cannot read video {video_path!r}: OpenCV cannot open it")
    rate = capture.get(cv2.CAP_PROP_FPS)
    rate = rate if rate and np.isfinite(rate) and rate > 0 else DEFAULT_VIDEO_FPS
    os.makedirs(output_dir, exist_ok=True)
    times, writer = FrameTimes(), None
    try:
        while True:
            start = time.perf_counter()
            ok, frame = capture.read()
            if not ok:
                break
            output = predictor(frame, "BGR")
            picture = video_frame(render(frame[:, :, ::-1], output, predictor.metadata, depth_range=depth_range))
            if writer is None:  # the frame size is known once the first frame is drawn
                height, width = picture.shape[:2]
                writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*VIDEO_CODEC), rate, (width, height))
                if not writer.isOpened():
                    raise ValueError(f"cannot write video {out_path!r} with the {VIDEO_CODEC} codec")
            writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
            times.add(predictor.model_seconds, time.perf_counter() - start)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise BadInputError(f"cannot read video {video_path!r}: no frame could be decoded")
    logger.info(f"{video_path} -> {out_path}")
    return {"written": [out_path], "video_fps": rate, **times.summary()}
