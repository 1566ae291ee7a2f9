"""Small building blocks: RMSNorm, SwiGLU MLP, the causal short convolution, rotary embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import TokenLayout


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """w3(SiLU(w1 x) * w2 x), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class ShortConv(nn.Module):
    """Depthwise causal 1-D convolution (no bias). Its decode state is the last `kernel_size - 1` inputs.

    Weight `[channels, 1, kernel_size]` (nn.Conv1d layout); output t = sum_j weight[:, j] * x[t - (K-1) + j].
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))

    def forward(
        self, x: torch.Tensor, layout: TokenLayout, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C] (dense) or [1, total, C] (packed); state [N, K-1, C] or None (zeros: sequence start).
        Returns (y like x, new state [N, K-1, C])."""
        K = self.kernel_size
        n = layout.rows.numel() if layout.packed else x.shape[0]
        if state is None:
            state = x.new_zeros(n, K - 1, x.shape[-1])
        state = state.to(x.dtype)
        if not layout.packed:
            xx = torch.cat((state, x), 1)  # [B, K-1+T, C]
            y = F.conv1d(xx.transpose(1, 2), self.weight.to(x.dtype), groups=x.shape[-1]).transpose(1, 2)
            return y, xx[:, -(K - 1) :]
        # Packed: convolve the whole stream as one sequence, then redo the first K-1 outputs of each sequence,
        # which read the previous sequence's last tokens instead of their own state. One pass over the stream
        # plus work proportional to the number of sequences.
        xs, w = x[0], self.weight.to(x.dtype)
        y = F.conv1d(F.pad(xs.T[None], (K - 1, 0)), w, groups=xs.shape[-1])[0].T
        cu, lengths = layout.cu_seqlens, layout.lengths
        offs = torch.arange(K - 1, device=x.device)
        first = (cu[:-1, None] + offs).clamp(max=xs.shape[0] - 1)  # [N, K-1] each sequence's first K-1 tokens
        ctx = torch.cat((state, xs[first]), 1)  # [N, 2K-2, C]: own state, then own first tokens
        heads = F.conv1d(ctx.transpose(1, 2), w, groups=xs.shape[-1]).transpose(1, 2)  # [N, K-1, C]
        real = offs < lengths[:, None]
        y = y.index_put((first[real],), heads[real])
        # new state: the last K-1 entries of [state ; tokens] of each sequence
        ext = lengths[:, None] + offs  # index into [state ; tokens]
        from_tokens = xs[(cu[:-1, None] + ext - (K - 1)).clamp(min=0, max=xs.shape[0] - 1)]
        from_state = state.gather(1, ext.clamp(max=K - 2)[..., None].expand(-1, -1, xs.shape[-1]))
        return y[None], torch.where((ext >= K - 1)[..., None], from_tokens, from_state)


def rotary_cos_sin(
    positions: torch.Tensor, rot_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [*, T, rot_dim] for GPT-NeoX (rotate-half) RoPE. Angles in float64 so that positions of 128K
    tokens keep their phase exactly."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float64, device=positions.device) / rot_dim))
    angles = positions.double()[..., None] * inv_freq
    angles = torch.cat((angles, angles), -1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos/sin [B, T, rot_dim]; rotates the first rot_dim channels (rotate-half)."""
    rot = cos.shape[-1]
    xr, xp = x[..., :rot].float(), x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
    rotated = torch.cat((-x2, x1), -1)
    out = (xr * cos[:, :, None].float() + rotated * sin[:, :, None].float()).to(x.dtype)
    return torch.cat((out, xp), -1) if xp.numel() else out
