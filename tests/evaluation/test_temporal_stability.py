import json
import os
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

import segdep_d2.evaluation.temporal_stability as temporal_stability
from segdep_d2.data.datasets.vkitti2 import load_vkitti2
from segdep_d2.data.flow_io import write_vkitti2_flow
from segdep_d2.evaluation import TemporalStabilityEvaluator, temporal_flicker, vkitti2_forward_flow_path

H, W = 4, 8
C = 3


def _base_labels():
    rng = np.random.default_rng(0)
    return rng.integers(0, C, size=(H, W)).astype(np.uint8)


def _shift(labels, dx=0, dy=0, fill=0):
    """Content moved by (dx, dy) px; uncovered pixels get ``fill``."""
    out = np.full_like(labels, fill)
    ys, xs = np.mgrid[0:H, 0:W]
    tx, ty = xs + dx, ys + dy
    inside = (tx >= 0) & (tx < W) & (ty >= 0) & (ty < H)
    out[ty[inside], tx[inside]] = labels[inside]
    return out


def _flow(dx=0.0, dy=0.0):
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


# ----------------------------------------------------------------------------------------------
# Pure metric
# ----------------------------------------------------------------------------------------------
def test_shift_with_matching_flow_does_not_flicker():
    labels = _base_labels()
    moved = _shift(labels, dx=2)
    # columns 6, 7 land outside frame t+1 and are not compared
    assert temporal_flicker(labels, moved, _flow(2.0), np.ones((H, W), bool)) == (0, H * (W - 2))
    assert temporal_flicker(labels, moved, _flow(2.0), None) == (0, H * (W - 2))
    # moving left: columns 0, 1 leave the image
    assert temporal_flicker(labels, _shift(labels, dx=-2), _flow(-2.0)) == (0, H * (W - 2))
    # vertical, with sub-pixel flow rounded to the nearest pixel (halves up)
    assert temporal_flicker(labels, _shift(labels, dy=1), _flow(0.0, 0.5)) == (0, (H - 1) * W)
    assert temporal_flicker(labels, labels, _flow(0.4, -0.49)) == (0, H * W)
    # without motion compensation the same pair flickers
    changed, compared = temporal_flicker(labels, moved, _flow(0.0))
    assert compared == H * W and changed > 0


def test_changed_region_invalid_flow_and_ignore_by_hand():
    labels = _base_labels()
    moved = _shift(labels, dx=2)
    moved[0:2, 4:6] = (labels[0:2, 2:4] + 1) % C  # 4 pixels of frame t (rows 0-1, columns 2-3) change class
    valid = np.ones((H, W), bool)
    valid[3] = False  # the last row has no flow
    assert temporal_flicker(labels, moved, _flow(2.0), valid) == (4, 3 * (W - 2))
    # ignored labels (in either frame) are not compared
    labels_ignored = labels.copy()
    labels_ignored[2, 0] = 255  # frame t
    moved_ignored = moved.copy()
    moved_ignored[0, 4] = 255  # frame t+1: target of (x=2, y=0), one of the changed pixels
    assert temporal_flicker(labels_ignored, moved_ignored, _flow(2.0), valid) == (3, 3 * (W - 2) - 2)
    # compared as a class, 255 differs from the other frame's label at (2, 0) as well
    assert temporal_flicker(labels_ignored, moved_ignored, _flow(2.0), valid, ignore=None) == (5, 3 * (W - 2))
    # non-finite flow counts as invalid
    flow = _flow(2.0)
    flow[0, 0] = np.nan
    assert temporal_flicker(labels, moved, flow)[1] == H * (W - 2) - 1


def test_temporal_flicker_shape_errors():
    labels = _base_labels()
    with pytest.raises(ValueError, match="Labels"):
        temporal_flicker(labels, labels[:, :5], _flow())
    with pytest.raises(ValueError, match="Flow"):
        temporal_flicker(labels, labels, _flow()[:, :5])
    with pytest.raises(ValueError, match="valid"):
        temporal_flicker(labels, labels, _flow(), np.ones((H, 5), bool))


# ----------------------------------------------------------------------------------------------
# Flow path
# ----------------------------------------------------------------------------------------------
def _rgb(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (W, H)).save(path)
    return path


def test_forward_flow_path_layouts(tmp_path):
    # merged layout, folder case as in the archives
    rgb = _rgb(str(tmp_path / "merged" / "Scene01" / "clone" / "frames" / "rgb" / "Camera_0" / "rgb_00003.jpg"))
    flow = str(tmp_path / "merged" / "Scene01" / "clone" / "frames" / "forwardFlow" / "Camera_0" / "flow_00003.png")
    assert vkitti2_forward_flow_path({"file_name": rgb}) is None  # not there (yet)
    write_vkitti2_flow(flow, _flow(1.0))
    temporal_stability._listing.cache_clear()
    assert vkitti2_forward_flow_path({"file_name": rgb}) == flow
    # lower-case folder
    rgb = _rgb(str(tmp_path / "lower" / "Scene01" / "clone" / "frames" / "rgb" / "Camera_1" / "rgb_00000.jpg"))
    flow = str(tmp_path / "lower" / "Scene01" / "clone" / "frames" / "forwardflow" / "Camera_1" / "flow_00000.png")
    write_vkitti2_flow(flow, _flow(1.0))
    assert vkitti2_forward_flow_path({"file_name": rgb}) == flow
    # per-archive layout
    rgb = _rgb(str(tmp_path / "split" / "vkitti_2.0.3_rgb" / "Scene02" / "fog" / "frames" / "rgb" / "Camera_0" /
                   "rgb_00010.jpg"))
    flow = str(tmp_path / "split" / "vkitti_2.0.3_forwardFlow" / "Scene02" / "fog" / "frames" / "forwardFlow" /
               "Camera_0" / "flow_00010.png")
    write_vkitti2_flow(flow, _flow(1.0))
    assert vkitti2_forward_flow_path({"file_name": rgb}) == flow
    # an explicit path wins; not VKITTI2 -> None
    assert vkitti2_forward_flow_path({"file_name": rgb, "forward_flow_file_name": flow}) == flow
    assert vkitti2_forward_flow_path({"file_name": str(tmp_path / "image.png")}) is None


def test_forward_flow_path_matches_the_synthetic_generator(synthetic_vkitti2):
    root, summary = synthetic_vkitti2
    by_rgb = {f["rgb"]: f.get("forward_flow") for f in summary["frames"]}
    records = load_vkitti2(root, scenes=("Scene01", "Scene20"), variations=("clone", "fog"))
    assert records and all(vkitti2_forward_flow_path(r) == by_rgb[r["file_name"]] for r in records)
    assert any(by_rgb[r["file_name"]] for r in records) and not all(by_rgb[r["file_name"]] for r in records)


# ----------------------------------------------------------------------------------------------
# Evaluator
# ----------------------------------------------------------------------------------------------
def _scores(labels):
    """(C, H, W) one-hot scores whose argmax is ``labels``."""
    return torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), C).permute(2, 0, 1).float()


@pytest.fixture
def video(tmp_path):
    """Scene01/clone: 4 frames with forward flow for 0, 1, 2; Scene01/fog: 2 frames without flow."""
    root = str(tmp_path / "vkitti2")
    frames_dir = os.path.join(root, "Scene01", "clone", "frames")
    l0 = _base_labels()
    l1 = _shift(l0, dx=2)  # pair 0 -> 1: flow +2 px, 0 of 24 changed
    l2 = l1.copy()
    l2[0:2, 4:6] = (l1[0:2, 4:6] + 1) % C  # pair 1 -> 2: static, last row invalid: 4 of 24 changed
    l3 = _shift(l2, dy=1)  # pair 2 -> 3: flow +1 px down, 0 of 24 changed
    valid1 = np.ones((H, W), bool)
    valid1[3] = False
    for t, (flow, valid) in enumerate(((_flow(2.0), None), (_flow(0.0), valid1), (_flow(0.0, 1.0), None))):
        write_vkitti2_flow(os.path.join(frames_dir, "forwardFlow", "Camera_0", f"flow_{t:05d}.png"), flow, valid)
    for t in range(4):
        _rgb(os.path.join(frames_dir, "rgb", "Camera_0", f"rgb_{t:05d}.jpg"))
    for t in range(2):
        _rgb(os.path.join(root, "Scene01", "fog", "frames", "rgb", "Camera_0", f"rgb_{t:05d}.jpg"))
    records = load_vkitti2(root, scenes=("Scene01",), variations=("clone", "fog"))
    assert len(records) == 6
    labels = {("Scene01/clone/Camera_0", t): l for t, l in enumerate((l0, l1, l2, l3))}
    labels.update({("Scene01/fog/Camera_0", t): l0 for t in range(2)})
    names = []

    def register(recs):
        name = f"segdep_temporal_test_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: recs)
        names.append(name)
        return name

    yield records, labels, register
    for name in names:
        DatasetCatalog.remove(name)


def _run(evaluator, records, labels, order, batch=2):
    inputs = [records[i] for i in order]
    outputs = [{"sem_seg": _scores(labels[(r["sequence_id"], r["frame_index"])])} for r in inputs]
    for start in range(0, len(inputs), batch):
        evaluator.process(inputs[start:start + batch], outputs[start:start + batch])


EXPECTED = {"flicker": 100 * 4 / 72, "stability": 100 - 100 * 4 / 72, "num_pairs": 3, "num_pixels": 72,
            "num_pairs_without_flow": 1}


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [2, 0, 5, 3, 1, 4], [3, 2, 1, 0, 4, 5]])
def test_evaluator_by_hand_in_any_order(video, order, tmp_path):
    records, labels, register = video
    evaluator = TemporalStabilityEvaluator(register(records), output_dir=str(tmp_path / "out"))
    evaluator.reset()
    _run(evaluator, records, labels, order)
    assert evaluator._held == {}  # every frame dropped once its pairs were done
    results = evaluator.evaluate()["temporal"]
    assert results == pytest.approx(EXPECTED)
    saved = json.loads((tmp_path / "out" / "temporal_stability.json").read_text())
    assert [(p["frame"], p["next_frame"], p["changed"], p["compared"]) for p in saved["pairs"]] == [
        (0, 1, 0, 24), (1, 2, 4, 24), (2, 3, 0, 24)]
    assert evaluator.evaluate()["temporal"] == pytest.approx(EXPECTED)  # evaluate() does not change the state


def test_frames_split_between_ranks_are_paired_on_the_main_process(video, monkeypatch):
    records, labels, register = video
    name = register(records)
    rank0, rank1 = TemporalStabilityEvaluator(name), TemporalStabilityEvaluator(name)
    _run(rank0, records, labels, [0, 1, 4])
    _run(rank1, records, labels, [2, 3, 5])
    assert set(rank0._held) == {("Scene01/clone/Camera_0", 1)} and set(rank1._held) == {("Scene01/clone/Camera_0", 2)}

    class FakeComm:
        @staticmethod
        def synchronize():
            pass

        @staticmethod
        def gather(data):
            return [(rank0._pairs, rank0._held), data]

        @staticmethod
        def is_main_process():
            return True

    monkeypatch.setattr(temporal_stability, "comm", FakeComm)
    assert rank1.evaluate()["temporal"] == pytest.approx(EXPECTED)


def test_frames_left_out_of_the_dataset_break_the_pairs(video):
    records, labels, register = video
    without_1 = [r for r in records if not (r["sequence_id"].startswith("Scene01/clone") and r["frame_index"] == 1)]
    evaluator = TemporalStabilityEvaluator(register(without_1), distributed=False)
    _run(evaluator, without_1, labels, range(len(without_1)))
    results = evaluator.evaluate()["temporal"]
    # the flow of frame 0 points at frame 1, not 2: only 2 -> 3 is left
    assert results["num_pairs"] == 1 and results["flicker"] == 0.0 and results["num_pixels"] == 24


def test_evaluator_errors_and_skips(video):
    records, labels, register = video
    evaluator = TemporalStabilityEvaluator(register(records), distributed=False)
    with pytest.raises(KeyError, match="sem_seg"):
        evaluator.process(records[:1], [{}])
    evaluator.reset()
    evaluator.process([{"file_name": "elsewhere.jpg"}, records[4]], [{}, {}])  # unknown / no pair: not looked at
    results = evaluator.evaluate()["temporal"]
    assert results["num_pairs"] == 0 and np.isnan(results["flicker"])
    name = register([{"file_name": "a.jpg"}])
    with pytest.raises(ValueError, match="sequence_id"):
        TemporalStabilityEvaluator(name)


def test_ground_truth_labels_on_synthetic_vkitti2(synthetic_vkitti2):
    """The generated sequences: every consecutive pair has its flow, and the ground-truth labels are nearly
    stable under it (what differs is occlusion and class boundaries)."""
    from segdep_d2.data.label_io import read_sem_seg

    root, _ = synthetic_vkitti2
    records = load_vkitti2(root, scenes=("Scene01", "Scene20"), variations=("clone", "fog"))
    name = f"segdep_temporal_test_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: records)
    try:
        evaluator = TemporalStabilityEvaluator(name, distributed=False, ignore_label=255)
        outputs = []
        for record in records:
            gt = read_sem_seg(record).astype(np.int64)
            gt[gt == 255] = 0
            outputs.append({"sem_seg": torch.nn.functional.one_hot(torch.from_numpy(gt), 14).permute(2, 0, 1)})
        evaluator.process(records, outputs)
        results = evaluator.evaluate()["temporal"]
    finally:
        DatasetCatalog.remove(name)
    assert results["num_pairs"] == 4 and results["num_pairs_without_flow"] == 0  # 2 scenes x 2 variations x 1
    assert 0.0 <= results["flicker"] < 10.0, results
