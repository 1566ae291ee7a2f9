"""GDN-2 recurrence in plain PyTorch: runs on any device, float32 state and accumulators.

`chunk_gdn2_torch` is the chunkwise form of spec section 2 for prefill (a Python step per 64-token chunk, not per
token); `recurrent_gdn2_torch` steps token by token for decoding. Both take fla's argument layout.

Numerical form: instead of the spec's `K / gamma` (which overflows float32 once a chunk's cumulative decay passes
e^-88), every decay factor is formed as exp(G_r - G_s) with r >= s, so each exponent is <= 0.
"""

from __future__ import annotations

import torch

CHUNK_SIZE = 64
# On the CPU the exact pairwise decay term (C x C x K exponentials per chunk and head) dominates, and the sequential
# loop over chunks is cheap: chunks of 8 run a prefill about 4x faster than chunks of 64 there.
CPU_CHUNK_SIZE = 8
# Largest pairwise-decay tensor [.., C, C, K] built at once, in elements (about 512 MB of float32).
_PAIRWISE_BUDGET = 1 << 27


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def pack_to_padded(x: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, total, ...] packed sequences -> ([N, Lmax, ...] zero-padded at the end, valid mask [N, Lmax])."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    lmax = int(lengths.max()) if lengths.numel() else 0
    steps = torch.arange(lmax, device=x.device)
    valid = steps[None, :] < lengths[:, None]
    idx = (cu_seqlens[:-1, None] + steps[None, :]).clamp(max=max(x.shape[1] - 1, 0))
    out = x[0][idx]
    out = out * valid.view(*valid.shape, *([1] * (out.dim() - 2))).to(out.dtype)
    return out, valid


def _varlen(fn, q, k, v, g, b, w, cu_seqlens, **kwargs):
    # Sequences padded at their end with k = 0 and g = 0 leave the state exactly unchanged
    # (S <- (I - 0) * exp(0) * S + 0), so the final state of each row is that of its last real token.
    padded = [pack_to_padded(x, cu_seqlens)[0] for x in (q, k, v, g, b, w)]
    valid = pack_to_padded(q[..., :1], cu_seqlens)[1]
    o, state = fn(*padded, **kwargs)
    return o[valid][None], state


def _prepare(q, k, v, g, b, w, scale, use_qk_l2norm):
    q, k, v, b, w = (x.float() for x in (q, k, v, b, w))
    g = g.float()
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return q * scale, k, v, g, b, w


def chunk_gdn2_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if cu_seqlens is not None:
        return _varlen(
            chunk_gdn2_torch,
            q,
            k,
            v,
            g,
            b,
            w,
            cu_seqlens,
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm=use_qk_l2norm,
        )
    out_dtype = v.dtype
    q, k, v, g, b, w = _prepare(q, k, v, g, b, w, scale, use_qk_l2norm)
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK_SIZE if q.is_cuda else CPU_CHUNK_SIZE
    NC = -(-T // C)
    pad = NC * C - T

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, NC, C, D]; zero padding is inert
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, NC, C, H, -1).permute(0, 3, 1, 2, 4)

    q, k, v, g, b, w = (chunked(x) for x in (q, k, v, g, b, w))
    G = g.cumsum(3)  # within-chunk cumulative log-decay, <= 0 and non-increasing
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float().clone()

    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = causal.tril(-1)
    per_chunk = B * H * C * C * K
    slab = max(1, _PAIRWISE_BUDGET // per_chunk)
    o = q.new_empty(B, H, NC, C, V)
    for c0 in range(0, NC, slab):
        cs = slice(c0, min(NC, c0 + slab))
        Gs, ks = G[:, :, cs], k[:, :, cs]
        # D[r, s] = exp(G_r - G_s) for r >= s: the decay from token s to token r.
        diff = Gs[..., :, None, :] - Gs[..., None, :, :]
        D = torch.where(causal[:, :, None], diff, float("-inf"))
        del diff
        # D * k_s first: the two-operand contraction then runs as a batched matmul (a three-operand einsum does
        # not, and was most of a CPU prefill)
        D = D.exp() * ks[..., None, :, :]
        lhs = torch.stack((b[:, :, cs] * ks, q[:, :, cs]), dim=0)
        Tm, Aqk = torch.einsum("x...rk,...rsk->x...rs", lhs, D).unbind(0)
        del D
        Tm = Tm * strict
        Aqk = Aqk * causal
        gamma = Gs.exp()
        Ebar = gamma * b[:, :, cs] * ks
        Z = w[:, :, cs] * v[:, :, cs]
        # (I + T)^-1 [Ebar | Z] by forward substitution; T's diagonal is ignored (unit triangular).
        YU = torch.linalg.solve_triangular(Tm, torch.cat((Ebar, Z), -1), upper=False, unitriangular=True)
        Y, U = YU[..., :K], YU[..., K:]
        Qg = gamma * q[:, :, cs]
        G_last = Gs[..., -1:, :]
        Ktail = (G_last - Gs).exp() * ks
        g_end = G_last.squeeze(-2).exp()
        for i in range(Y.shape[2]):
            R = U[:, :, i] - Y[:, :, i] @ S
            o[:, :, c0 + i] = Qg[:, :, i] @ S + Aqk[:, :, i] @ R
            S = g_end[:, :, i, :, None] * S + Ktail[:, :, i].transpose(-1, -2) @ R
    o = o.permute(0, 2, 3, 1, 4).reshape(B, NC * C, H, V)[:, :T]
    return o.to(out_dtype), (S if output_final_state else None)


def recurrent_gdn2_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if cu_seqlens is not None:
        return _varlen(
            recurrent_gdn2_torch,
            q,
            k,
            v,
            g,
            b,
            w,
            cu_seqlens,
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm=use_qk_l2norm,
        )
    out_dtype = v.dtype
    q, k, v, g, b, w = _prepare(q, k, v, g, b, w, scale, use_qk_l2norm)
    B, T, H, K = k.shape
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.float().clone()
    o = torch.empty_like(v)
    for t in range(T):
        S = S * g[:, t].exp()[..., None]
        r = torch.einsum("bhk,bhkv->bhv", b[:, t] * k[:, t], S)
        S = S + k[:, t, :, :, None] * (w[:, t] * v[:, t] - r)[:, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o.to(out_dtype), (S if output_final_state else None)
