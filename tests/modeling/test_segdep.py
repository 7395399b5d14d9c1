"""SegDep: configs build, fusion / head shapes, training losses (finite, exact zeros without labels,
falling), inference outputs (closed-set, depth, open-vocab for unseen names and for several
vocabularies, per-segment depth), the zero-shot protocol and the optimiser's parameter groups.

Fast: the CPU config (hrnet_w18_small) with a tiny open_clip text config registered here (text width
64, 2 layers, CLIP's real vocabulary) instead of ViT-S-32-alt, on 64 x 64 images, one thread.
"""
import glob
import math
import os
import warnings

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage


import segdep_d2  # noqa: E402,F401
from segdep_d2.engine import SegDepTrainer  # noqa: E402
from segdep_d2.modeling.heads.segdep_heads import OpenVocabHead, SegDepTaskHead, TextVisionFusion  # noqa: E402
from segdep_d2.modeling.meta_arch import SegDep, model_outputs  # noqa: E402
from segdep_d2.data.vocabularies import canonical_name  # noqa: E402
from segdep_d2.modeling.meta_arch.segdep import LOSS_NAMES  # noqa: E402

from segdep_testing import SEGDEP_CPU_CONFIG as CPU_CONFIG  # noqa: E402
from segdep_testing import TINY_OPEN_CLIP as TINY_CLIP  # noqa: E402
from segdep_testing import TINY_SEGDEP_OPTS as TINY  # noqa: E402
from segdep_testing import segdep_cfg, tiny_segdep_model as _model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL_CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "projects/SegDep/configs/**/*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)
VKITTI2_NAMES = [
    "terrain", "sky", "tree", "vegetation", "building", "road", "guard rail", "traffic sign", "traffic light",
    "pole", "misc", "truck", "car", "van",
]


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tiny_open_clip):
    assert tiny_open_clip == TINY_CLIP  # registered once for the session (tests/conftest.py)


# torch on one thread: the tests run side by side with others on 2 cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_cfg(path=CPU_CONFIG, *opts):
    return segdep_cfg(*opts, path=path)


@pytest.fixture(scope="module")
def model():
    return _model()


def _sample(h=64, w=64, *, labels=True, depth=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)}
    if labels:
        # a few rectangles of different classes: boundaries for the focal loss, several classes for InfoNCE
        sem = torch.full((h, w), 5, dtype=torch.long)
        sem[: h // 3] = 1
        sem[h // 2:, : w // 3] = 12
        sem[h // 2:, 2 * w // 3:] = 4
        x["sem_seg"] = sem
    if depth:
        d = torch.rand(h, w, generator=g) * 40 + 1
        x.update(depth=d, depth_valid=d > 0)
    return x


# ---- configs ----
@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_every_shipped_config_builds(path):
    cfg = load_cfg(path)
    assert cfg.MODEL.META_ARCHITECTURE == "SegDep" and cfg.SOLVER.OPTIMIZER == "ADAMW"
    assert list(cfg.MODEL.DEPTH_HEAD.LOSSES) == ["l1", "berhu", "silog"]
    if cfg.MODEL.SEGDEP.HRNET_NAME == "hrnet_w32":
        assert cfg.MODEL.SEGDEP.CLIP_MODEL == "ViT-B-32" and cfg.SOLVER.IMS_PER_BATCH == 8
        assert cfg.SOLVER.BASE_LR * cfg.MODEL.SEGDEP.BACKBONE_LR_MULTIPLIER == pytest.approx(1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg)  # hrnet_w32 + ViT-B-32: build only (about 96M parameters)
    assert isinstance(model, SegDep) and model.class_names == VKITTI2_NAMES
    assert model.sem_seg_head.predictor.out_channels == 14
    assert model.open_vocab_head.proj.out_channels == model.text_encoder.embed_dim
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


def test_model_outputs_and_class_names():
    cfg = load_cfg()
    assert model_outputs(cfg) == ("sem_seg", "depth", "open_vocab_seg")  # no panoptic targets / PQ
    assert canonical_name("TrafficSign") == "traffic sign" and canonical_name("GuardRail") == "guard rail"
    assert canonical_name("Misc") == "misc" and canonical_name("traffic light") == "traffic light"


# ---- modules ----
def test_fusion_and_heads_shapes():
    torch.manual_seed(0)
    fusion = TextVisionFusion(16, 32, num_heads=4, num_layers=2, mlp_ratio=2)
    features = torch.randn(2, 16, 8, 12, requires_grad=True)
    text = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    fused = fusion(features, text)
    assert fused.shape == (2, 16, 8, 12)
    assert torch.allclose(fusion(features, text[None].expand(2, -1, -1)), fused, atol=1e-6)
    assert not torch.allclose(fusion(features, text[:3]), fused)  # the vocabulary matters
    fused.sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    with pytest.raises(ValueError, match="divisible"):
        TextVisionFusion(18, 32, num_heads=4)

    head = OpenVocabHead(16, 32, norm="")
    emb = head(fused)
    assert emb.shape == (2, 32, 8, 12) and torch.allclose(emb.norm(dim=1), torch.ones(2, 8, 12), atol=1e-5)
    assert float(head.temperature_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    logits = head.logits(emb, text)
    assert logits.shape == (2, 5, 8, 12) and float(logits.abs().max().detach()) <= 1 / 0.07 + 1e-4
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert float(head.temperature_scale.detach()) == pytest.approx(100.0)  # CLIP's cap
    assert SegDepTaskHead(16, 14, hidden=8)(fused).shape == (2, 14, 8, 12)


# ---- training ----
def test_training_losses_are_named_and_finite(model):
    model.train()
    with EventStorage() as storage:
        losses = model([_sample(seed=0), _sample(48, 80, seed=1)])
    assert set(losses) == {f"loss_{n}" for n in LOSS_NAMES} == {
        "loss_sem_seg", "loss_depth", "loss_open_vocab", "loss_distill", "loss_align"
    }
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert all(float(v.detach()) > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert storage.history("segdep/num_sem_seg_samples").latest() == 2
    assert storage.history("segdep/logit_scale").latest() == pytest.approx(1 / 0.07, rel=1e-3)
    grads = [p.grad for p in model.open_vocab_head.parameters()] + [p.grad for p in model.fusion.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


def test_missing_labels_give_exact_zeros(model):
    model.train()
    with EventStorage():
        no_depth = model([_sample(depth=False, seed=0), _sample(depth=False, seed=1)])
        unlabelled = [_sample(seed=0), _sample(seed=1)]
        for x in unlabelled:
            x["sem_seg"] = torch.full_like(x["sem_seg"], 255)
        no_labels = model(unlabelled)
        neither = model([_sample(labels=False, depth=False)])
    assert no_depth["loss_depth"].item() == 0.0 and no_depth["loss_sem_seg"].item() > 0
    for name in ("loss_sem_seg", "loss_open_vocab", "loss_distill", "loss_align"):
        assert no_labels[name].item() == 0.0, name
    assert no_labels["loss_depth"].item() > 0
    assert all(v.item() == 0.0 for v in neither.values())
    total = sum(neither.values())
    total.backward()  # still connected to the graph (DDP stays in step)
    assert model.sem_seg_head.predictor.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_losses_go_down_on_a_small_batch():
    model = _model(seed=1)
    model.train()
    batch = [_sample(seed=0), _sample(seed=1)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    history = []
    with EventStorage():
        for _ in range(10):
            losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert all(last[k] < first[k] for k in first), (first, last)
    # (depth regresses metres of noise here: it falls, slowly; the segmentation losses fall fast)
    assert last["loss_sem_seg"] < 0.8 * first["loss_sem_seg"]
    assert last["loss_open_vocab"] < 0.8 * first["loss_open_vocab"]


# ---- inference ----
def test_inference_outputs(model):
    model.eval()
    unseen = ["bicycle", "pedestrian", "traffic cone"]
    inputs = [
        {"image": _sample(64, 96)["image"], "class_names": unseen},
        {"image": _sample(64, 64, seed=2)["image"], "height": 40, "width": 50,
         "class_names": {"seen": ["car", "road"], "synonyms": ["automobile", "street", "sky"]}},
        {"image": _sample(48, 64, seed=3)["image"]},
    ]
    with torch.no_grad():
        first, second, third = model(inputs)
    assert first["sem_seg"].shape == (14, 64, 96) and first["depth"].shape == (64, 96)
    lo, hi = model.min_depth, model.max_depth
    for out in (first, second, third):
        assert torch.isfinite(out["depth"]).all() and lo <= float(out["depth"].min()) <= float(out["depth"].max()) <= hi
    assert first["open_vocab_seg"].shape == (3, 64, 96) and torch.isfinite(first["open_vocab_seg"]).all()
    assert {s["name"] for s in first["open_vocab_segments"]} <= set(unseen)
    assert sum(s["area"] for s in first["open_vocab_segments"]) == 64 * 96
    assert all(lo <= s["depth"] <= hi and "depth_median" in s for s in first["open_vocab_segments"])

    assert second["sem_seg"].shape == (14, 40, 50) and second["depth"].shape == (40, 50)
    assert set(second["open_vocab_seg"]) == {"seen", "synonyms"}
    assert second["open_vocab_seg"]["seen"].shape == (2, 40, 50)
    assert second["open_vocab_seg"]["synonyms"].shape == (3, 40, 50)
    assert set(second["open_vocab_segments"]) == {"seen", "synonyms"}
    sky = [s for s in second["open_vocab_segments"]["synonyms"] if s["name"] == "sky"]
    assert all(not s["depth_valid"] for s in sky)  # VKITTI2's classes_without_depth

    # no class_names: the training class names, in label order
    assert third["open_vocab_seg"].shape == (14, 48, 64)


def test_the_vocabulary_changes_only_the_open_vocab_output(model):
    model.eval()
    image = _sample(seed=4)["image"]
    with torch.no_grad():
        a, b = model([{"image": image, "class_names": ["car", "road"]}, {"image": image, "class_names": ["tree"]}])
    assert torch.equal(a["sem_seg"], b["sem_seg"]) and torch.equal(a["depth"], b["depth"])
    assert a["open_vocab_seg"].shape[0] == 2 and b["open_vocab_seg"].shape[0] == 1


def test_panoptic_regions_carry_per_segment_depth(model):
    """Closed-set regions: one segment per stuff class, one per connected component of a thing
    class, tiny ones void, each with the mean / median of the predicted depth over it."""
    labels = torch.full((32, 40), 5)  # road (stuff)
    labels[2:10, 2:10] = 12  # car, component 1
    labels[20:30, 25:38] = 12  # car, component 2
    labels[0, 39] = 1  # one sky pixel: under MIN_SEGMENT_AREA -> void
    depth = torch.arange(32 * 40, dtype=torch.float32).view(32, 40) / 100 + 1
    ids, segments = model.panoptic_regions(labels, depth)
    assert ids.shape == (32, 40) and int(ids[0, 39]) == -1
    by_id = {s["id"]: s for s in segments}
    cars = sorted(i for i in by_id if i // model.label_divisor == 12)
    assert len(cars) == 2 and all(by_id[i]["isthing"] for i in cars)
    assert 5 * model.label_divisor in by_id and not by_id[5 * model.label_divisor]["isthing"]
    for seg_id, info in by_id.items():
        mask = ids == seg_id
        assert info["area"] == int(mask.sum())
        assert info["depth"] == pytest.approx(float(depth[mask].double().mean()), rel=1e-6)
        assert info["depth_median"] == pytest.approx(float(np.median(depth[mask].numpy())), rel=1e-6)
        assert info["depth_valid"]
    model.eval()
    with torch.no_grad():
        out = model([{"image": _sample()["image"]}])[0]
    ids, segments = out["panoptic_seg"]
    assert ids.shape == (64, 64) and segments and all(math.isfinite(s["depth"]) for s in segments)


# ---- zero-shot protocol ----
def test_held_out_classes_never_reach_training():
    model = _model("MODEL.SEGDEP.HELD_OUT_CLASSES", "['Car', 'traffic sign']")
    assert model.train_names == [n for n in VKITTI2_NAMES if n not in ("car", "traffic sign")]
    prompts = []
    original = model.text_encoder.encode
    model.text_encoder.encode = lambda texts: prompts.extend(texts) or original(texts)
    model.train()
    x = _sample()
    x["sem_seg"] = torch.full_like(x["sem_seg"], 12)  # only held-out pixels: nothing to learn
    with EventStorage():
        losses = model([x])
    assert not any("car" in p or "traffic sign" in p for p in prompts)
    for name in ("loss_sem_seg", "loss_open_vocab", "loss_distill", "loss_align"):
        assert losses[name].item() == 0.0, name
    assert losses["loss_depth"].item() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"], "class_names": ["car"]}])[0]
    assert out["open_vocab_seg"].shape == (1, 64, 64)  # asked for at inference: zero-shot
    with pytest.raises(ValueError, match="HELD_OUT_CLASSES"):
        _model("MODEL.SEGDEP.HELD_OUT_CLASSES", "['bicycle']")


def test_class_names_must_match_the_number_of_classes():
    with pytest.raises(ValueError, match="class names"):
        _model("MODEL.SEGDEP.CLASS_NAMES", "['road', 'car']")


# ---- optimiser ----
def test_optimizer_param_groups(model):
    cfg = load_cfg(CPU_CONFIG, *TINY, "SOLVER.BASE_LR", "0.001", "MODEL.SEGDEP.BACKBONE_LR_MULTIPLIER", "0.1")
    optimizer = SegDepTrainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if name.startswith("text_encoder."):
            assert id(p) not in group_of, name  # frozen text tower: not optimised
            continue
        assert id(p) in group_of, name
        group = group_of[id(p)]
        expected = 1e-4 if name.startswith("backbone.") else 1e-3
        assert group["lr"] == pytest.approx(expected), name
        if name.endswith("logit_scale"):
            assert group["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        1 for n, p in model.named_parameters() if p.requires_grad
    )


def test_class_map_is_argmax_with_first_index_on_ties():
    from segdep_d2.modeling.meta_arch.segdep import class_map

    scores = torch.randn(19, 7, 9, generator=torch.Generator().manual_seed(0))
    scores[4, 2, 3] = scores[11, 2, 3] = 50.0  # a tie: the first class wins, as argmax
    labels = class_map(scores)
    assert labels.dtype == torch.int64 and labels.shape == (7, 9)
    assert torch.equal(labels, scores.argmax(dim=0)) and int(labels[2, 3]) == 4
