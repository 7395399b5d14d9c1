"""SegDep's referring head: free-form queries -> one binary mask each, a score and the depth over the mask.

Head shapes, the Dice loss by hand, training losses (named, finite, exact zeros without queries, falling on
a tiny batch), the inference contract (``queries`` in, ``referring`` out), answering from cached image
features (equal to the full forward, backbone run once, Q queries in one batched pass) and the mapper's
``queries`` -> ``referring_masks`` on the synthetic VKITTI2 fixture.

Fast: the CPU config (hrnet_w18_small) with a tiny open_clip text config (width 64, 2 layers, embed_dim 32)
on 64 x 64 images, one thread.
"""
import math

import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.utils.events import EventStorage
from PIL import Image


import segdep_d2  # noqa: E402,F401
from segdep_d2.data import DepthPanopticDatasetMapper  # noqa: E402
from segdep_d2.data.mappers.depth_panoptic_mapper import swap_left_right  # noqa: E402
from segdep_d2.modeling.heads.segdep_heads import ReferringHead  # noqa: E402
from segdep_d2.modeling.losses import dice_loss  # noqa: E402
from segdep_d2.modeling.meta_arch.segdep import LOSS_NAMES, REFERRING_LOSS_NAMES, SegDepImageEncoding  # noqa: E402

from segdep_testing import SEGDEP_CPU_CONFIG as CPU_CONFIG  # noqa: E402
from segdep_testing import TINY_OPEN_CLIP as TINY_CLIP  # noqa: E402
from segdep_testing import TINY_SEGDEP_OPTS as TINY  # noqa: E402
from segdep_testing import segdep_cfg, tiny_segdep_model as _model  # noqa: E402
QUERIES = ["the nearest car", "the van on the left"]
REFERRING_KEYS = {f"loss_{n}" for n in REFERRING_LOSS_NAMES}


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tiny_open_clip):
    assert tiny_open_clip == TINY_CLIP  # registered once for the session (tests/conftest.py)


# torch on one thread: the tests run side by side with others on 2 cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(*opts):
    return segdep_cfg(*TINY, *opts)


@pytest.fixture(scope="module")
def model():
    return _model()


def _sample(h=64, w=64, *, seed=0, queries=True):
    g = torch.Generator().manual_seed(seed)
    x = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)}
    sem = torch.full((h, w), 5, dtype=torch.long)
    sem[: h // 3] = 1
    sem[h // 2:, : w // 3] = 12
    x["sem_seg"] = sem
    d = torch.rand(h, w, generator=g) * 40 + 1
    x.update(depth=d, depth_valid=d > 0)
    if queries:
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, h // 2:, : w // 3] = True  # "the nearest car": the car rectangle
        masks[1, h // 8: h // 4, w // 2: 3 * w // 4] = True
        x.update(queries=list(QUERIES), referring_masks=masks)
    return x


# ---- head and loss ----
def test_referring_head_shapes():
    torch.manual_seed(0)
    head = ReferringHead(16, 32, hidden=8, norm="", num_heads=4)
    fused = torch.randn(2, 16, 6, 10, requires_grad=True)
    depth = torch.rand(2, 1, 6, 10) * 50 + 1
    extents = torch.tensor([[6.0, 10.0], [4.0, 7.5]])  # the second image is padded
    pixels = head.pixel_embeddings(fused, depth, extents)
    assert pixels.shape == (2, 32, 6, 10)
    assert torch.allclose(pixels.norm(dim=1), torch.ones(2, 6, 10), atol=1e-5)
    coords = ReferringHead.coordinates(extents, 6, 10)
    assert coords.shape == (2, 2, 6, 10)
    assert float(coords[0, 0, 0, 0]) == pytest.approx(-0.9) and float(coords[0, 0, 0, -1]) == pytest.approx(0.9)
    assert float(coords[1, 0, 0, 8]) > 1.0  # padding lies beyond the image's right edge
    text = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    valid = torch.zeros(6, 10, dtype=torch.bool)
    valid[:4, :8] = True
    logits = head(pixels[1], text, valid)
    assert logits.shape == (5, 6, 10) and torch.isfinite(logits).all()
    # queries do not interact: one query alone gives the same logits as inside a batch of five
    assert torch.allclose(head(pixels[1], text[2:3], valid)[0], logits[2], atol=1e-5)
    # an untrained head is biased towards empty masks (prior 0.01)
    assert float(head.query_bias.bias.detach()) == pytest.approx(math.log(0.01 / 0.99))
    logits.sum().backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all()
    with pytest.raises(ValueError, match="REFERRING_HEADS"):
        ReferringHead(16, 30, num_heads=4)


def test_dice_loss_by_hand():
    probs = torch.tensor([[0.8, 0.2, 0.6, 0.1], [0.3, 0.1, 0.9, 0.5]])
    logits = torch.log(probs / (1 - probs)).requires_grad_(True)
    target = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    # mask 0: sum(p t) = 1.4, sum(p) = 1.7, sum(t) = 2 -> 1 - 3.8 / 4.7
    # mask 1: empty target -> 1 - 1 / (1.8 + 1)
    expected = ((1 - 3.8 / 4.7) + (1 - 1 / 2.8)) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # only the first three pixels count: mask 0 -> 1 - (2 * 1.4 + 1) / (1.6 + 2 + 1), mask 1 -> 1 - 1 / 2.3
    valid = torch.tensor([True, True, True, False])
    expected = ((1 - 3.8 / 4.6) + (1 - 1 / 2.3)) / 2
    assert dice_loss(logits, target, valid).item() == pytest.approx(expected, rel=1e-6)
    # a perfect prediction scores ~0; no mask at all is an exact 0 still connected to the graph
    perfect = dice_loss(torch.tensor([[50.0, -50.0]]), torch.tensor([[True, False]]))
    assert float(perfect) == pytest.approx(0.0, abs=1e-6)
    empty = dice_loss(logits[:0], target[:0])
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="same shape"):
        dice_loss(logits, target[:1])


# ---- training ----
def test_training_losses_with_queries(model):
    model.train()
    with EventStorage() as storage:
        losses = model([_sample(seed=0), _sample(48, 80, seed=1, queries=False)])
    assert set(losses) == {f"loss_{n}" for n in LOSS_NAMES} | REFERRING_KEYS
    assert all(torch.isfinite(v) and v.dim() == 0 and float(v.detach()) > 0 for v in losses.values())
    assert storage.history("segdep/num_referring_queries").latest() == 2
    sum(losses.values()).backward()
    grads = [p.grad for p in model.referring_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="referring_masks"):
        x = _sample()
        del x["referring_masks"]
        model([x])
    with pytest.raises(ValueError, match=r"\(Q, H, W\)"):
        x = _sample()
        x["referring_masks"] = x["referring_masks"][:1]
        model([x])


def test_without_queries_the_referring_losses_are_exact_zeros(model):
    model.train()
    params = list(model.referring_head.parameters())
    # a model trained on referring data: the referring losses are always there, 0 for a batch without queries
    model.train_referring = True
    try:
        with EventStorage():
            losses = model([_sample(queries=False), _sample(seed=1, queries=False)])
    finally:
        model.train_referring = False
    assert REFERRING_KEYS <= set(losses)
    assert all(losses[k].item() == 0.0 for k in REFERRING_KEYS)
    sum(losses.values()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in params)  # in the graph (DDP)
    model.zero_grad(set_to_none=True)
    # a model without referring data: the seed's five losses, unchanged, the head still in the graph
    with EventStorage():
        plain = model([_sample(queries=False)])
    assert set(plain) == {f"loss_{n}" for n in LOSS_NAMES}
    sum(plain.values()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in params)
    model.zero_grad(set_to_none=True)
    # an input with an empty query list is an input without queries
    x = _sample()
    x.update(queries=[], referring_masks=torch.zeros(0, 64, 64, dtype=torch.bool))
    with EventStorage():
        assert set(model([x])) == {f"loss_{n}" for n in LOSS_NAMES}


def test_referring_loss_goes_down_on_a_tiny_batch():
    model = _model(seed=1)
    model.train()
    batch = [_sample(seed=0), _sample(seed=1)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    with EventStorage():
        for _ in range(10):
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["loss_referring_bce"] < 0.8 * first["loss_referring_bce"], (first, last)
    assert last["loss_referring_dice"] < 0.8 * first["loss_referring_dice"], (first, last)
    total = [sum(h[k] for k in REFERRING_KEYS) for h in history]
    assert total[-1] < total[0]


def test_model_trains_referring_when_a_training_set_has_queries(synthetic_vkitti2):
    from detectron2.data import DatasetCatalog

    from segdep_d2.data.datasets import register_vkitti2, register_vkitti2_referring

    root, _ = synthetic_vkitti2
    if "test_segdep_referring_train" not in DatasetCatalog.list():
        register_vkitti2_referring("test_segdep_referring_train", root, ("Scene01",), ("clone",))
        register_vkitti2("test_segdep_referring_plain", root, ("Scene01",), ("clone",))
    assert _model("DATASETS.TRAIN", "('test_segdep_referring_train',)").train_referring
    assert not _model("DATASETS.TRAIN", "('test_segdep_referring_plain',)").train_referring
    cfg = _cfg()
    assert (cfg.MODEL.SEGDEP.REFERRING_BCE_WEIGHT, cfg.MODEL.SEGDEP.REFERRING_DICE_WEIGHT) == (1.0, 1.0)
    weighted = _model("MODEL.SEGDEP.REFERRING_BCE_WEIGHT", "0.5", "MODEL.SEGDEP.REFERRING_DICE_WEIGHT", "2.0")
    assert weighted.loss_weights["referring_bce"] == 0.5 and weighted.loss_weights["referring_dice"] == 2.0


# ---- inference ----
def _forced(model, bias):
    """Context: the referring head's per-query bias pinned to ``bias`` (full or empty masks)."""

    class _Pin:
        def __enter__(self):
            self.saved = model.referring_head.query_bias.bias.detach().clone()
            with torch.no_grad():
                model.referring_head.query_bias.bias.fill_(bias)

        def __exit__(self, *exc):
            with torch.no_grad():
                model.referring_head.query_bias.bias.copy_(self.saved)

    return _Pin()


def test_inference_outputs(model):
    model.eval()
    inputs = [
        {"image": _sample(64, 96)["image"], "queries": QUERIES},
        # queries as referring records hold them (dicts with a "text"), and an output size
        {"image": _sample(seed=2)["image"], "height": 40, "width": 50,
         "queries": [{"text": "the white van", "instance_id": 3}]},
        {"image": _sample(48, 64, seed=3)["image"]},
        {"image": _sample(seed=4)["image"], "queries": []},
    ]
    with torch.no_grad():
        first, second, third, fourth = model(inputs)
    assert "referring" not in third and fourth["referring"] == []
    assert [a["text"] for a in first["referring"]] == QUERIES and second["referring"][0]["text"] == "the white van"
    for out, size in ((first, (64, 96)), (second, (40, 50))):
        for a in out["referring"]:
            assert set(a) == {"text", "mask", "score", "area", "depth_median", "depth_mean"}
            assert a["mask"].dtype == torch.bool and tuple(a["mask"].shape) == size
            assert isinstance(a["score"], float) and 0.0 < a["score"] < 1.0
            assert (a["score"] >= 0.5) == (a["area"] > 0) and a["area"] == int(a["mask"].sum())
            assert isinstance(a["depth_median"], float) and isinstance(a["depth_mean"], float)

    # full masks: the depth answers are those of the predicted depth over the mask, in metres
    with _forced(model, 100.0), torch.no_grad():
        out = model([inputs[1]])[0]
    answer = out["referring"][0]
    assert answer["mask"].all() and answer["area"] == 40 * 50 and answer["score"] > 0.99
    depth = out["depth"].numpy()
    assert answer["depth_median"] == pytest.approx(float(np.median(depth)), rel=1e-6)
    assert answer["depth_mean"] == pytest.approx(float(depth.mean(dtype=np.float64)), rel=1e-6)
    assert model.min_depth <= answer["depth_median"] <= model.max_depth

    # empty masks: NaN depths, score below 0.5
    with _forced(model, -100.0), torch.no_grad():
        answer = model([inputs[1]])[0]["referring"][0]
    assert not answer["mask"].any() and answer["area"] == 0 and answer["score"] < 0.5
    assert math.isnan(answer["depth_median"]) and math.isnan(answer["depth_mean"])


def test_queries_change_only_the_referring_output(model):
    model.eval()
    image = _sample(seed=5)["image"]
    with torch.no_grad():
        a, b = model([{"image": image}, {"image": image, "queries": QUERIES}])
    assert torch.equal(a["sem_seg"], b["sem_seg"]) and torch.equal(a["depth"], b["depth"])
    assert torch.equal(a["open_vocab_seg"], b["open_vocab_seg"])


def test_answering_from_cached_features_equals_the_full_forward(model):
    model.eval()
    inputs = [
        {"image": _sample(64, 96, seed=6)["image"], "queries": QUERIES},
        {"image": _sample(seed=7)["image"], "height": 40, "width": 50, "queries": ["the farthest vehicle"]},
    ]
    with torch.no_grad():
        full = model(inputs)
        encoding = model.encode_image(inputs)
        assert isinstance(encoding, SegDepImageEncoding) and len(encoding) == 2
        cached = model.answer(encoding, [QUERIES, ["the farthest vehicle"]])
        again = model.answer(encoding, [QUERIES, ["the farthest vehicle"]])  # reuses the pixel embeddings
    for out, answers in zip(full, cached):
        for expected, got in zip(out["referring"], answers):
            assert torch.equal(expected["mask"], got["mask"])
            assert got["text"] == expected["text"] and got["area"] == expected["area"]
            assert got["score"] == pytest.approx(expected["score"], rel=1e-6, abs=1e-7)
            for key in ("depth_median", "depth_mean"):
                assert got[key] == pytest.approx(expected[key], rel=1e-6, nan_ok=True)
    assert [[a["score"] for a in image] for image in again] == [[a["score"] for a in image] for image in cached]
    # one list of queries asks every image; an empty one asks nothing
    with torch.no_grad():
        both = model.answer(encoding, ["the nearest car"])
        assert model.answer(encoding, []) == [[], []]
    assert [len(a) for a in both] == [1, 1]
    assert both[0][0]["score"] == pytest.approx(cached[0][0]["score"], rel=1e-5)
    with pytest.raises(ValueError, match="one list per image"):
        model.answer(encoding, [QUERIES, ["a"], ["b"]])


def _count_calls(module, counter, key):
    return module.register_forward_hook(lambda *args: counter.__setitem__(key, counter.get(key, 0) + 1))


def test_twenty_queries_run_in_one_batched_pass(model):
    model.eval()
    queries = [f"the car number {i}" for i in range(19)] + ["the nearest car"]
    counts = {}
    hooks = [
        _count_calls(model.backbone, counts, "backbone"),
        _count_calls(model.fusion, counts, "fusion"),
        _count_calls(model.referring_head, counts, "query_pass"),
        _count_calls(model.referring_head.conv, counts, "pixel_pass"),
        _count_calls(model.referring_head.attn_key, counts, "memory"),
        _count_calls(model.text_encoder.text, counts, "text_tower"),
    ]
    image = _sample(seed=8)["image"]
    try:
        with torch.no_grad():
            out = model([{"image": image, "queries": queries}])[0]
        twenty = dict(counts)
        counts.clear()
        with torch.no_grad():
            one = model([{"image": image, "queries": queries[-1:]}])[0]
        single = dict(counts)
        counts.clear()
        with torch.no_grad():
            encoding = model.encode_image([{"image": image}])
            for q in queries[:3]:
                model.answer(encoding, [q])
        cached = dict(counts)
    finally:
        for h in hooks:
            h.remove()
    assert len(out["referring"]) == 20
    # the image once; the open-vocab and the referring fusion once each; every query in one pass
    assert twenty["backbone"] == 1 and twenty["query_pass"] == 1 and twenty["pixel_pass"] == twenty["memory"] == 1
    assert twenty["fusion"] == single["fusion"] == 2
    assert twenty.get("text_tower", 0) <= 1  # the 20 sentences in one text-tower batch (or cached)
    # a query's answer does not depend on the other queries asked with it
    assert torch.equal(out["referring"][-1]["mask"], one["referring"][0]["mask"])
    assert out["referring"][-1]["score"] == pytest.approx(one["referring"][0]["score"], rel=1e-5)
    # three questions on cached features: no backbone, the pixel half once
    assert cached["backbone"] == 1 and cached["pixel_pass"] == cached["memory"] == 1 and cached["query_pass"] == 3


# ---- data ----
def test_swap_left_right():
    assert swap_left_right("the van on the left") == "the van on the right"
    assert swap_left_right("the leftmost car") == "the rightmost car"
    assert swap_left_right("the second car from the right") == "the second car from the left"
    assert swap_left_right("Left and right") == "Right and left"
    assert swap_left_right("the nearest car") == "the nearest car"


def _referring_mapper(augmentations, is_train=True):
    return DepthPanopticDatasetMapper(
        is_train, augmentations=augmentations, image_format="RGB", depth_range=(1e-3, 80.0),
        panoptic_targets=False,
    )


def test_mapper_builds_referring_masks(synthetic_vkitti2):
    from segdep_d2.data.datasets import load_vkitti2_referring

    root, _ = synthetic_vkitti2
    records = load_vkitti2_referring(root, ("Scene01",), ("clone",), seed=0)
    record = next(r for r in records if any("right" in q["text"] or "left" in q["text"] for q in r["queries"]))
    instance = np.asarray(Image.open(record["instance_file_name"])).astype(np.int64)
    targets = np.array([q["instance_id"] for q in record["queries"]])
    texts = [q["text"] for q in record["queries"]]
    expected = instance[None] == targets[:, None, None]
    assert all(expected[i].any() for i in range(len(targets)))  # every target is visible

    out = _referring_mapper([])(record)
    assert out["queries"] == texts
    masks = out["referring_masks"]
    assert masks.dtype == torch.bool and masks.shape == (len(texts), *instance.shape)
    np.testing.assert_array_equal(masks.numpy(), expected)

    # a horizontal flip mirrors the masks and swaps left / right in the sentences
    out = _referring_mapper([T.RandomFlip(prob=1.0)])(record)
    np.testing.assert_array_equal(out["referring_masks"].numpy(), expected[:, :, ::-1])
    assert out["queries"] == [swap_left_right(t) for t in texts] != texts
    # the masks are resampled exactly as the labels: every mask pixel is a car / van / truck pixel
    np.random.seed(0)
    out = _referring_mapper([T.ResizeShortestEdge(40, 1000), T.RandomFlip(prob=1.0)])(record)
    masks, sem = out["referring_masks"].numpy(), out["sem_seg"].numpy()
    assert masks.shape[1:] == sem.shape == tuple(out["image"].shape[-2:]) == (40, 130)
    vehicles = np.isin(sem, [11, 12, 13])
    assert all(m.any() and vehicles[m].all() for m in masks)
    resized = T.ResizeTransform(*instance.shape, 40, 130).apply_segmentation(instance.astype(np.uint8))[:, ::-1]
    np.testing.assert_array_equal(masks, resized[None] == targets[:, None, None])

    # the rest of the sample is what the record without queries gives, and that one gets no referring keys
    plain = {k: v for k, v in record.items() if k != "queries"}
    augs = [T.ResizeShortestEdge((32, 48), 1000, "choice"), T.RandomFlip()]
    np.random.seed(3)
    with_queries = _referring_mapper(augs)(record)
    np.random.seed(3)
    without = _referring_mapper(augs)(plain)
    assert set(with_queries) - set(without) == {"queries", "referring_masks"}
    for key in ("image", "sem_seg", "depth", "depth_valid"):
        assert torch.equal(with_queries[key], without[key]), key
    # at test time the record's queries pass through untouched
    test_out = _referring_mapper([], is_train=False)(record)
    assert test_out["queries"] == record["queries"] and "referring_masks" not in test_out

    bad = dict(record)
    del bad["instance_file_name"]
    with pytest.raises(ValueError, match="instance_file_name"):
        _referring_mapper([])(bad)


def test_mapped_referring_samples_train_the_model(synthetic_vkitti2, model):
    """The mapper's output is what the model trains on (queries + referring_masks at the image's size)."""
    from segdep_d2.data.datasets import load_vkitti2_referring

    root, _ = synthetic_vkitti2
    records = load_vkitti2_referring(root, ("Scene01",), ("clone",), seed=0)[:2]
    mapper = _referring_mapper([T.ResizeShortestEdge(32, 1000), T.RandomFlip()])
    batch = [mapper(r) for r in records]
    model.train()
    with EventStorage() as storage:
        losses = model(batch)
    assert REFERRING_KEYS <= set(losses) and all(torch.isfinite(losses[k]) for k in REFERRING_KEYS)
    assert storage.history("segdep/num_referring_queries").latest() == sum(len(r["queries"]) for r in records)
