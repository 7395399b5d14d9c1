"""SegDep's temporal refinement (MODEL.SEGDEP.TEMPORAL): warping (a known shift undone exactly, a
sub-pixel shift equal to bilinear interpolation by hand), the gated fusion (close to the plain path at
init; the previous frame's features with the gate forced open and zero flow), the per-sequence inference
state (first frame plain, next frame refined, gaps, interleaved sequences, batches, LRU, reset), single
images unchanged against TEMPORAL False with shared weights, and a training step with ``prev_image``
(finite losses, gradients reaching the motion head, optional flow loss).

Fast: the CPU config (hrnet_w18_small) with a tiny open_clip text config on 64 x 64 images, one thread.
"""
import copy

import pytest
import torch
from detectron2.utils.events import EventStorage


import segdep_d2  # noqa: E402,F401
from segdep_d2.modeling.heads import MotionHead, TemporalFusion, warp  # noqa: E402
from segdep_d2.modeling.meta_arch.segdep import LOSS_NAMES  # noqa: E402

from segdep_testing import SEGDEP_CPU_CONFIG as CPU_CONFIG  # noqa: E402
from segdep_testing import TINY_OPEN_CLIP as TINY_CLIP  # noqa: E402
from segdep_testing import TINY_SEGDEP_OPTS as TINY  # noqa: E402
from segdep_testing import segdep_cfg, tiny_segdep_model as _model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tiny_open_clip):
    assert tiny_open_clip == TINY_CLIP  # registered once for the session (tests/conftest.py)


# torch on one thread: the tests run side by side with others on 2 cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(*opts):
    return segdep_cfg(*TINY, *opts)


@pytest.fixture(scope="module")
def plain():
    return _model().eval()


@pytest.fixture(scope="module")
def temporal(plain):
    model = _model("MODEL.SEGDEP.TEMPORAL", "True", "MODEL.SEGDEP.TEMPORAL_CHANNELS", "16")
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("motion_head.", "temporal_fusion.")) for k in missing)
    return model.eval()


def _image(seed, h=64, w=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _frame(sequence, index, seed=None):
    return {"image": _image(seed if seed is not None else index), "sequence_id": sequence, "frame_index": index}


class _Counter:
    """Counts motion-head calls (one per refined batch chunk: each refined image is one call)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1

    def close(self):
        self.handle.remove()


@pytest.fixture
def counter(temporal):
    temporal.reset_temporal_state()
    c = _Counter(temporal.motion_head)
    yield c
    c.close()
    temporal.reset_temporal_state()


def _sem(model, inputs):
    with torch.no_grad():
        return model.encode_image(inputs).sem_seg


# ---- warping ----
def _shift(x, dx, dy):
    """out[y, j] = x[y + dy, j + dx] where inside, else 0; and that region as a mask."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    mask = torch.zeros((x.shape[0], 1, h, w), dtype=x.dtype)
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    ys_src, xs_src = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
    out[..., ys, xs] = x[..., ys_src, xs_src]
    mask[..., ys, xs] = 1
    return out, mask


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("dx,dy", [(2, 0), (0, -1), (3, 2), (-2, 1)])
def test_warp_undoes_a_known_integer_shift(dtype, tol, dx, dy):
    prev = torch.randn(2, 3, 8, 10, dtype=dtype, generator=torch.Generator().manual_seed(1))
    # the current frame sees at p what the previous one had at p + (dx, dy): the flow to the previous frame
    cur, region = _shift(prev, dx, dy)
    flow = torch.empty(2, 2, 8, 10, dtype=dtype)
    flow[:, 0], flow[:, 1] = dx, dy
    warped, valid = warp(prev, flow)
    assert valid.shape == (2, 1, 8, 10) and valid.dtype == dtype
    assert torch.equal(valid, region)
    assert (warped * valid - cur).abs().max() <= tol
    assert (warped * (1 - valid)).abs().max() <= tol  # entirely outside: zeros


def test_warp_subpixel_shift_is_bilinear_interpolation():
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    flow = torch.zeros(1, 2, 6, 7, dtype=torch.float64)
    flow[:, 0], flow[:, 1] = 0.5, 0.25
    warped, valid = warp(x, flow)
    # by hand: out[y, j] = sum of the 4 neighbours of (j + 0.5, y + 0.25)
    expected = (
        0.75 * (0.5 * x[..., :-1, :-1] + 0.5 * x[..., :-1, 1:]) + 0.25 * (0.5 * x[..., 1:, :-1] + 0.5 * x[..., 1:, 1:])
    )
    assert torch.allclose(warped[..., :-1, :-1], expected, atol=1e-12)
    assert valid[..., :-1, :-1].all() and not valid[..., -1, :].any() and not valid[..., :, -1].any()
    zero_flow = warp(x, torch.zeros_like(flow))
    assert torch.allclose(zero_flow[0], x, atol=1e-12) and zero_flow[1].all()


def test_warp_rejects_mismatched_flow():
    with pytest.raises(ValueError, match="flow"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5))


# ---- modules ----
def test_motion_head_and_fusion_at_init():
    torch.manual_seed(0)
    motion, fusion = MotionHead(8, 16), TemporalFusion(8, 16)
    g = torch.Generator().manual_seed(3)
    prev, cur = torch.randn(2, 8, 12, 20, generator=g), torch.randn(2, 8, 12, 20, generator=g)
    flow = motion(prev, cur)
    assert flow.shape == (2, 2, 12, 20) and flow.abs().max() < 0.05  # near identity warp
    warped, valid = warp(prev, flow)
    fused, gate = fusion(cur, warped, valid)
    assert fused.shape == cur.shape and gate.shape == (2, 1, 12, 20)
    assert 0 < gate.max() < 0.03  # sigmoid(-4) ~ 0.018
    assert (fused - cur).abs().max() <= 0.03 * (warped - cur).abs().max()


def test_open_gate_and_zero_flow_give_the_previous_features():
    torch.manual_seed(0)
    motion, fusion = MotionHead(8, 16), TemporalFusion(8, 16)
    with torch.no_grad():
        motion.predictor.weight.zero_()
        motion.predictor.bias.zero_()
        fusion.gate.weight.zero_()
        fusion.gate.bias.fill_(50.0)  # sigmoid(50) == 1 in float32
    g = torch.Generator().manual_seed(4)
    prev, cur = torch.randn(1, 8, 12, 20, generator=g), torch.randn(1, 8, 12, 20, generator=g)
    flow = motion(prev, cur)
    assert torch.equal(flow, torch.zeros_like(flow))
    warped, valid = warp(prev, flow)
    fused, gate = fusion(cur, warped, valid)
    assert torch.equal(gate, torch.ones_like(gate))
    torch.testing.assert_close(fused, prev)


# ---- config / model construction ----
def test_temporal_is_off_by_default(plain):
    cfg = _cfg()
    assert cfg.MODEL.SEGDEP.TEMPORAL is False and cfg.MODEL.SEGDEP.TEMPORAL_FLOW_LOSS_WEIGHT == 0.0
    assert plain.motion_head is None and plain.temporal_fusion is None and not plain.temporal
    assert not any(k.startswith(("motion_head", "temporal_fusion")) for k in plain.state_dict())


def test_temporal_modules_are_new_modules(temporal):
    assert isinstance(temporal.motion_head, MotionHead) and isinstance(temporal.temporal_fusion, TemporalFusion)
    assert temporal.lr_factor("motion_head.predictor.weight") == 1.0
    assert temporal.lr_factor("temporal_fusion.gate.bias") == 1.0


# ---- inference state ----
def test_single_images_and_first_frames_equal_the_plain_model(plain, temporal, counter):
    single = [{"image": _image(0)}]
    with torch.no_grad():
        a, b = plain(single)[0], temporal(single)[0]
    for key in ("sem_seg", "depth", "open_vocab_seg"):
        assert torch.equal(a[key], b[key]), key
    assert counter.calls == 0 and not temporal._temporal_state
    # a sequence's first frame: the plain path too (and it becomes the state)
    assert torch.equal(_sem(plain, [_frame("a", 0)]), _sem(temporal, [_frame("a", 0)]))
    assert counter.calls == 0 and list(temporal._temporal_state) == ["a"]


def test_next_frame_is_refined_and_close_to_the_plain_path(plain, temporal, counter):
    _sem(temporal, [_frame("a", 0)])
    refined = _sem(temporal, [_frame("a", 1)])
    assert counter.calls == 1
    plain_sem = _sem(plain, [_frame("a", 1)])
    assert not torch.equal(refined, plain_sem)  # the state was used...
    assert (refined - plain_sem).abs().max() <= 0.05 * plain_sem.abs().max()  # ...with a nearly closed gate
    # the state now holds frame 1's unrefined features
    index, stored = temporal._temporal_state["a"]
    with torch.no_grad():
        plain_features = plain.features(plain.preprocess_image([_frame("a", 1)]).tensor)[0]
    assert index == 1 and torch.equal(stored, plain_features)


def test_gaps_repeats_and_earlier_frames_take_the_plain_path(temporal, counter):
    _sem(temporal, [_frame("a", 0)])
    _sem(temporal, [_frame("a", 2)])  # gap of 2 > TEMPORAL_MAX_FRAME_GAP = 1
    _sem(temporal, [_frame("a", 2)])  # repeated
    _sem(temporal, [_frame("a", 1)])  # earlier
    assert counter.calls == 0
    _sem(temporal, [_frame("a", 2)])
    assert counter.calls == 1
    temporal.temporal_max_frame_gap = 3
    try:
        _sem(temporal, [_frame("a", 5)])
        assert counter.calls == 2
    finally:
        temporal.temporal_max_frame_gap = 1


def test_interleaved_sequences_keep_separate_states(temporal, counter):
    alone = [_sem(temporal, [_frame("a", i)]) for i in range(2)]
    temporal.reset_temporal_state()
    start, calls, interleaved = counter.calls, [], {}
    for seq, i in (("a", 0), ("b", 0), ("a", 1), ("b", 1)):
        interleaved[seq, i] = _sem(temporal, [_frame(seq, i, seed=10 * (seq == "b") + i)])
        calls.append(counter.calls - start)
    assert calls == [0, 0, 1, 2]
    assert torch.equal(interleaved["a", 1], alone[1])  # "b" did not disturb "a"'s state
    assert set(temporal._temporal_state) == {"a", "b"}


def test_consecutive_frames_in_one_batch_chain(temporal, counter):
    batched = _sem(temporal, [_frame("a", 0), _frame("a", 1), {"image": _image(7)}])
    assert counter.calls == 1
    temporal.reset_temporal_state()
    one_by_one = torch.cat([_sem(temporal, [_frame("a", 0)]), _sem(temporal, [_frame("a", 1)])])
    torch.testing.assert_close(batched[:2], one_by_one, rtol=1e-4, atol=1e-4)


def test_reset_train_eval_and_lru_clear_the_state(temporal, counter):
    _sem(temporal, [_frame("a", 0)])
    temporal.reset_temporal_state()
    _sem(temporal, [_frame("a", 1)])
    assert counter.calls == 0
    temporal.train()
    temporal.eval()
    assert not temporal._temporal_state
    temporal.temporal_max_sequences = 2
    try:
        for seq in ("a", "b", "c"):
            _sem(temporal, [_frame(seq, 0)])
        assert list(temporal._temporal_state) == ["b", "c"]  # "a" dropped: least recently used
        _sem(temporal, [_frame("a", 1)])
        assert counter.calls == 0
    finally:
        temporal.temporal_max_sequences = 8


def test_a_different_image_size_takes_the_plain_path(temporal, counter):
    _sem(temporal, [_frame("a", 0)])
    _sem(temporal, [{"image": _image(1, 96, 64), "sequence_id": "a", "frame_index": 1}])
    assert counter.calls == 0


# ---- training ----
def _train_sample(seed, *, prev=True, flow=False):
    g = torch.Generator().manual_seed(seed)
    x = {"image": _image(seed)}
    sem = torch.full((64, 64), 5, dtype=torch.long)
    sem[:20] = 1
    sem[32:, :20] = 12
    x["sem_seg"] = sem
    d = torch.rand(64, 64, generator=g) * 40 + 1
    x.update(depth=d, depth_valid=d > 0)
    if prev:
        x["prev_image"] = torch.roll(x["image"], shifts=2, dims=-1)  # the scene moved 2 px to the right
    if flow:
        f = torch.zeros(2, 64, 64)
        f[0] = -2.0  # each current pixel was 2 px further left in the previous frame
        x["prev_flow"] = f
        valid = torch.ones(64, 64, dtype=torch.bool)
        valid[:, :2] = False
        x["prev_flow_valid"] = valid
    return x


def _grad_norm(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.fixture
def training(temporal):
    """The temporal model in training mode, its weights and BN statistics restored afterwards."""
    state = copy.deepcopy(temporal.state_dict())
    temporal.train()
    yield temporal
    temporal.temporal_flow_loss_weight = 0.0
    temporal.zero_grad(set_to_none=True)
    temporal.load_state_dict(state)
    temporal.eval()


def test_training_step_with_prev_image_reaches_the_motion_head(training):
    temporal = training
    temporal.temporal_flow_loss_weight = 1.0
    try:
        temporal.zero_grad(set_to_none=True)
        with EventStorage():
            losses = temporal([_train_sample(0, flow=True), _train_sample(1), _train_sample(2, prev=False)])
        assert set(losses) == {f"loss_{n}" for n in LOSS_NAMES} | {"loss_temporal_flow"}
        assert all(torch.isfinite(v) for v in losses.values())
        # the predicted flow starts near 0 against a 2 px target: L1 ~ 2 px per pixel
        assert 1.5 < float(losses["loss_temporal_flow"].detach()) < 2.5
        sum(losses.values()).backward()
        assert _grad_norm(temporal.motion_head) > 0 and _grad_norm(temporal.temporal_fusion) > 0

        # without the flow loss, the task losses alone reach the motion head (through grid_sample)
        temporal.temporal_flow_loss_weight = 0.0
        temporal.zero_grad(set_to_none=True)
        with EventStorage():
            losses = temporal([_train_sample(0), _train_sample(1)])
        assert set(losses) == {f"loss_{n}" for n in LOSS_NAMES}
        sum(losses.values()).backward()
        assert _grad_norm(temporal.motion_head) > 0 and _grad_norm(temporal.temporal_fusion) > 0

        # a batch without prev_image: same loss names, temporal parameters in the graph with zero gradients
        temporal.zero_grad(set_to_none=True)
        with EventStorage():
            losses = temporal([_train_sample(0, prev=False)])
        assert set(losses) == {f"loss_{n}" for n in LOSS_NAMES}
        sum(losses.values()).backward()
        params = list(temporal.motion_head.parameters()) + list(temporal.temporal_fusion.parameters())
        assert all(p.grad is not None and not p.grad.any() for p in params)

        with pytest.raises(ValueError, match="prev_image"):
            bad = _train_sample(0)
            bad["prev_image"] = bad["prev_image"][:, :32]
            temporal([bad])
    finally:
        temporal.temporal_flow_loss_weight = 0.0


def test_flow_loss_is_an_exact_zero_without_flow(training):
    temporal = training
    temporal.temporal_flow_loss_weight = 1.0
    try:
        with EventStorage():
            with_prev = temporal([_train_sample(0)])
            without_prev = temporal([_train_sample(0, prev=False)])
        assert float(with_prev["loss_temporal_flow"].detach()) == 0.0
        assert float(without_prev["loss_temporal_flow"].detach()) == 0.0
        assert with_prev["loss_temporal_flow"].requires_grad
    finally:
        temporal.temporal_flow_loss_weight = 0.0
