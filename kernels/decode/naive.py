"""PyTorch reference of the fused decode step: the short conv step, the gates, one recurrence step and the gated
output norm, each the reference operator the unfused step runs."""

from __future__ import annotations

import torch

from ..conv.naive import short_conv_step_ref
from ..gates.naive import GateLayout, gdn2_gates_ref
from ..gdn2.torch_impl import recurrent_gdn2_torch
from ..norm.naive import gated_rms_norm_ref


def decode_step_ref(
    P: torch.Tensor, f: torch.Tensor | None, u: torch.Tensor, conv_w: torch.Tensor, conv_state: torch.Tensor,
    state: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, norm_w: torch.Tensor, lay: GateLayout,
    eps: float, act: str, scale: float, use_qk_l2norm: bool,
) -> torch.Tensor:
    """One token per cache row. P [B, *]: the fused input projection (q|k|v pre-conv channels first, the gates'
    logits at `lay`'s offsets); f [B, H*K] the decay branch's output (None for "gdn"); u [B, HV*V] the output gate's
    pre-activation. conv_state [B, KS-1, C] and state [B, HV, K, V] (float32) are updated in place.
    Returns the gated, normalised recurrence output [B, HV*V] in P's dtype (what the output projection reads)."""
    H, HV, K, V = lay.H, lay.HV, lay.K, lay.V
    B = P.shape[0]
    q, k, v = short_conv_step_ref(P[:, : 2 * H * K + HV * V], conv_w, conv_state, (H * K, H * K, HV * V))
    g, b, w = gdn2_gates_ref(P, f, A_log, dt_bias, lay)
    q, k, g, b = (t.view(B, 1, H, K) for t in (q, k, g, b))
    v, w = v.view(B, 1, HV, V), w.view(B, 1, HV, V)
    if HV > H:
        q, k, g, b = (t.repeat_interleave(HV // H, dim=2) for t in (q, k, g, b))
    o, final = recurrent_gdn2_torch(q, k, v, g, b, w, scale=scale, initial_state=state, output_final_state=True,
                                    use_qk_l2norm=use_qk_l2norm)
    state.copy_(final)
    return gated_rms_norm_ref(o.reshape(B, HV, V), u, norm_w, eps, act)
