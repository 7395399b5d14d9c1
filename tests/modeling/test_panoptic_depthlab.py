import glob
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import segdep_d2  # noqa: F401
from segdep_d2 import add_segdep_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIG = os.path.join(REPO, "projects/PanopticDepthLab/configs/Synthetic-PanopticDepth/panoptic_depthlab_R_18_os32_cpu.yaml")
ALL_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "projects/PanopticDepthLab/configs/**/*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def load_cfg(path=CPU_CONFIG, *opts):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def _image(h=64, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_shipped_config_builds(path):
    model = build_model(load_cfg(path))
    assert type(model).__name__ == "PanopticDepthLab"
    assert model.depth_head.predictor.out_channels == 1
    # the three decoders have their own weights (the seed: "all three branches use different weights")
    heads = [model.sem_seg_head, model.ins_embed_head, model.depth_head]
    aspp = [h.decoder["res5"]["project_conv"] for h in heads]
    assert len({id(a) for a in aspp}) == 3


def test_add_segdep_config_is_idempotent():
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.MODEL.DEPTH_HEAD.MAX_DEPTH = 42.0
    cfg.MODEL.INS_EMBED_HEAD.CONVS_DIM = 7
    add_segdep_config(cfg)
    assert cfg.MODEL.DEPTH_HEAD.MAX_DEPTH == 42.0 and cfg.MODEL.INS_EMBED_HEAD.CONVS_DIM == 7


def test_inference_outputs_and_segment_depths():
    torch.manual_seed(0)
    model = build_model(load_cfg()).eval()
    with torch.no_grad():
        outputs = model([{"image": _image(), "height": 50, "width": 130}])
    out = outputs[0]
    assert out["sem_seg"].shape == (14, 50, 130)
    depth = out["depth"]
    assert depth.shape == (50, 130) and torch.isfinite(depth).all() and (depth > 0).all()
    ids, segments = out["panoptic_seg"]
    assert ids.shape == (50, 130)
    assert segments, "the model should output at least one segment"
    for seg in segments:
        mask = ids == seg["id"]
        assert seg["depth"] == pytest.approx(depth[mask].mean().item(), rel=1e-5)
        assert seg["depth_median"] == pytest.approx(float(np.median(depth[mask].numpy())), rel=1e-5)
        assert seg["category_id"] == seg["id"] // 1000
        assert seg["isthing"] == (seg["category_id"] in (11, 12, 13))


def _targets(h, w, *, labels=True, depth=True):
    x = {"image": _image(h, w)}
    if labels:
        x.update(
            sem_seg=torch.randint(0, 14, (h, w)), sem_seg_weights=torch.ones(h, w),
            center=torch.zeros(h, w), center_weights=torch.ones(1, h, w),
            offset=torch.zeros(2, h, w), offset_weights=torch.ones(1, h, w),
        )
    if depth:
        d = torch.rand(h, w) * 40 + 1
        x.update(depth=d, depth_valid=d > 0)
    return x


def test_asymmetric_batches_give_finite_losses():
    torch.manual_seed(0)
    model = build_model(load_cfg()).train()
    for batch in (
        [_targets(64, 128), _targets(64, 128)],
        [_targets(64, 128, depth=False), _targets(64, 128, labels=False)],  # one label type each
        [_targets(64, 128, labels=False), _targets(64, 128, labels=False)],  # depth only
        [_targets(64, 128, depth=False), _targets(64, 128, depth=False)],  # no depth at all
    ):
        losses = model(batch)
        assert set(losses) == {"loss_sem_seg", "loss_center", "loss_offset", "loss_depth"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), name
        model.zero_grad()


@pytest.mark.parametrize("output_type,losses", [("log", ["l1"]), ("sigmoid", ["berhu", "silog"])])
def test_depth_parameterisations_and_losses_train(output_type, losses):
    torch.manual_seed(0)
    opts = ["MODEL.DEPTH_HEAD.OUTPUT_TYPE", output_type, "MODEL.DEPTH_HEAD.LOSSES", str(losses),
            "MODEL.DEPTH_HEAD.LOSS_WEIGHTS", str([1.0] * len(losses))]
    model = build_model(load_cfg(CPU_CONFIG, *opts)).train()
    batch = [_targets(64, 128, labels=False)]
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    history = []
    for _ in range(8):
        loss = model(batch)["loss_depth"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(np.isfinite(history)) and history[-1] < history[0]


def test_unknown_depth_loss_is_rejected():
    with pytest.raises(ValueError, match="LOSSES"):
        build_model(load_cfg(CPU_CONFIG, "MODEL.DEPTH_HEAD.LOSSES", "['l2']"))


def _stock_panoptic_deeplab():
    torch.manual_seed(1)
    cfg = load_cfg(CPU_CONFIG, "MODEL.META_ARCHITECTURE", "PanopticDeepLab")
    return build_model(cfg)


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_load_panoptic_deeplab_checkpoint(tmp_path, caplog, kind):
    stock = _stock_panoptic_deeplab()
    if kind == "pth":
        DetectionCheckpointer(stock, save_dir=str(tmp_path)).save("panoptic_deeplab")
        path = str(tmp_path / "panoptic_deeplab.pth")
    else:  # detectron2 model-zoo layout: numpy arrays under "model", with an "__author__"
        path = str(tmp_path / "panoptic_deeplab.pkl")
        with open(path, "wb") as f:
            state = {k: v.numpy() for k, v in stock.state_dict().items()}
            pickle.dump({"model": state, "__author__": "segdep_d2 test", "matching_heuristics": True}, f)

    torch.manual_seed(2)
    model = build_model(load_cfg())
    fresh_depth = {k: v.clone() for k, v in model.depth_head.state_dict().items()}
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(model).load(path)
    loaded = model.state_dict()
    for k, v in stock.state_dict().items():
        assert torch.equal(loaded[k], v), k
    for k, v in model.depth_head.state_dict().items():
        assert torch.equal(v, fresh_depth[k]), f"depth head must start fresh: {k}"
    assert "depth_head" in caplog.text  # the missing keys are reported


def test_instances_equal_detectron2_panoptic_deeplab(monkeypatch):
    """PREDICT_INSTANCES: our vectorised instance extraction gives what detectron2's
    PanopticDeepLab (its per-segment loop) gives, on the same network outputs."""
    cfg = load_cfg(CPU_CONFIG, "MODEL.PANOPTIC_DEEPLAB.PREDICT_INSTANCES", "True", "MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "1")
    ours = build_model(cfg).eval()
    stock_cfg = cfg.clone()
    stock_cfg.MODEL.META_ARCHITECTURE = "PanopticDeepLab"
    stock = build_model(stock_cfg).eval()
    # crafted outputs at the padded 64 x 160 size: road everywhere, two cars (class 10 is a thing)
    h, w = 64, 160
    thing = sorted(ours.thing_ids)[0]
    sem = torch.full((1, 14, h, w), -5.0)
    sem[:, 0] = 5.0
    centers = torch.zeros(1, 1, h, w)
    offsets = torch.zeros(1, 2, h, w)
    for (y0, y1, x0, x1), score in (((10, 30, 20, 60), 0.9), ((35, 60, 90, 150), 0.6)):
        sem[:, thing, y0:y1, x0:x1] = 6.0 + score
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        centers[0, 0, cy, cx] = score
        ys, xs = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
        offsets[0, 0, y0:y1, x0:x1] = cy - ys
        offsets[0, 1, y0:y1, x0:x1] = cx - xs
    for model in (ours, stock):
        monkeypatch.setattr(model.sem_seg_head, "forward", lambda features, *a, **k: (sem, {}))
        monkeypatch.setattr(model.ins_embed_head, "forward", lambda features, *a, **k: (centers, offsets, {}, {}))
    inputs = [{"image": _image(h, w), "height": h, "width": w}]
    with torch.no_grad():
        mine = ours(inputs)[0]["instances"]
        theirs = stock(inputs)[0]["instances"]
    assert len(mine) == len(theirs) == 2
    assert torch.equal(mine.pred_classes, theirs.pred_classes)
    assert torch.equal(mine.pred_masks, theirs.pred_masks)
    assert torch.allclose(mine.scores, theirs.scores, rtol=1e-5)
    assert torch.equal(mine.pred_boxes.tensor, theirs.pred_boxes.tensor)


def test_model_flags_sky_and_out_of_range_segments():
    """PanopticDepthLab.segments_info: depth_valid is False for classes_without_depth and for a
    median outside the dataset's depth_range, True otherwise."""
    from detectron2.data import MetadataCatalog

    cfg = load_cfg()
    model = build_model(cfg)
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    sky = meta.stuff_classes.index("Sky")
    road = meta.stuff_classes.index("Road")
    ids = torch.tensor([[sky * 1000, sky * 1000, road * 1000, road * 1000]])
    depth = torch.tensor([[49.5, 49.5, 7.0, 7.0]])
    info = {s["category_id"]: s for s in model.segments_info(ids, depth)}
    assert info[sky]["depth_valid"] is False and info[sky]["depth"] == pytest.approx(49.5)
    assert info[road]["depth_valid"] is True
    far = model.segments_info(torch.full((1, 2), road * 1000), torch.full((1, 2), 80.0))
    assert far[0]["depth_valid"] is False  # at the range's upper bound: outside (exclusive)
