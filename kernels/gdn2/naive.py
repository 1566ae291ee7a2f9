"""Plain float64 references for the GDN-2 recurrence (spec sections 1 and 2).

These are the ground truth every faster path is tested against. They favour obviousness over speed:
one token at a time (`naive_recurrent_gdn2`) and the chunkwise algebra written as in the spec
(`naive_chunk_gdn2`). Shapes follow fla: q, k, g, b `[B, T, H, K]`; v, w `[B, T, H, V]`; state `[B, H, K, V]`.
"""

from __future__ import annotations

import torch


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last axis (the form fla's kernels use)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def naive_recurrent_gdn2(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token GDN-2 in float64. Returns (o [B, T, H, V] float64, final state [B, H, K, V] float64)."""
    q, k, v, g, b, w = (x.double() for x in (q, k, v, g, b, w))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=torch.float64, device=q.device)
    if initial_state is not None:
        S = initial_state.double().clone()
    o = torch.empty(B, T, H, V, dtype=torch.float64, device=q.device)
    for t in range(T):
        S = S * g[:, t].exp()[..., None]  # decay before the edit
        e = b[:, t] * k[:, t]  # erase direction, key axis
        r = torch.einsum("bhk,bhkv->bhv", e, S)  # read along it
        z = w[:, t] * v[:, t]  # write target, value axis
        S = S + k[:, t, :, :, None] * (z - r)[:, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S)
    return o, S


def naive_chunk_gdn2(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's chunkwise form, literally (K / gamma etc.), in float64.

    Only valid while exp(-cumsum(g)) stays finite inside a chunk, which float64 affords for any realistic gate.
    """
    q, k, v, g, b, w = (x.double() for x in (q, k, v, g, b, w))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    B, T, H, K = k.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=torch.float64, device=q.device)
    if initial_state is not None:
        S = initial_state.double().clone()
    o = torch.empty(B, T, H, V, dtype=torch.float64, device=q.device)
    for s0 in range(0, T, chunk_size):
        sl = slice(s0, min(T, s0 + chunk_size))
        # [B, H, C, *]
        qc, kc, vc, gc, bc, wc = (x[:, sl].transpose(1, 2) for x in (q, k, v, g, b, w))
        C = kc.shape[2]
        G = gc.cumsum(2)
        gamma = G.exp()
        Kbar = kc / gamma
        Ebar = gamma * (bc * kc)
        Z = wc * vc
        Tm = (Ebar @ Kbar.transpose(-1, -2)).tril(-1)
        eye = torch.eye(C, dtype=torch.float64, device=q.device)
        A = torch.linalg.inv(eye + Tm)
        Y = A @ Ebar
        U = A @ Z
        R = U - Y @ S
        Qg = gamma * qc * scale
        Aqk = ((Qg) @ Kbar.transpose(-1, -2)).tril(0)
        o[:, sl] = (Qg @ S + Aqk @ R).transpose(1, 2)
        gC = gamma[:, :, -1]  # [B, H, K]
        Ktail = (gC[:, :, None] / gamma) * kc
        S = gC[..., None] * S + Ktail.transpose(-1, -2) @ R
    return o, S


def naive_varlen(fn, q, k, v, g, b, w, cu_seqlens: torch.Tensor, initial_state=None, **kwargs):
    """Run a [B, T] reference over a packed batch (B = 1) one sequence at a time; state [N, H, K, V]."""
    outs, states = [], []
    bounds = cu_seqlens.tolist()
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[i : i + 1]
        o, st = fn(*(x[:, s:e] for x in (q, k, v, g, b, w)), initial_state=h0, **kwargs)
        outs.append(o)
        states.append(st)
    return torch.cat(outs, 1), torch.cat(states, 0)
