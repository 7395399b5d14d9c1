"""SegDep's text encoder: open_clip's CLIP text tower alone, class prompts and a per-prompt cache.

Only the text tower is built (open_clip's ``_build_text_tower`` from the model's open_clip config), so
no vision weights are allocated. Weights come from a local open_clip checkpoint in any of the formats
open_clip writes: a full ``CLIP`` state dict (``token_embedding.weight``, ``transformer.resblocks.*``,
``ln_final.*``, ``text_projection``, ... next to ``visual.*``), a ``CustomTextCLIP`` one (``text.*``)
or text-tower-only keys, as ``.bin`` / ``.pt`` / ``.pth`` (optionally under ``state_dict``) or
``.safetensors`` (read by open_clip's own ``load_state_dict``). The tokenizer is open_clip's bundled
BPE ``SimpleTokenizer``: nothing is downloaded.

Caching. Text embeddings are cached per unique prompt in an LRU keyed by
``(model name, checkpoint identity, prompt)``, so repeated class names cost nothing. A cached
embedding is only valid while the weights do not change, hence:

* the cache is used when the tower is frozen (no parameter requires grad), or in eval mode;
* a trainable tower in training mode bypasses it (outputs carry gradients) and empties it, since
  its weights are about to change; entering training mode with a trainable tower also empties it;
* loading weights (``load_weights`` or any ``load_state_dict`` reaching this module, e.g.
  detectron2's checkpointer) and moving / casting the module (``.to``, ``.half``) empty it.

Cached embeddings are computed under ``no_grad`` (no autograd graph is kept) and returned on the
module's current device.
"""
import logging
import os
import warnings
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.utils.file_io import PathManager
from torch import nn
from torch.nn import functional as F

from ..config import SEGDEP_PROMPT_TEMPLATES

__all__ = ["ClipTextEncoder", "text_tower_state_dict"]

logger = logging.getLogger(__name__)

# First key component of a TextTransformer's (= open_clip CLIP's top-level text) parameters.
_TEXT_TOWER_ROOTS = frozenset(
    {"token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "cls_emb"}
)
_RANDOM_INIT_WARNING = (
    "ClipTextEncoder ({model}): no CLIP checkpoint given (MODEL.SEGDEP.CLIP_WEIGHTS is empty), the text "
    "tower is randomly initialised: open-vocabulary generalisation needs real CLIP weights (random "
    "class embeddings only act as fixed codes for the classes seen in training)."
)
# Prompts per forward when filling the cache (bounds activation memory for long class lists).
_ENCODE_BATCH = 256


def text_tower_state_dict(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """Map an open_clip checkpoint's keys to ``TextTransformer``'s.

    Returns ``(text_state_dict, unused_keys, format)`` with format ``"custom_text"`` (``text.*`` keys:
    ``CustomTextCLIP``, CoCa, or this module's own state dict), ``"clip"`` (a full ``CLIP``: text keys at
    the top level next to ``visual.*``) or ``"text_only"``.
    """
    if any(k.startswith("text.") for k in state_dict):
        text = {k[len("text."):]: v for k, v in state_dict.items() if k.startswith("text.")}
        unused = [k for k in state_dict if not k.startswith("text.")]
        return text, unused, "custom_text"
    text = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] in _TEXT_TOWER_ROOTS}
    unused = [k for k in state_dict if k not in text]
    fmt = "clip" if any(k.startswith("visual.") for k in state_dict) else "text_only"
    return text, unused, fmt


def _summarise(keys: Sequence[str], limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


class ClipTextEncoder(nn.Module):
    """open_clip's CLIP text tower (no image tower) with prompt templates and a per-prompt LRU cache.

    ``encode(texts)`` -> (N, D) L2-normalised embeddings; ``class_embeddings(names)`` -> (C, D): each name
    through every template, the normalised prompt embeddings averaged and re-normalised (CLIP's
    zero-shot classifier recipe). ``cache_info()`` reports hits / misses / size / hit_rate.
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str = "ViT-B-32",
        weights: str = "",
        freeze: bool = True,
        templates: Sequence[str] = SEGDEP_PROMPT_TEMPLATES,
        cache_size: int = 4096,
    ):
        """
        Args:
            model_name: an open_clip model config name (``open_clip.list_models()``) or
                ``local-dir:/path`` holding an ``open_clip_config.json``. Its text config must use
                open_clip's bundled BPE tokenizer (no HuggingFace text tower / tokenizer).
            weights: local open_clip checkpoint (full-model, ``text.*`` or text-only keys); "" = random
                init, with a warning.
            freeze: no gradients into the tower (the usual choice: keeps CLIP's text space intact).
            templates: prompt templates, each with one ``{}`` for the class name.
            cache_size: most prompts kept in the LRU cache; 0 disables caching.
        """
        super().__init__()
        import open_clip  # lazy: keeps ``import segdep_d2`` from paying for open_clip's import
        from open_clip.model import _build_text_tower
        from open_clip.tokenizer import SimpleTokenizer

        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ValueError(
                f"Unknown open_clip model config '{model_name}' (MODEL.SEGDEP.CLIP_MODEL); see "
                "open_clip.list_models(), e.g. 'ViT-B-32', 'ViT-B-16', 'RN50'."
            )
        text_cfg = dict(model_cfg["text_cfg"])
        if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name") or "siglip" in model_name.lower():
            raise ValueError(
                f"open_clip model '{model_name}' uses a HuggingFace text tower / tokenizer, which cannot be "
                "built offline; use a CLIP config with open_clip's bundled BPE tokenizer (e.g. 'ViT-B-32')."
            )
        templates = list(templates)
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"Prompt templates must be non-empty, each with a '{{}}' slot; got {templates}")

        self.model_name = model_name
        self.templates = templates
        self.cache_size = int(cache_size)
        self.freeze = bool(freeze)
        # Same activation / dtype choices as open_clip's CLIP(...) for this config (fp32 parameters).
        self.text = _build_text_tower(model_cfg["embed_dim"], text_cfg, model_cfg.get("quick_gelu", False))
        self.tokenizer = open_clip.get_tokenizer(model_name)
        assert isinstance(self.tokenizer, SimpleTokenizer), type(self.tokenizer)
        assert not any(n.startswith("visual") for n, _ in self.named_parameters())
        self._describe = (
            f"text width {text_cfg.get('width')}, {text_cfg.get('layers')} layers, context "
            f"{self.text.context_length}, embed_dim {self.embed_dim}"
        )

        self._cache: "OrderedDict[Tuple[str, str, str], torch.Tensor]" = OrderedDict()
        self._hits = self._misses = self._bypassed = 0
        self._weights_id = "random-init"
        self._loads = 0
        # Any load_state_dict reaching this module (detectron2's checkpointer included) changes weights.
        self.register_load_state_dict_post_hook(ClipTextEncoder._after_state_dict_load)

        if weights:
            self.load_weights(weights)
        else:
            logger.warning(_RANDOM_INIT_WARNING.format(model=model_name))
            # stacklevel 3: the caller of detectron2's @configurable wrapper
            warnings.warn(_RANDOM_INIT_WARNING.format(model=model_name), UserWarning, stacklevel=3)
        if self.freeze:
            for p in self.text.parameters():
                p.requires_grad_(False)
            self.text.eval()

    @classmethod
    def from_config(cls, cfg):
        node = cfg.MODEL.SEGDEP
        return {
            "model_name": node.CLIP_MODEL,
            "weights": node.CLIP_WEIGHTS,
            "freeze": node.FREEZE_TEXT_ENCODER,
            "templates": list(node.PROMPT_TEMPLATES),
            "cache_size": node.TEXT_CACHE_SIZE,
        }

    # ---- properties ----
    @property
    def embed_dim(self) -> int:
        """Width of the joint CLIP space (the text projection's output; the tower width without one)."""
        return self.text.output_dim if self.text.text_projection is not None else self.text.width

    @property
    def context_length(self) -> int:
        return self.text.context_length

    @property
    def device(self) -> torch.device:
        return self.text.token_embedding.weight.device

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.text.parameters())

    # ---- weights ----
    def load_weights(self, path: str) -> Dict[str, List[str]]:
        """Load the text tower from a local open_clip checkpoint; returns ``{"loaded", "unused"}`` keys.

        Raises ``ValueError`` naming the file when it does not fit the configured model (missing,
        extra or differently shaped text-tower tensors, e.g. another width or depth).
        """
        from open_clip.factory import load_state_dict

        local = PathManager.get_local_path(path)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"CLIP checkpoint not found: {path} (MODEL.SEGDEP.CLIP_WEIGHTS)")
        try:
            # open_clip's reader: .safetensors, torch.load (weights_only) with a 'state_dict' wrapper,
            # 'module.' prefixes stripped.
            state_dict = load_state_dict(local, device="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"Could not read CLIP checkpoint {path}: {e}") from e
        if not isinstance(state_dict, dict):
            raise ValueError(f"CLIP checkpoint {path} holds a {type(state_dict).__name__}, not a state dict")
        text_sd, unused, fmt = text_tower_state_dict(state_dict)
        if not text_sd:
            raise ValueError(
                f"CLIP checkpoint {path} has no text-tower keys (expected open_clip keys such as "
                f"token_embedding.weight / transformer.resblocks.* or text.*); its keys: {_summarise(state_dict)}"
            )
        own = self.text.state_dict()
        missing = [k for k in own if k not in text_sd]
        unexpected = [k for k in text_sd if k not in own]
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in text_sd.items()
            if k in own and v.shape != own[k].shape
        ]
        if missing or unexpected or mismatched:
            problems = []
            if mismatched:
                problems.append(f"{len(mismatched)} shape mismatches ({_summarise(mismatched, 3)})")
            if missing:
                problems.append(f"missing {_summarise(missing)}")
            if unexpected:
                problems.append(f"unexpected {_summarise(unexpected)}")
            raise ValueError(
                f"CLIP checkpoint {path} does not fit open_clip model '{self.model_name}' ({self._describe}): "
                + "; ".join(problems)
                + ". Set MODEL.SEGDEP.CLIP_MODEL to the config the checkpoint was trained with."
            )
        # Every key and shape was checked above (attn_mask is a non-persistent buffer, not in either).
        self.text.load_state_dict(text_sd, strict=True)
        stat = os.stat(local)
        self._weights_id = f"{os.path.abspath(local)}|{stat.st_size}|{stat.st_mtime_ns}"
        self.clear_cache()
        visual = sum(k.startswith("visual.") for k in unused)
        logger.info(
            f"ClipTextEncoder ({self.model_name}): loaded {len(text_sd)} text-tower tensors from {path} "
            f"({fmt} format); unused: {visual} visual.* keys"
            + (f" + {_summarise([k for k in unused if not k.startswith('visual.')])}" if len(unused) > visual else "")
            + "; missing: none."
        )
        return {"loaded": sorted(text_sd), "unused": unused}

    @staticmethod
    def _after_state_dict_load(module, incompatible_keys):
        module._loads += 1
        module._weights_id = f"state_dict#{module._loads}"
        module.clear_cache()

    # ---- module state changes that invalidate the cache ----
    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.text.eval()  # a frozen tower always runs as at inference
        if mode and self.trainable:
            self.clear_cache()  # weights will change from here on
        return self

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()  # .to(device) / .half(): cached tensors would be on the old device / dtype
        return super()._apply(fn, *args, **kwargs)

    # ---- encoding ----
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def _forward_text(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = [self.text(self.tokenize(texts[i:i + _ENCODE_BATCH])) for i in range(0, len(texts), _ENCODE_BATCH)]
        return F.normalize(torch.cat(chunks).float(), dim=-1)

    def _cache_key(self, text: str) -> Tuple[str, str, str]:
        return (self.model_name, self._weights_id, text)

    def encode(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """(N, D) L2-normalised CLIP text embeddings, one per text, on the module's device.

        With the cache in use (frozen tower, or eval mode) each unique prompt is encoded once and
        the result carries no gradient; a trainable tower in training mode encodes everything anew,
        with gradients.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        if self.training and self.trainable:
            self._bypassed += len(texts)
            self.clear_cache()
            return self._forward_text(texts)

        found: Dict[str, torch.Tensor] = {}
        missing: List[str] = []
        for text in dict.fromkeys(texts):  # unique prompts, first-seen order
            emb = self._cache.get(self._cache_key(text))
            if emb is None:
                missing.append(text)
            else:
                self._cache.move_to_end(self._cache_key(text))
                found[text] = emb
        self._hits += len(found)
        self._misses += len(missing)
        if missing:
            with torch.no_grad():
                new = self._forward_text(missing)
            for text, emb in zip(missing, new):
                emb = emb.clone()  # own storage: a cached row must not pin the whole batch
                found[text] = emb
                if self.cache_size > 0:
                    self._cache[self._cache_key(text)] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)  # least recently used first
        device = self.device
        return torch.stack([found[t] for t in texts]).to(device)

    def prompts(self, name: str, templates: Optional[Sequence[str]] = None) -> List[str]:
        return [t.format(name) for t in (self.templates if templates is None else templates)]

    def class_embeddings(self, names: Sequence[str], templates: Optional[Sequence[str]] = None) -> torch.Tensor:
        """(C, D): per name, the normalised embeddings of its prompts averaged, then re-normalised."""
        names = list(names)
        templates = self.templates if templates is None else list(templates)
        if not names:
            return torch.zeros(0, self.embed_dim, device=self.device)
        emb = self.encode([p for n in names for p in self.prompts(n, templates)])
        return F.normalize(emb.view(len(names), len(templates), -1).mean(dim=1), dim=-1)

    # ---- cache ----
    def cache_info(self) -> Dict[str, float]:
        """Lookup statistics since construction / ``reset_cache_stats``: counts are per unique prompt
        per ``encode`` call; ``bypassed`` counts prompts encoded with gradients (trainable, training)."""
        looked_up = self._hits + self._misses
        return {
            "hits": self._hits,
            "misses": self._misses,
            "bypassed": self._bypassed,
            "size": len(self._cache),
            "max_size": self.cache_size,
            "hit_rate": self._hits / looked_up if looked_up else 0.0,
        }

    def reset_cache_stats(self):
        self._hits = self._misses = self._bypassed = 0

    def clear_cache(self):
        # _apply runs inside nn.Module.__init__ paths before the cache exists.
        cache = self.__dict__.get("_cache")
        if cache is not None:
            cache.clear()

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name}, weights={self._weights_id}, frozen={self.freeze}, "
            f"templates={len(self.templates)}, cache_size={self.cache_size}"
        )
