"""Temporal refinement for SegDep (motion estimation + refinement): the previous frame's FPN features are
warped onto the current frame by a flow a light motion head estimates, and fused with a learned gate.

* :func:`warp`: backward warping with ``F.grid_sample`` (bilinear, ``align_corners=False``): output pixel
  ``p`` reads the input at ``p + flow(p)``, flow in pixels of the input's resolution (x then y), zeros
  outside, plus a validity mask (1 where the sample point lies inside the input, i.e. every bilinear tap
  it needs is a real pixel).
* :class:`MotionHead`: ``concat(prev, cur, cur - prev)`` -> 1x1 reduction, a stride-2 3x3 conv and two
  dilated 3x3 convs (so the flow can reach tens of 1/4-resolution pixels), a 3x3 predictor of 2 channels,
  upsampled back and scaled to pixels of the input's resolution. The predictor starts near zero (std
  1e-3, bias 0): an untrained head warps (almost) by the identity.
* :class:`TemporalFusion`: ``gate = sigmoid(conv(concat(cur, warped_prev, |cur - warped_prev|))) * valid``
  (one gate per pixel), ``fused = cur + gate * (warped_prev - cur)``. The gate's last bias starts at
  ``gate_bias`` (-4: gate ~0.018), so an untrained module is close to the plain path.
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["warp", "MotionHead", "TemporalFusion"]


def warp(x: torch.Tensor, flow: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backward-warp ``x`` (N, C, H, W) by ``flow`` (N, 2, H, W): ``out[p] = x[p + flow[p]]`` (bilinear).

    ``flow[:, 0]`` is the horizontal displacement, ``flow[:, 1]`` the vertical one, in pixels of ``x``
    (pixel ``j`` has its centre at ``j``; ``align_corners=False`` normalisation). Sample points outside the
    image read zeros. Returns ``(warped, valid)``, ``valid`` (N, 1, H, W) in ``x``'s dtype: 1 where the
    sample point is inside ``[0, W - 1] x [0, H - 1]`` (all its taps are pixels of ``x``), else 0.
    """
    if flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[0] != x.shape[0] or flow.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"warp: flow {tuple(flow.shape)} must be (N, 2, H, W) for x {tuple(x.shape)}")
    n, _, h, w = x.shape
    flow = flow.to(x.dtype)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    sx = xs + flow[:, 0]
    sy = ys + flow[:, 1]
    # pixel coordinate -> [-1, 1] for align_corners=False (pixel j spans [j - 0.5, j + 0.5])
    grid = torch.stack(((2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1), dim=-1)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = ((sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)).to(x.dtype)[:, None]
    return warped, valid


class MotionHead(nn.Module):
    """``forward(prev (N, C, H, W), cur (N, C, H, W)) -> flow (N, 2, H, W)``: for each pixel of ``cur``,
    the displacement (pixels of this resolution) to the same point in ``prev`` (what :func:`warp` takes to
    bring ``prev`` onto ``cur``)."""

    def __init__(self, in_channels: int, hidden: int = 64):
        super().__init__()
        self.reduce = nn.Conv2d(3 * in_channels, hidden, 1)
        self.down = nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)
        self.context1 = nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2)
        self.context2 = nn.Conv2d(hidden, hidden, 3, padding=4, dilation=4)
        self.predictor = nn.Conv2d(hidden, 2, 3, padding=1)
        for m in (self.reduce, self.down, self.context1, self.context2):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, 0, 1e-3)  # near-zero flow at init (still trainable)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.reduce(torch.cat((prev, cur, cur - prev), dim=1)))
        x = F.relu(self.down(x))
        x = F.relu(self.context1(x))
        x = F.relu(self.context2(x))
        flow = self.predictor(x)  # pixels of the half resolution
        size = cur.shape[-2:]
        scale = torch.tensor([size[1] / flow.shape[-1], size[0] / flow.shape[-2]], device=flow.device, dtype=flow.dtype)
        flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
        return flow * scale.view(1, 2, 1, 1)


class TemporalFusion(nn.Module):
    """``forward(cur, warped_prev, valid) -> (fused, gate)``: ``fused = cur + gate * (warped_prev - cur)``
    with ``gate = sigmoid(conv(concat(cur, warped_prev, |cur - warped_prev|))) * valid`` (N, 1, H, W)."""

    def __init__(self, in_channels: int, hidden: int = 64, gate_bias: float = -4.0):
        super().__init__()
        self.conv = nn.Conv2d(3 * in_channels, hidden, 3, padding=1)
        self.gate = nn.Conv2d(hidden, 1, 1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)
        nn.init.normal_(self.gate.weight, 0, 1e-3)
        nn.init.constant_(self.gate.bias, gate_bias)  # sigmoid(-4) ~ 0.018: ~ the plain path at init

    def forward(self, cur: torch.Tensor, warped_prev: torch.Tensor, valid: torch.Tensor):
        x = F.relu(self.conv(torch.cat((cur, warped_prev, (cur - warped_prev).abs()), dim=1)))
        gate = torch.sigmoid(self.gate(x)) * valid.to(cur.dtype)
        return cur + gate * (warped_prev - cur), gate
