"""PyTorch reference of the fused gates: what the reference mixer's `gates()` computes, from the fused
projection's columns.

Gate kinds (`GDN2Config.gates`): "gdn2" (decoupled erase b on the key axis and write w on the value axis, channel-wise
decay), "kda" (one beta per head for both, channel-wise decay), "gdn" (one beta per head, one decay per head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GateLayout:
    """Which columns of the fused projection output `P` hold which gate's pre-activations."""

    kind: str  # "gdn2" | "kda" | "gdn"
    H: int  # key heads
    HV: int  # value heads
    K: int
    V: int
    off_b: int  # gdn2: erase logits [H*K]; kda/gdn: beta logits [H]
    off_w: int  # gdn2: write logits [HV*V]; unused otherwise
    off_a: int  # gdn: decay logits [H]; unused otherwise
    neg_eigval: bool = False  # erase gate times 2
    ablation: str = "none"  # "none" | "scalar_erase" | "scalar_write" (Table 5)


def _scalarise(x: torch.Tensor, heads: int) -> torch.Tensor:
    s = x.unflatten(-1, (heads, -1))
    return s.float().mean(-1, keepdim=True).expand_as(s).to(x.dtype).flatten(-2)


def gdn2_gates_ref(
    P: torch.Tensor, f: torch.Tensor | None, A_log: torch.Tensor, dt_bias: torch.Tensor, lay: GateLayout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P [T, *] the fused projection output; f [T, H*K] the decay branch's output (None for "gdn").
    Returns (g float32 [T, H*K], b [T, H*K], w [T, HV*V]) in P's dtype for b and w."""
    H, K, V = lay.H, lay.K, lay.V
    if lay.kind == "gdn":
        a = A_log.float().exp()
        pre = P[:, lay.off_a : lay.off_a + H].float() + dt_bias.float()
        g = (-a * F.softplus(pre)).repeat_interleave(K, -1)
    else:
        a = A_log.float().exp().repeat_interleave(K)
        g = -a * F.softplus(f.float() + dt_bias.float())
    if lay.kind != "gdn2":
        beta = torch.sigmoid(P[:, lay.off_b : lay.off_b + H])
        return g, beta.repeat_interleave(K, -1), beta.repeat_interleave(V, -1)
    b = torch.sigmoid(P[:, lay.off_b : lay.off_b + H * K])
    if lay.neg_eigval:
        b = b * 2
    w = torch.sigmoid(P[:, lay.off_w : lay.off_w + lay.HV * V])
    if lay.ablation == "scalar_erase":
        b = _scalarise(b, H)
    elif lay.ablation == "scalar_write":
        w = _scalarise(w, lay.HV)
    return g, b.contiguous(), w.contiguous()
