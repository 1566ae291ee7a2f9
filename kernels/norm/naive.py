"""PyTorch references of the fused norms, with the reference model's rounding (sums in the activations' dtype,
norms in float32, one cast at the end)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ACT = {"silu": F.silu, "sigmoid": torch.sigmoid}


def add_rms_norm_ref(
    x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, RMSNorm(s) * weight) with s = x + y (or x): the residual stream and the next sublayer's input."""
    s = x if y is None else x + y
    sf = s.float()
    return s, (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def gated_rms_norm_ref(
    o: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, eps: float, act: str
) -> torch.Tensor:
    """o [T, H, V], u [T, H*V]: RMSNorm over each head's V channels, times weight, times act(u); in o's dtype."""
    of = o.float()
    y = of * torch.rsqrt(of.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return (y * _ACT[act](u.float()).view_as(y)).to(o.dtype).flatten(1)
