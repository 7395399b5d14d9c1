"""Temporal stability of semantic predictions: how many pixels change class between consecutive frames once
the motion is compensated with the ground-truth optical flow.

For consecutive frames ``t`` and ``t'`` (the next frame of the same sequence) and the forward flow ``F`` of
frame ``t`` (VKITTI2 ``forwardFlow/Camera_k/flow_<t>.png``: where each pixel of ``t`` is in ``t'``), a pixel
``(x, y)`` of frame ``t`` is *compared* when its flow is valid, its motion-compensated position
``(round(x + F_x), round(y + F_y))`` (nearest neighbour, halves rounded up) lies inside the image, and neither
label is ``ignore``; it *changed* when ``label_t(x, y) != label_t'(round(x + F_x), round(y + F_y))``.

    flicker   = 100 * sum(changed) / sum(compared)      over all pairs of all sequences (pixel-weighted)
    stability = 100 - flicker

Occlusions are not masked out (VKITTI2's flow is valid on occluded pixels too), so even a perfect
prediction has a small non-zero flicker; compare models on the same frames, next to their mIoU (a
constant prediction is perfectly stable).

:func:`temporal_flicker` is the pure metric; :class:`TemporalStabilityEvaluator` wraps it.
"""
import json
import logging
import os
import re
from collections import OrderedDict, defaultdict
from functools import lru_cache
from typing import Dict, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.flow_io import read_vkitti2_flow
from .arrays import to_numpy

__all__ = [
    "temporal_flicker",
    "vkitti2_forward_flow_path",
    "TemporalStabilityEvaluator",
]

logger = logging.getLogger(__name__)

_RGB_NAME = re.compile(r"^rgb_(\d+)\.jpg$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------
# Pure metric
# ----------------------------------------------------------------------------------------------
def temporal_flicker(labels_t, labels_t1, flow_t_to_t1, valid=None, ignore: Optional[int] = 255) -> Tuple[int, int]:
    """``(changed, compared)`` pixel counts between frame ``t``'s labels and frame ``t+1``'s labels warped
    back to ``t`` with the forward flow (see the module doc).

    Args:
        labels_t, labels_t1: (H, W) integer class maps of the two frames.
        flow_t_to_t1: (H, W, 2) flow of frame ``t`` in pixels (``[..., 0]`` right, ``[..., 1]`` down).
        valid: (H, W) bool, where the flow is defined (None: everywhere finite).
        ignore: a label never compared (in either frame); None: compare every label.
    """
    labels_t, labels_t1 = to_numpy(labels_t), to_numpy(labels_t1)
    flow = to_numpy(flow_t_to_t1, np.float64)
    if labels_t.ndim != 2 or labels_t.shape != labels_t1.shape:
        raise ValueError(f"Labels must be two (H, W) maps of one size, got {labels_t.shape} and {labels_t1.shape}")
    height, width = labels_t.shape
    if flow.shape != (height, width, 2):
        raise ValueError(f"Flow must be {(height, width, 2)} for labels {labels_t.shape}, got {flow.shape}")
    ok = np.isfinite(flow).all(-1)
    if valid is not None:
        valid = to_numpy(valid).astype(bool, copy=False)
        if valid.shape != (height, width):
            raise ValueError(f"valid must be {(height, width)}, got {valid.shape}")
        ok &= valid
    ys, xs = np.nonzero(ok)
    tx = np.floor(xs + flow[ys, xs, 0] + 0.5).astype(np.int64)
    ty = np.floor(ys + flow[ys, xs, 1] + 0.5).astype(np.int64)
    inside = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
    source = labels_t[ys[inside], xs[inside]]
    target = labels_t1[ty[inside], tx[inside]]
    if ignore is not None:
        keep = (source != ignore) & (target != ignore)
        source, target = source[keep], target[keep]
    return int(np.count_nonzero(source != target)), int(source.size)


# ----------------------------------------------------------------------------------------------
# Where the flow is
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _listing(folder: str) -> Dict[str, str]:
    """{lower-case entry: entry} of a folder ({} if it does not exist)."""
    try:
        return {e.lower(): e for e in os.listdir(folder)}
    except OSError:
        return {}


def _child(folder: str, name: str) -> Optional[str]:
    """``folder/name`` matched case-insensitively, or None."""
    exact = os.path.join(folder, name)
    if os.path.exists(exact):
        return exact
    entry = _listing(folder).get(name.lower())
    return os.path.join(folder, entry) if entry else None


def vkitti2_forward_flow_path(record) -> Optional[str]:
    """The existing forward-flow PNG of a VKITTI2 frame (flow to the next frame), or None.

    ``record["forward_flow_file_name"]`` when given; otherwise derived from ``file_name``:
    ``.../frames/rgb/Camera_k/rgb_<t>.jpg`` -> ``.../frames/forwardFlow/Camera_k/flow_<t>.png`` (folder names
    matched case-insensitively), and in the per-archive layout also ``vkitti_2.0.3_rgb/...`` ->
    ``vkitti_2.0.3_forwardFlow/...``. VKITTI2's last frame of a sequence has no forward flow.
    """
    path = record.get("forward_flow_file_name")
    if path:
        return path if os.path.isfile(path) else None
    file_name = record.get("file_name")
    if not file_name:
        return None
    match = _RGB_NAME.match(os.path.basename(file_name))
    camera_dir = os.path.dirname(file_name)
    rgb_dir = os.path.dirname(camera_dir)
    frames_dir = os.path.dirname(rgb_dir)
    if match is None or os.path.basename(rgb_dir).lower() != "rgb":
        return None
    flow_name = f"flow_{match.group(1)}.png"
    camera = os.path.basename(camera_dir)

    candidates = [frames_dir]
    # per-archive layout: <root>/vkitti_2.0.3_rgb/SceneXX/<variation>/frames -> vkitti_2.0.3_forwardFlow/...
    parts = os.path.normpath(frames_dir).split(os.sep)
    for i, part in enumerate(parts):
        if part.lower().startswith("vkitti_2") and part.lower().endswith("_rgb"):
            archive = part[: -len("rgb")] + "forwardFlow"
            parent = os.sep.join(parts[:i]) or os.sep
            located = _child(parent, archive)
            if located is not None:
                candidates.append(os.path.join(located, *parts[i + 1:]))
    for frames in candidates:
        flow_dir = _child(frames, "forwardFlow")
        flow_dir = flow_dir and _child(flow_dir, camera)
        path = flow_dir and _child(flow_dir, flow_name)
        if path and os.path.isfile(path):
            return path
    return None


def _next_frame_on_disk(file_name: str) -> Dict[int, int]:
    """{frame: next frame} among the ``rgb_<t>.jpg`` files beside ``file_name`` ({} if it is not there)."""
    return _next_frames(os.path.dirname(file_name))


@lru_cache(maxsize=1024)
def _next_frames(folder: str) -> Dict[int, int]:
    frames = sorted(int(m.group(1)) for m in map(_RGB_NAME.match, _listing(folder).values()) if m)
    return dict(zip(frames[:-1], frames[1:]))


# ----------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------
class TemporalStabilityEvaluator(DatasetEvaluator):
    """Flicker of the semantic prediction between consecutive frames (result key ``"temporal"``).

    Frames are the dataset's records with ``sequence_id`` and ``frame_index`` (matched to the inputs by
    ``file_name``); in each sequence, sorted by ``frame_index``, every frame and the next one form a pair
    when the first has a forward flow (:func:`vkitti2_forward_flow_path`) and, where the rgb folder can be
    listed, the second is the next rgb frame on disk (the flow's target). The prediction is the argmax of
    ``output["sem_seg"]`` (C, H, W, original size). Inputs may come in any order and split over ranks: a
    frame's labels are kept until both its pairs are done, and frames whose neighbour was evaluated on
    another rank are paired on the main process.

    Results: ``{"temporal": {"flicker", "stability" (percent, see the module doc), "num_pairs",
    "num_pixels" (compared), "num_pairs_without_flow"}}``. Run it next to a semantic evaluator
    (``LabelledSemSegEvaluator``): stability means little without the mIoU of the same predictions.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None, *,
                 ignore_label: Optional[int] = 255):
        """
        Args:
            dataset_name: a registered dataset of video frames (records with ``sequence_id``,
                ``frame_index`` and VKITTI2 ``file_name`` paths, e.g. ``vkitti2_val``).
            distributed: gather the counts (and frames split between ranks) of all ranks.
            output_dir: where to write ``temporal_stability.json`` (per-pair counts; main process only).
            ignore_label: a predicted label never compared (None: compare all).
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._ignore = ignore_label
        records = [r for r in DatasetCatalog.get(dataset_name) if "sequence_id" in r and "frame_index" in r]
        if not records:
            raise ValueError(
                f"TemporalStabilityEvaluator: dataset {dataset_name!r} has no record with 'sequence_id' and "
                "'frame_index' (video frames)"
            )
        sequences = defaultdict(list)
        for r in records:
            sequences[r["sequence_id"]].append(r)
        self._key_of, self._records = {}, {}
        self._next, self._prev = {}, {}
        self._num_without_flow = 0
        for sequence_id, frames in sequences.items():
            frames.sort(key=lambda r: int(r["frame_index"]))
            for r in frames:
                key = (str(sequence_id), int(r["frame_index"]))
                self._key_of[r["file_name"]] = key
                self._records[key] = r
            for a, b in zip(frames[:-1], frames[1:]):
                key_a = (str(sequence_id), int(a["frame_index"]))
                key_b = (str(sequence_id), int(b["frame_index"]))
                on_disk = _next_frame_on_disk(a["file_name"])
                if on_disk and on_disk.get(key_a[1]) != key_b[1]:
                    continue  # the flow of frame a points at a frame the dataset leaves out
                if vkitti2_forward_flow_path(a) is None:
                    self._num_without_flow += 1
                    continue
                self._next[key_a], self._prev[key_b] = key_b, key_a
        if not self._next:
            logger.warning(
                f"[TemporalStabilityEvaluator] {dataset_name}: no pair of consecutive frames with a forward flow "
                "file (frames/forwardFlow/Camera_k/flow_<t>.png)"
            )
        self.reset()

    def reset(self):
        self._held = {}  # (sequence, frame) -> labels, while one of its pairs is still to do
        self._pairs = []  # (sequence, frame t, frame t', changed, compared)
        self._done = set()  # (sequence, frame t) of the pairs done

    def _pair(self, key_a, labels_a, key_b, labels_b):
        flow, valid = read_vkitti2_flow(vkitti2_forward_flow_path(self._records[key_a]))
        changed, compared = temporal_flicker(labels_a, labels_b, flow, valid, self._ignore)
        self._pairs.append((key_a[0], key_a[1], key_b[1], changed, compared))
        self._done.add(key_a)

    def _pending(self, key) -> bool:
        """Whether a pair of ``key`` is still to do."""
        prev = self._prev.get(key)
        return (prev is not None and prev not in self._done) or (key in self._next and key not in self._done)

    def _add(self, key, labels, held):
        """Pair ``key`` with its neighbours in ``held``; keep each frame only while a pair of it is to do."""
        prev, nxt = self._prev.get(key), self._next.get(key)
        if prev is not None and prev not in self._done and prev in held:
            self._pair(prev, held[prev], key, labels)
            if not self._pending(prev):
                del held[prev]
        if nxt is not None and key not in self._done and nxt in held:
            self._pair(key, labels, nxt, held[nxt])
            if not self._pending(nxt):
                del held[nxt]
        if self._pending(key):
            held[key] = labels

    def process(self, inputs, outputs):
        for input_dict, output in zip(inputs, outputs):
            key = self._key_of.get(input_dict.get("file_name"))
            if key is None or (key not in self._prev and key not in self._next):
                continue
            if "sem_seg" not in output:
                raise KeyError(
                    f"TemporalStabilityEvaluator: the model output for {input_dict.get('file_name')} has no 'sem_seg'"
                )
            scores = output["sem_seg"]
            labels = to_numpy(scores.argmax(0)) if hasattr(scores, "argmax") else np.asarray(scores).argmax(0)
            labels = labels.astype(np.uint8 if scores.shape[0] <= 255 else np.int32, copy=False)
            self._add(key, labels, self._held)

    def evaluate(self):
        pairs, held = self._pairs, [self._held]
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((self._pairs, self._held))
            if not comm.is_main_process():
                return {}
            pairs = [p for g, _ in gathered for p in g]
            held = [h for _, h in gathered]
        # frames whose neighbour was evaluated on another rank are paired here (on copies of the state, so
        # that evaluate() can be called again)
        state = self._pairs, self._done
        self._pairs, self._done = list(pairs), {(p[0], p[1]) for p in pairs}
        try:
            remaining = {}
            for h in held:
                for key, labels in h.items():
                    self._add(key, labels, remaining)
            pairs = sorted(self._pairs)
        finally:
            self._pairs, self._done = state
        changed = sum(p[3] for p in pairs)
        compared = sum(p[4] for p in pairs)
        flicker = 100.0 * changed / compared if compared else float("nan")
        results = OrderedDict(
            flicker=flicker, stability=100.0 - flicker, num_pairs=len(pairs), num_pixels=int(compared),
            num_pairs_without_flow=self._num_without_flow,
        )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "temporal_stability.json"), "w") as f:
                json.dump({"results": results, "pairs": [
                    {"sequence_id": s, "frame": a, "next_frame": b, "changed": c, "compared": n}
                    for s, a, b, c, n in pairs]}, f)
        if not pairs:
            logger.warning(
                f"[TemporalStabilityEvaluator] {self._dataset_name}: no pair of consecutive frames evaluated"
            )
        else:
            logger.info(
                f"[TemporalStabilityEvaluator] {self._dataset_name} ({len(pairs)} pairs): "
                f"flicker={flicker:.3f}%, stability={100 - flicker:.3f}%"
            )
        return OrderedDict({"temporal": results})
