"""PyTorch reference: the reference model's `F.silu(w1 x) * w2 x` on the halves of the fused projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_ref(ab: torch.Tensor) -> torch.Tensor:
    a, b = ab.chunk(2, dim=-1)
    return F.silu(a) * b
