"""The GDN-2 token mixer (spec section 3): projections, short convolutions, decoupled erase/write gates,
channel-wise decay, the recurrence (through the kernel dispatch) and the gated output norm.

With `config.gates` = "kda" or "gdn" the same mixer is KDA or Gated DeltaNet: the erase and write gates are tied to
one scalar strength beta per head (and for "gdn" the decay is one scalar per head), each with its own projections,
as the spec's section 1 describes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import gdn2_recurrence
from .configuration_gdn2 import GDN2Config
from .layout import TokenLayout
from .modules import ShortConv

_OUTPUT_GATE = {"silu": F.silu, "sigmoid": torch.sigmoid}


def scalarise(gate: torch.Tensor, heads: int) -> torch.Tensor:
    """Table 5 ablation: replace a channel-wise gate [..., heads * d] by its per-head mean, broadcast back."""
    shaped = gate.unflatten(-1, (heads, -1))
    return shaped.float().mean(-1, keepdim=True).expand_as(shaped).to(gate.dtype).flatten(-2)


class GDN2Mixer(nn.Module):
    def __init__(self, config: GDN2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        D = config.hidden_size
        self.num_heads = H = config.gdn2_num_heads
        self.num_v_heads = Hv = config.gdn2_num_v_heads
        self.head_k_dim = dk = config.gdn2_head_dim
        self.head_v_dim = dv = config.gdn2_value_dim
        self.q_proj = nn.Linear(D, H * dk, bias=False)
        self.k_proj = nn.Linear(D, H * dk, bias=False)
        self.v_proj = nn.Linear(D, Hv * dv, bias=False)
        self.q_conv1d = ShortConv(H * dk, config.conv_size)
        self.k_conv1d = ShortConv(H * dk, config.conv_size)
        self.v_conv1d = ShortConv(Hv * dv, config.conv_size)
        self.gate_kind = config.gates
        if self.gate_kind == "gdn":  # scalar decay per head
            self.a_proj = nn.Linear(D, H, bias=False)
            self.dt_bias = nn.Parameter(torch.empty(H))
        else:  # low-rank channel-wise decay branch d_model -> d_v -> H * d_k
            self.f_proj = nn.Sequential(nn.Linear(D, dv, bias=False), nn.Linear(dv, H * dk, bias=False))
            self.dt_bias = nn.Parameter(torch.empty(H * dk))
        if self.gate_kind == "gdn2":
            self.b_proj = nn.Linear(D, H * dk, bias=False)  # erase gate, key axis
            self.w_proj = nn.Linear(D, Hv * dv, bias=False)  # write gate, value axis
        else:
            self.beta_proj = nn.Linear(D, H, bias=False)  # one strength per head, erase and write tied
        self.A_log = nn.Parameter(torch.empty(H))
        self.g_proj = nn.Sequential(nn.Linear(D, dv, bias=False), nn.Linear(dv, Hv * dv, bias=True))  # output gate
        self.o_norm = _HeadRMSNorm(dv, config.norm_eps)
        self.o_proj = nn.Linear(Hv * dv, D, bias=False)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(g fp32 log-decay [.., H*dk], erase b [.., H*dk], write w [.., Hv*dv]) with any Table 5 ablation."""
        dk, dv = self.head_k_dim, self.head_v_dim
        if self.gate_kind == "gdn":
            a = self.A_log.float().exp()
            g = (-a * F.softplus(self.a_proj(x).float() + self.dt_bias.float())).repeat_interleave(dk, -1)
        else:
            a = self.A_log.float().exp().repeat_interleave(dk)
            g = -a * F.softplus(self.f_proj(x).float() + self.dt_bias.float())
        if self.gate_kind != "gdn2":
            beta = torch.sigmoid(self.beta_proj(x))
            return g, beta.repeat_interleave(dk, -1), beta.repeat_interleave(dv, -1)
        b = torch.sigmoid(self.b_proj(x))
        if self.config.allow_neg_eigval:
            b = b * 2
        w = torch.sigmoid(self.w_proj(x))
        ablation = self.config.gate_ablation
        if ablation == "scalar_erase":
            b = scalarise(b, self.num_heads)
        elif ablation == "scalar_write":
            w = scalarise(w, self.num_v_heads)
        return g, b, w

    def forward(self, x: torch.Tensor, layout: TokenLayout, cache: dict[str, Any] | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hv, dk, dv = self.num_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim
        rows = layout.rows if layout.packed else None

        def take(state):  # this call's rows of a cached state
            if state is None or rows is None:
                return state
            return state.index_select(0, rows)

        conv_in = cache.get("conv", (None, None, None)) if cache is not None else (None, None, None)
        q, cq = self.q_conv1d(self.q_proj(x), layout, take(conv_in[0]))
        k, ck = self.k_conv1d(self.k_proj(x), layout, take(conv_in[1]))
        v, cv = self.v_conv1d(self.v_proj(x), layout, take(conv_in[2]))
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
        g, b, w = self.gates(x)

        q, k, g, b = (t.view(B, T, H, dk) for t in (q, k, g, b))
        v, w = v.view(B, T, Hv, dv), w.view(B, T, Hv, dv)
        if Hv > H:  # grouped value heads: each key head serves Hv / H value heads
            q, k, g, b = (t.repeat_interleave(Hv // H, dim=2) for t in (q, k, g, b))
        o, state = gdn2_recurrence(
            q,
            k,
            v,
            g,
            b.to(q.dtype),
            w.to(v.dtype),
            backend=layout.backend,
            scale=dk**-0.5,
            initial_state=take(cache.get("recurrent")) if cache is not None else None,
            output_final_state=cache is not None,
            cu_seqlens=layout.cu_seqlens,
            use_qk_l2norm=self.config.use_qk_l2norm,
        )
        if cache is not None:
            _store(cache, "recurrent", state, rows, layout.batch)
            _store(cache, "conv", (cq, ck, cv), rows, layout.batch)

        u = self.g_proj(x).view(B, T, Hv, dv)
        o = self.o_norm(o) * _OUTPUT_GATE[self.config.output_gate_act](u.float())
        return self.o_proj(o.to(x.dtype).reshape(B, T, Hv * dv))


class _HeadRMSNorm(nn.Module):
    """RMSNorm over each head's d_v channels, returning float32 (the gate multiplies before the cast)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


def _store(cache: dict[str, Any], key: str, value: Any, rows: torch.Tensor | None, batch: int) -> None:
    """Write this call's new state into the cache; in packed mode only the rows that had tokens change
    (a row with no token yet starts from zeros, the state of an empty sequence)."""
    if rows is None:
        cache[key] = value
        return
    old = cache.get(key)
    if old is None:
        zeros = lambda t: t.new_zeros(batch, *t.shape[1:])  # noqa: E731
        old = tuple(zeros(t) for t in value) if isinstance(value, tuple) else zeros(value)
    if isinstance(value, tuple):
        cache[key] = tuple(o.index_copy(0, rows, n.to(o.dtype)) for o, n in zip(old, value))
    else:
        cache[key] = old.index_copy(0, rows, value.to(old.dtype))
