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
"""
import math
from typing import Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, get_norm
from torch import nn
from torch.nn import functional as F

__all__ = ["TextVisionFusionLayer", "TextVisionFusion", "SegDepTaskHead", "OpenVocabHead"]

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
