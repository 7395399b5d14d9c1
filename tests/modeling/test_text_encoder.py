"""ClipTextEncoder: open_clip's text tower alone, checkpoint formats, prompt averaging and the cache.

Most tests use a tiny open_clip config registered through open_clip's own ``add_model_config`` (text
width 64, 2 layers, CLIP's real 49408-token vocabulary and 77-token context), so the full CLIP model
it is compared against builds in milliseconds; one test builds the real ViT-B-32 text tower.
"""
import json
import socket
import warnings

import pytest
import torch
from torch.nn import functional as F

open_clip = pytest.importorskip("open_clip")

from segdep_d2.config import SEGDEP_PROMPT_TEMPLATES  # noqa: E402
from segdep_d2.modeling.text_encoder import ClipTextEncoder, text_tower_state_dict  # noqa: E402

TINY = "segdep-test-tiny-clip"
TINY_W32 = "segdep-test-tiny-clip-w32"
TEMPLATES = ["a photo of a {}.", "a {} in a street scene.", "there is a {} in the scene."]
NAMES = ["car", "pedestrian", "traffic light"]


def _tiny_cfg(width):
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 2},
    }


@pytest.fixture(scope="module", autouse=True)
def tiny_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, width in ((TINY, 64), (TINY_W32, 32)):
        (folder / f"{name}.json").write_text(json.dumps(_tiny_cfg(width)))
    open_clip.add_model_config(str(folder))
    assert TINY in open_clip.list_models()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _encoder(**kwargs):
    kwargs.setdefault("model_name", TINY)
    kwargs.setdefault("templates", TEMPLATES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-init warning has its own test
        return ClipTextEncoder(**kwargs)


def _count_forwards(enc):
    rows = []
    enc.text.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    return rows


def _full_clip(name=TINY, **kwargs):
    model = open_clip.create_model(name, pretrained=None, **kwargs)
    return model.eval()


def test_builds_only_the_text_tower():
    enc = _encoder()
    names = [n for n, _ in enc.named_parameters()]
    assert not any("visual" in n for n in names)
    assert all(n.startswith("text.") for n in names)
    assert enc.embed_dim == 32 and enc.context_length == 77
    full = _full_clip()
    text_params = sum(
        p.numel() for n, p in full.named_parameters() if not n.startswith("visual.") and n != "logit_scale"
    )
    assert sum(p.numel() for p in enc.parameters()) == text_params == 49408 * 64 + 77 * 64 + 64 * 32 + 2 * (
        4 * 64 * 64 + 4 * 64 + 2 * 4 * 64 * 64 + 4 * 64 + 64 + 4 * 64
    ) + 2 * 64


def test_encode_shape_norm_and_matches_the_tower():
    enc = _encoder()
    out = enc.encode(["a car", "the road", "a car"])
    assert out.shape == (3, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out[0], out[2])
    assert not torch.allclose(out[0], out[1])
    with torch.no_grad():
        ref = F.normalize(enc.text(enc.tokenizer(["a car", "the road"])), dim=-1)
    torch.testing.assert_close(out[:2], ref)
    assert enc.encode("a car").shape == (1, 32)
    assert enc.encode([]).shape == (0, 32)


def test_class_embeddings_average_templates_by_hand():
    enc = _encoder()
    got = enc.class_embeddings(NAMES)
    assert got.shape == (3, 32)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))
    for i, name in enumerate(NAMES):
        prompts = [t.format(name) for t in TEMPLATES]
        with torch.no_grad():
            per_prompt = F.normalize(enc.text(enc.tokenizer(prompts)), dim=-1)
        mean = per_prompt.mean(dim=0)
        torch.testing.assert_close(got[i], mean / mean.norm())
        # Averaging matters: the class embedding is none of its single prompts'.
        assert (per_prompt @ got[i]).max() < 1 - 1e-4
    assert enc.prompts("car") == ["a photo of a car.", "a car in a street scene.", "there is a car in the scene."]
    single = enc.class_embeddings(["car"], templates=["a photo of a {}."])
    torch.testing.assert_close(single[0], enc.encode(["a photo of a car."])[0])


def test_cache_repeated_names_cost_nothing():
    enc = _encoder()
    rows = _count_forwards(enc)
    first = enc.class_embeddings(NAMES)
    assert rows == [9]
    assert enc.cache_info() == {"hits": 0, "misses": 9, "bypassed": 0, "size": 9, "max_size": 4096, "hit_rate": 0.0}

    second = enc.class_embeddings(NAMES)
    assert rows == [9]  # no new forward
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    info = enc.cache_info()
    assert (info["hits"], info["misses"], info["size"], info["hit_rate"]) == (9, 9, 9, 0.5)

    # One new name: only its 3 prompts are encoded; duplicates within a call are encoded once.
    enc.class_embeddings(NAMES + ["bicycle", "bicycle"])
    assert rows == [9, 3]
    info = enc.cache_info()
    assert (info["hits"], info["misses"], info["size"]) == (18, 12, 12)
    assert info["hit_rate"] == pytest.approx(18 / 30)
    enc.reset_cache_stats()
    assert enc.cache_info()["hits"] == 0 and enc.cache_info()["size"] == 12


def test_cache_is_lru_bounded():
    enc = _encoder(cache_size=3)
    rows = _count_forwards(enc)
    a, b, c, d = ["a car", "a bus", "a road", "a tree"]
    enc.encode([a, b, c])
    enc.encode([a])  # refreshes a: b is now the least recently used
    enc.encode([d])  # evicts b
    assert enc.cache_info()["size"] == 3
    assert [key[-1] for key in enc._cache] == [c, a, d]
    assert rows == [3, 1]
    enc.encode([a, c, d])
    assert rows == [3, 1]  # all three still cached
    enc.encode([b])
    assert rows == [3, 1, 1]  # b was evicted
    info = enc.cache_info()
    assert (info["hits"], info["misses"], info["size"]) == (4, 5, 3)

    off = _encoder(cache_size=0)
    rows_off = _count_forwards(off)
    off.encode([a, a])
    off.encode([a])
    assert rows_off == [1, 1] and off.cache_info()["size"] == 0


def test_cache_keys_name_model_and_checkpoint(tmp_path):
    full = _full_clip()
    path = tmp_path / "tiny.bin"
    torch.save(full.state_dict(), path)
    enc = _encoder(weights=str(path))
    enc.encode(["a car"])
    ((model, weights_id, text),) = list(enc._cache)
    assert model == TINY and text == "a car"
    assert weights_id.startswith(str(path.resolve())) and weights_id != "random-init"


def test_frozen_by_default_and_cached_outputs_carry_no_graph():
    enc = _encoder()
    assert enc.freeze and not enc.trainable
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.text.training  # a frozen tower runs as at inference
    out = enc.encode(["a car"])
    assert not out.requires_grad and out.grad_fn is None
    assert all(not v.requires_grad for v in enc._cache.values())


def test_trainable_encoder_bypasses_the_cache_in_training():
    enc = _encoder(freeze=False).train()
    assert enc.trainable and enc.text.training
    rows = _count_forwards(enc)
    out = enc.encode(["a car", "a bus"])
    assert out.requires_grad
    out.sum().backward()
    assert enc.text.token_embedding.weight.grad is not None
    enc.encode(["a car"])
    assert rows == [2, 1]
    assert enc.cache_info()["bypassed"] == 3 and enc.cache_info()["size"] == 0

    # Eval mode caches; a training step changes the weights, and the next eval sees the new ones.
    enc.eval()
    before = enc.encode(["a car"])
    assert enc.cache_info()["size"] == 1 and not before.requires_grad
    enc.train()
    assert enc.cache_info()["size"] == 0  # entering training empties it
    opt = torch.optim.SGD(enc.parameters(), lr=1.0)
    enc.encode(["a car"]).sum().backward()
    opt.step()
    enc.eval()
    after = enc.encode(["a car"])
    with torch.no_grad():
        fresh = F.normalize(enc.text(enc.tokenizer(["a car"])), dim=-1)
    torch.testing.assert_close(after, fresh)
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_loads_a_full_clip_checkpoint(tmp_path, suffix):
    full = _full_clip()
    state = full.state_dict()
    assert any(k.startswith("visual.") for k in state) and "token_embedding.weight" in state
    path = tmp_path / f"open_clip_model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)

    enc = _encoder(weights=str(path))
    for key, value in enc.text.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    prompts = ["a photo of a car.", "a pedestrian in a street scene."]
    with torch.no_grad():
        ref = full.encode_text(open_clip.get_tokenizer(TINY)(prompts), normalize=True)
    torch.testing.assert_close(enc.encode(prompts), ref)
    assert abs(ref[0] @ ref[1]) < 0.999  # a real comparison, not two equal vectors


def test_loads_custom_text_and_text_only_formats(tmp_path):
    custom = _full_clip(force_custom_text=True)
    custom_state = custom.state_dict()
    assert "text.token_embedding.weight" in custom_state
    wrapped = tmp_path / "custom_text.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in custom_state.items()}}, wrapped)
    enc = _encoder(weights=str(wrapped))
    prompts = ["a car.", "a bus."]
    with torch.no_grad():
        ref = custom.encode_text(enc.tokenizer(prompts), normalize=True)
    torch.testing.assert_close(enc.encode(prompts), ref)

    text_only = {k[len("text."):]: v for k, v in custom_state.items() if k.startswith("text.")}
    mapped, unused, fmt = text_tower_state_dict(text_only)
    assert fmt == "text_only" and not unused and set(mapped) == set(enc.text.state_dict())
    path = tmp_path / "text_only.bin"
    torch.save(text_only, path)
    other = _encoder(weights=str(path))
    torch.testing.assert_close(other.encode(prompts), ref)

    _, unused, fmt = text_tower_state_dict(_full_clip().state_dict())
    assert fmt == "clip" and "logit_scale" in unused
    assert all(k.startswith("visual.") for k in unused if k != "logit_scale")


def test_mismatched_or_foreign_checkpoint_errors_name_the_file(tmp_path):
    narrow = tmp_path / "narrow_clip.bin"
    torch.save(_full_clip(TINY_W32).state_dict(), narrow)
    expected = (
        r"narrow_clip\.bin does not fit open_clip model 'segdep-test-tiny-clip'.*"
        r"29 shape mismatches \(positional_embedding: checkpoint \(77, 32\) vs model \(77, 64\)"
    )
    with pytest.raises(ValueError, match=expected):
        _encoder(weights=str(narrow))

    deeper = _full_clip().state_dict()
    deeper["transformer.resblocks.2.ln_1.weight"] = torch.ones(64)
    path = tmp_path / "deeper.bin"
    torch.save(deeper, path)
    with pytest.raises(ValueError, match=r"deeper\.bin does not fit.*unexpected transformer\.resblocks\.2\.ln_1"):
        _encoder(weights=str(path))

    foreign = tmp_path / "resnet.bin"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, foreign)
    with pytest.raises(ValueError, match=r"resnet\.bin has no text-tower keys"):
        _encoder(weights=str(foreign))
    with pytest.raises(FileNotFoundError, match="nowhere.bin"):
        _encoder(weights=str(tmp_path / "nowhere.bin"))
    with pytest.raises(ValueError, match="Unknown open_clip model config 'no-such-clip'"):
        _encoder(model_name="no-such-clip")


def test_random_init_warns():
    with pytest.warns(UserWarning, match="open-vocabulary generalisation needs real CLIP weights"):
        ClipTextEncoder(model_name=TINY)


def test_tokenizer_is_the_bundled_bpe_and_works_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tok = open_clip.get_tokenizer("ViT-B-32")
    assert isinstance(tok, open_clip.tokenizer.SimpleTokenizer)
    ids = tok(["a photo of a car."])
    assert ids.shape == (1, 77)
    # <start> a photo of a car . <end>, then padding: CLIP's real BPE ids.
    assert ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 1615, 269, 49407, 0]
    enc = _encoder()
    assert enc.encode(["a car"]).shape == (1, 32)


def test_load_state_dict_and_device_moves_invalidate_the_cache():
    enc = _encoder()
    donor = _encoder()
    stale = enc.encode(["a car"])
    assert enc.cache_info()["size"] == 1
    enc.load_state_dict(donor.state_dict())
    assert enc.cache_info()["size"] == 0
    torch.testing.assert_close(enc.encode(["a car"]), donor.encode(["a car"]))
    assert not torch.allclose(stale, donor.encode(["a car"]))
    enc.to(torch.float64)
    assert enc.cache_info()["size"] == 0


def test_from_config(tmp_path):
    from detectron2.config import get_cfg

    from segdep_d2 import add_segdep_config

    cfg = add_segdep_config(get_cfg())
    node = cfg.MODEL.SEGDEP
    assert (node.CLIP_MODEL, node.CLIP_WEIGHTS, node.FREEZE_TEXT_ENCODER, node.TEXT_CACHE_SIZE) == (
        "ViT-B-32", "", True, 4096
    )
    assert list(node.PROMPT_TEMPLATES) == list(SEGDEP_PROMPT_TEMPLATES)
    add_segdep_config(cfg)  # idempotent
    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    full = _full_clip()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    cfg.MODEL.SEGDEP.CLIP_MODEL = TINY
    cfg.MODEL.SEGDEP.CLIP_WEIGHTS = str(path)
    cfg.MODEL.SEGDEP.PROMPT_TEMPLATES = ["a photo of a {}."]
    cfg.MODEL.SEGDEP.TEXT_CACHE_SIZE = 16
    enc = ClipTextEncoder(cfg)
    assert enc.templates == ["a photo of a {}."] and enc.cache_size == 16 and not enc.trainable
    with torch.no_grad():
        ref = full.encode_text(enc.tokenizer(["a photo of a car."]), normalize=True)
    torch.testing.assert_close(enc.class_embeddings(["car"]), ref)


def test_default_vit_b_32_text_tower():
    enc = _encoder(model_name="ViT-B-32", templates=SEGDEP_PROMPT_TEMPLATES)
    assert enc.embed_dim == 512 and enc.context_length == 77
    assert sum(p.numel() for p in enc.parameters()) == 63_428_096  # CLIP ViT-B/32's text tower
    assert not any("visual" in n for n, _ in enc.named_parameters())
