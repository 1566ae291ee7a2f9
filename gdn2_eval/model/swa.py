"""Sliding-window attention (the hybrid's attention blocks): RoPE, GQA, causal window of `local_window` keys.

Queries are processed in blocks; each block attends only to the keys inside its window, so cost and memory grow
linearly with the context and no T x T mask or score matrix is ever built. The cache keeps the last
`local_window - 1` keys and values of each row.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_gdn2 import GDN2Config
from .layout import TokenLayout
from .modules import apply_rotary, rotary_cos_sin

QUERY_BLOCK = 1024


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    past_k: torch.Tensor | None = None,
    past_v: torch.Tensor | None = None,
    past_fill: torch.Tensor | None = None,
    block: int = QUERY_BLOCK,
) -> torch.Tensor:
    """Causal attention where query i sees keys i - window + 1 .. i.

    q [N, T, Hq, d]; k, v [N, T, Hk, d]; past_k/v [N, P, Hk, d] hold earlier keys, right-aligned, of which the last
    ``past_fill[n]`` are real (None: all P). Returns [N, T, Hq, d].
    """
    N, T, Hq, d = q.shape
    P = 0 if past_k is None else past_k.shape[1]
    kk = k if P == 0 else torch.cat((past_k, k), 1)
    vv = v if P == 0 else torch.cat((past_v, v), 1)
    qt, kt, vt = q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2)
    out = torch.empty_like(qt)
    dev = q.device
    first_real = None if past_fill is None or P == 0 else (P - past_fill.clamp(max=P))  # [N]
    for i0 in range(0, T, block):
        i1 = min(T, i0 + block)
        e0, e1 = max(0, i0 + P - window + 1), i1 + P
        qpos = torch.arange(i0 + P, i1 + P, device=dev)[:, None]
        kpos = torch.arange(e0, e1, device=dev)[None, :]
        mask = ((kpos <= qpos) & (kpos > qpos - window))[None, None]
        if first_real is not None:
            mask = mask & (kpos[None] >= first_real[:, None, None])[:, None]
        out[:, :, i0:i1] = F.scaled_dot_product_attention(
            qt[:, :, i0:i1], kt[:, :, e0:e1], vt[:, :, e0:e1], attn_mask=mask, enable_gqa=Hq != kt.shape[1]
        )
    return out.transpose(1, 2)


class SlidingWindowAttention(nn.Module):
    def __init__(self, config: GDN2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = hd = config.attn_head_dim
        self.window = config.local_window
        self.rot_dim = int(hd * config.rotary_percentage) // 2 * 2
        D = config.hidden_size
        self.q_proj = nn.Linear(D, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(D, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(D, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, D, bias=False)

    def forward(
        self, x: torch.Tensor, layout: TokenLayout, cache: dict[str, Any] | None, past_lens: torch.Tensor | None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        if self.rot_dim:
            cos, sin = rotary_cos_sin(layout.positions, self.rot_dim, self.config.rope_theta)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past_k = cache.get("k") if cache is not None else None
        past_v = cache.get("v") if cache is not None else None
        keep = self.window - 1  # keys a future query can still see
        if not layout.packed:
            o = window_attention(q, k, v, self.window, past_k, past_v, past_lens)
            if cache is not None:
                kk = k if past_k is None else torch.cat((past_k, k), 1)
                vv = v if past_v is None else torch.cat((past_v, v), 1)
                start = kk.shape[1] - min(keep, kk.shape[1])
                cache["k"], cache["v"] = kk[:, start:], vv[:, start:]
            return self.o_proj(o.reshape(B, T, -1))
        return self.o_proj(self._packed(q, k, v, layout, cache, past_k, past_v, past_lens, keep).reshape(B, T, -1))

    def _packed(self, q, k, v, layout, cache, past_k, past_v, past_lens, keep):
        """One sequence at a time, each with its own past window."""
        P = 0 if past_k is None else past_k.shape[1]
        fill = torch.zeros(layout.batch, dtype=torch.long) if past_lens is None else past_lens.cpu().clamp(max=P)
        bounds = layout.cu_seqlens.tolist()
        rows = layout.rows.tolist()
        out = torch.empty_like(q)
        windows = {}
        for i, row in enumerate(rows):
            s, e = bounds[i], bounds[i + 1]
            f = int(fill[row])
            pk = past_k[row : row + 1, P - f :] if f else None
            pv = past_v[row : row + 1, P - f :] if f else None
            out[:, s:e] = window_attention(q[:, s:e], k[:, s:e], v[:, s:e], self.window, pk, pv)
            if cache is not None:
                kk = k[:, s:e] if pk is None else torch.cat((pk, k[:, s:e]), 1)
                vv = v[:, s:e] if pv is None else torch.cat((pv, v[:, s:e]), 1)
                n = min(keep, kk.shape[1])
                windows[row] = (kk[0, kk.shape[1] - n :], vv[0, vv.shape[1] - n :])
        if cache is not None:
            new_fill = fill.clone()
            for row, (wk, _) in windows.items():
                new_fill[row] = wk.shape[0]
            P_new = int(new_fill.max())
            buf_k = k.new_zeros(layout.batch, P_new, *k.shape[2:])
            buf_v = torch.zeros_like(buf_k)
            if P:
                buf_k[:, P_new - P :], buf_v[:, P_new - P :] = past_k, past_v
            for row, (wk, wv) in windows.items():
                n = wk.shape[0]
                buf_k[row, P_new - n :], buf_v[row, P_new - n :] = wk, wv
            cache["k"], cache["v"] = buf_k, buf_v
        return out
