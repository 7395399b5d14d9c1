"""SegDep's text-vision fusion and task heads (used by :class:`segdep_d2.modeling.meta_arch.SegDep`).

* :class:`TextVisionFusion`: multi-head cross-attention in which every pixel of the 1/4-resolution
  feature map (the queries) attends to the text embeddings of the current vocabulary (keys / values),
  then residual + LayerNorm, an MLP, residual + LayerNorm (a post-norm transformer decoder layer
  without self-attention). The text is a set of class embeddings, so it has no positions; the
  attention costs N x heads x (H/4 x W/4) x C, e.g. 8192 queries x 14 classes at 256 x 512.
* :class:`SegDepTaskHead`: 3x3 conv + norm + ReLU, then a 1x1 predictor (closed-set logits, depth).
* :class:`OpenVocabHead`: the same conv stack projecting fused pixels into the text space, L2-normalised,
  and CLIP's learned temperature: logits = exp(logit_scale) * cos(pixel, class prompt), logit_scale
  initialised to log(1 / 0.07) and capped at log(100) as CLIP does, so any list of names can be scored.
* :class:`ReferringHead`: one binary mask per free-form query ("the nearest car"), in two halves so that
  Q queries cost one light batched pass over features computed once per image (see its docstring).
"""
import math
from typing import Optional, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, get_norm
from torch import nn
from torch.nn import functional as F

__all__ = ["TextVisionFusionLayer", "TextVisionFusion", "SegDepTaskHead", "OpenVocabHead", "ReferringHead"]

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class TextVisionFusionLayer(nn.Module):
    """``x = LN(x + CrossAttn(x, text, text)); x = LN(x + MLP(x))`` on (N, L, dim) pixel tokens and
    (N, C, text_dim) text tokens (``kdim = vdim = text_dim``: the text is not projected beforehand)."""

    def __init__(self, dim: int, text_dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion width {dim} must be divisible by the number of heads {num_heads}")
        self.cross_attn = nn.MultiheadAttention(
            dim, num_heads, dropout=dropout, kdim=text_dim, vdim=text_dim, batch_first=True
        )
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        attended, _ = self.cross_attn(x, text, text, need_weights=False)
        x = self.norm1(x + attended)
        return self.norm2(x + self.mlp(x))


class TextVisionFusion(nn.Module):
    """``forward(features (N, dim, H, W), text (C, text_dim) or (N, C, text_dim)) -> (N, dim, H, W)``:
    ``num_layers`` :class:`TextVisionFusionLayer` blocks over the flattened pixels."""

    def __init__(self, dim: int, text_dim: int, num_heads: int = 8, num_layers: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"TextVisionFusion needs at least one layer, got {num_layers}")
        self.layers = nn.ModuleList(
            TextVisionFusionLayer(dim, text_dim, num_heads, mlp_ratio) for _ in range(num_layers)
        )

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        n, c, h, w = features.shape
        if text.dim() == 2:
            text = text.unsqueeze(0).expand(n, -1, -1)
        if text.shape[1] == 0:
            raise ValueError("TextVisionFusion needs at least one text embedding (an empty vocabulary)")
        x = features.flatten(2).transpose(1, 2)  # (N, HW, C): one query per pixel
        text = text.to(x.dtype)
        for layer in self.layers:
            x = layer(x, text)
        return x.transpose(1, 2).reshape(n, c, h, w)


def _conv_stack(in_channels: int, hidden: int, norm: Union[str, nn.Module]):
    conv = Conv2d(
        in_channels, hidden, kernel_size=3, padding=1, bias=not norm,
        norm=get_norm(norm, hidden), activation=nn.ReLU(inplace=True),
    )
    weight_init.c2_msra_fill(conv)
    return conv


class SegDepTaskHead(nn.Module):
    """3x3 conv (+ norm + ReLU) -> 1x1 ``predictor`` to ``out_channels``, at the input's resolution."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 0, norm: str = "BN"):
        super().__init__()
        hidden = hidden or in_channels
        self.conv = _conv_stack(in_channels, hidden, norm)
        self.predictor = nn.Conv2d(hidden, out_channels, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.01)
        nn.init.constant_(self.predictor.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.conv(x))


class OpenVocabHead(nn.Module):
    """Pixel embeddings in the text space and their scaled cosine similarity to class prompts.

    ``forward(fused) -> (N, embed_dim, H, W)`` L2-normalised pixel embeddings;
    ``logits(pixel_embeddings, text (C, D)) -> (N, C, H, W)`` = exp(logit_scale) * cosine.
    """

    def __init__(self, in_channels: int, embed_dim: int, hidden: int = 0, norm: str = "BN"):
        super().__init__()
        hidden = hidden or in_channels
        self.conv = _conv_stack(in_channels, hidden, norm)
        self.proj = nn.Conv2d(hidden, embed_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.proj)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.conv(fused)), dim=1)

    @property
    def temperature_scale(self) -> torch.Tensor:
        """exp(logit_scale), capped at 100 (CLIP clamps logit_scale to log 100)."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    def logits(self, pixel_embeddings: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        text = F.normalize(text.to(pixel_embeddings.dtype), dim=-1)
        cosine = torch.einsum("ndhw,cd->nchw", pixel_embeddings, text)
        return self.temperature_scale * cosine


class ReferringHead(nn.Module):
    """Binary masks for free-form referring queries ("the nearest car", "the van on the left").

    Two halves, so that an image's features are computed once and its Q queries cost one batched pass
    whose work is linear in Q with a small constant (no per-query fusion or conv over the feature map):

    * **pixels** (once per image, query-independent), :meth:`pixel_embeddings`: the fused features (the
      FPN pixels after :class:`TextVisionFusion` with the training vocabulary: class semantics aligned with
      the text space), the predicted depth (``log(depth / 10 m) / 2``, detached: metric cues for "nearest",
      "more than 30 metres away") and the pixel's normalised coordinates (x, y in [-1, 1] over the image
      without its padding: "on the left", "the second car from the right") -> 3x3 conv (+ norm + ReLU)
      -> 1x1 projection into the text space, L2-normalised: (N, D, h, w).
    * **queries** (all of an image's queries together), :meth:`forward`: each query's L2-normalised
      sentence embedding (D) is one token that attends to the image's pixel embeddings (multi-head
      cross-attention, padding masked out: it gathers which objects / depths / sides the image holds,
      e.g. where the nearest car is), then residual + LayerNorm, MLP + residual + LayerNorm: the query
      key k. Its mask logit at pixel p is ``exp(logit_scale) * cos(pixel(p), k) + b(k)``: CLIP's scaled
      cosine (``logit_scale`` initialised to log(1 / 0.07), capped at log 100) plus a per-query bias, a
      linear function of k initialised to the logit of ``prior`` (the usual sparse-foreground prior, so
      an untrained head predicts empty masks rather than half the image).

    Why the pixels do not attend to the query: with a single key (one sentence) softmax attention gives
    every pixel weight 1, i.e. the same vector everywhere, so "pixels attend to [query]" degenerates
    into adding a per-query constant, and it would have to be run, with its MLP and the head's conv,
    over every pixel once per query (Q full fusion passes). Attending the other way (query -> pixels)
    keeps the spatial selection in the attention and costs O(Q x h x w x D); the pixels' keys and
    values are projected once per image (:meth:`memory`), so repeated questions on cached features
    (``SegDep.answer``) pay for the query half only.
    """

    def __init__(
        self, in_channels: int, embed_dim: int, hidden: int = 0, norm: str = "BN", num_heads: int = 8,
        prior: float = 0.01,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"the referring head's query attention works in the text space (width {embed_dim}), which "
                f"must be divisible by its number of heads {num_heads} (MODEL.SEGDEP.REFERRING_HEADS)"
            )
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie in (0, 1), got {prior}")
        hidden = hidden or in_channels
        self.conv = _conv_stack(in_channels + 3, hidden, norm)  # + depth, x, y
        self.proj = nn.Conv2d(hidden, embed_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.proj)
        # query -> pixels multi-head cross-attention, written out so that the pixels' keys / values
        # (query-independent) are projected once per image (:meth:`memory`) and reused by every query
        self.num_heads = num_heads
        self.attn_query = nn.Linear(embed_dim, embed_dim)
        self.attn_key = nn.Linear(embed_dim, embed_dim)
        self.attn_value = nn.Linear(embed_dim, embed_dim)
        self.attn_out = nn.Linear(embed_dim, embed_dim)
        for layer in (self.attn_query, self.attn_key, self.attn_value, self.attn_out):
            nn.init.xavier_uniform_(layer.weight)  # as nn.MultiheadAttention's in_proj
            nn.init.zeros_(layer.bias)
        self.query_norm1 = nn.LayerNorm(embed_dim)
        self.query_mlp = nn.Sequential(
            nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(), nn.Linear(2 * embed_dim, embed_dim)
        )
        self.query_norm2 = nn.LayerNorm(embed_dim)
        self.query_bias = nn.Linear(embed_dim, 1)
        nn.init.zeros_(self.query_bias.weight)
        nn.init.constant_(self.query_bias.bias, math.log(prior / (1.0 - prior)))
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    @property
    def temperature_scale(self) -> torch.Tensor:
        """exp(logit_scale), capped at 100 (as :class:`OpenVocabHead`)."""
        return self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()

    @staticmethod
    def coordinates(extents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(N, 2, height, width) pixel-centre coordinates (x, y) in [-1, 1] over each image's own extent
        ``extents`` (N, 2) = (rows, columns) of the image without padding, in feature pixels (padding
        lies beyond 1)."""
        extents = extents.float()
        ys = (torch.arange(height, device=extents.device, dtype=torch.float32) + 0.5)[None] / extents[:, :1] * 2 - 1
        xs = (torch.arange(width, device=extents.device, dtype=torch.float32) + 0.5)[None] / extents[:, 1:] * 2 - 1
        n = extents.shape[0]
        return torch.stack([xs[:, None, :].expand(n, height, width), ys[:, :, None].expand(n, height, width)], dim=1)

    def pixel_embeddings(self, fused: torch.Tensor, depth: torch.Tensor, extents: torch.Tensor) -> torch.Tensor:
        """``fused`` (N, C, h, w), ``depth`` (N, 1, h, w) metres (detached here), ``extents`` (N, 2) (see
        :meth:`coordinates`) -> (N, D, h, w) L2-normalised pixel embeddings."""
        n, _, h, w = fused.shape
        log_depth = (torch.log(depth.detach().float().clamp(min=1e-3)) - math.log(10.0)) / 2.0
        extra = torch.cat([log_depth, self.coordinates(extents, h, w)], dim=1).to(fused.dtype)
        return F.normalize(self.proj(self.conv(torch.cat([fused, extra], dim=1))), dim=1)

    def memory(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pixel embeddings (N, D, h, w) -> the attention's keys and values (N, heads, h * w, D / heads):
        query-independent, computed once per image however many queries follow."""
        n, d = pixels.shape[:2]
        tokens = pixels.flatten(2).transpose(1, 2)  # (N, hw, D)

        def split(x):
            return x.view(n, -1, self.num_heads, d // self.num_heads).transpose(1, 2)

        return split(self.attn_key(tokens)), split(self.attn_value(tokens))

    def query_keys(
        self, memory: Tuple[torch.Tensor, torch.Tensor], text: torch.Tensor, valid: Optional[torch.Tensor] = None
    ):
        """One image's :meth:`memory` (heads, h * w, D / heads each), its Q query embeddings (Q, D) and
        optional ``valid`` (h, w) bool (False on padding) -> query keys (Q, D) and biases (Q,)."""
        keys_in, values = memory
        heads, _, head_dim = keys_in.shape
        queries = F.normalize(text.to(keys_in.dtype), dim=-1)  # (Q, D)
        q = self.attn_query(queries).view(-1, heads, head_dim).transpose(0, 1)  # (heads, Q, D / heads)
        mask = None if valid is None else valid.reshape(1, 1, -1)  # True: the pixel takes part
        attended = F.scaled_dot_product_attention(q, keys_in, values, attn_mask=mask)
        attended = self.attn_out(attended.transpose(0, 1).reshape(queries.shape))
        keys = self.query_norm1(queries + attended)
        keys = self.query_norm2(keys + self.query_mlp(keys))
        return keys, self.query_bias(keys)[:, 0]

    def forward(
        self, pixels: torch.Tensor, text: torch.Tensor, valid: Optional[torch.Tensor] = None,
        memory: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """One image's pixel embeddings (D, h, w) and Q query embeddings (Q, D) -> mask logits (Q, h, w);
        ``memory``: that image's :meth:`memory` when already computed."""
        if memory is None:
            keys_in, values = self.memory(pixels[None])
            memory = (keys_in[0], values[0])
        keys, bias = self.query_keys(memory, text, valid)
        cosine = torch.einsum("dhw,qd->qhw", pixels, F.normalize(keys, dim=-1))
        return self.temperature_scale * cosine + bias[:, None, None]
