"""PyTorch reference of the fused short convolution: what `short_conv.py` must compute.

`x` [T, C] holds the packed tokens of N sequences (`cu_seqlens`) on the concatenated q/k/v channels; `weight`
[C, KS]; `state` [rows, KS-1, C] the last KS-1 inputs of each cache row (oldest first), `state_rows` [N] the cache row
of each sequence. Output t of a sequence is SiLU(sum_j weight[:, j] * ctx[t + j]) over ctx = [state ; tokens].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def short_conv_varlen_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state: torch.Tensor | None,
    state_rows: torch.Tensor | None,
    splits: tuple[int, ...],
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Returns (outputs split along channels by `splits`, each [T, c] contiguous; new state [N, KS-1, C])."""
    KS, C = weight.shape[1], x.shape[1]
    bounds = cu_seqlens.tolist()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    new_state = x.new_zeros(len(bounds) - 1, KS - 1, C)
    w = weight.float().T  # [KS, C]
    for n, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        prev = x.new_zeros(KS - 1, C) if state is None else state[int(state_rows[n])].to(x.dtype)
        ctx = torch.cat((prev, x[bos:eos]), 0).float()  # [KS-1+L, C]
        out = sum(ctx[j : j + eos - bos] * w[j] for j in range(KS))
        y[bos:eos] = F.silu(out).to(x.dtype)
        new_state[n] = ctx[-(KS - 1) :].to(x.dtype)
    return tuple(part.contiguous() for part in y.split(list(splits), 1)), new_state


def short_conv_step_ref(
    x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, splits: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """One token per row: x [B, C], state [B, KS-1, C] updated in place. Returns the outputs split by `splits`."""
    ctx = torch.cat((state.to(x.dtype), x[:, None]), 1)  # [B, KS, C]
    y = F.silu((ctx.float() * weight.float().T[None]).sum(1)).to(x.dtype)
    state.copy_(ctx[:, 1:])
    return tuple(part.contiguous() for part in y.split(list(splits), 1))
