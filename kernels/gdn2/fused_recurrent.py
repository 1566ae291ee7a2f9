"""Token-by-token GDN-2 forward in Triton, for decoding (T = 1) and short inputs.

One program per (sequence, value head, V-block) keeps its K x BV slice of the fp32 state in registers and steps
over the tokens (spec section 1):

    S <- exp(g) * S;   r = (b * k)^T S;   S <- S + k (w * v - r)^T;   o = S^T q * scale

Columns of the state are independent, so V-blocks need no communication. With `inplace_final_state=True` the
final state overwrites `initial_state` (each program reads its slice before writing it back).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_inputs, num_sms, tsum


@triton.jit
def _recurrent_kernel(
    q, k, v, g, b, w, o, h0, ht, cu_seqlens, scale, T,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, L2NORM: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = (i_nh // HV).to(tl.int64)
    i_hv = i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n * T
        eos = bos + T

    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    p_state = (i_n * HV + i_hv) * K * V + o_k[:, None] * V + o_v[None, :]
    if USE_H0:
        S = tl.load(h0 + p_state).to(tl.float32)
    else:
        S = tl.full([K, BV], 0.0, tl.float32)

    p_k = i_h * K + o_k
    p_v = i_hv * V + o_v
    for t in range(bos, eos):
        b_q = tl.load(q + t * (H * K) + p_k).to(tl.float32)
        b_k = tl.load(k + t * (H * K) + p_k).to(tl.float32)
        b_g = tl.load(g + t * (H * K) + p_k)
        b_b = tl.load(b + t * (H * K) + p_k).to(tl.float32)
        b_v = tl.load(v + t * (HV * V) + p_v).to(tl.float32)
        b_w = tl.load(w + t * (HV * V) + p_v).to(tl.float32)
        if L2NORM:
            b_q = b_q * tl.rsqrt(tsum(b_q * b_q, 0) + 1e-6)
            b_k = b_k * tl.rsqrt(tsum(b_k * b_k, 0) + 1e-6)
        S = S * tl.exp(b_g)[:, None]
        r = tsum((b_b * b_k)[:, None] * S, 0)
        S = S + b_k[:, None] * (b_w * b_v - r)[None, :]
        out = tsum((b_q * scale)[:, None] * S, 0)
        tl.store(o + t * (HV * V) + p_v, out.to(o.dtype.element_ty))

    if STORE_HT:
        tl.store(ht + p_state, S)


def _pick_bv(N: int, HV: int, V: int, device: torch.device) -> int:
    sms = num_sms(device)
    for bv in (64, 32, 16):
        if bv <= V and N * HV * (V // bv) >= 2 * sms:
            return bv
    return min(V, 16)


def fused_recurrent_gdn2_fwd(
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
    inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GDN-2 forward one token at a time (decoding). Same arguments and layout as `chunk_gdn2_fwd`.

    With `inplace_final_state=True` (requires `initial_state`, which must then be contiguous) the final state is
    written into `initial_state` and that same tensor is returned as the final state.
    """
    if inplace_final_state:
        if initial_state is None:
            raise ValueError("initial_state is required when inplace_final_state=True")
        if not initial_state.is_contiguous():
            raise ValueError("initial_state must be contiguous when inplace_final_state=True")
    x = check_inputs(q, k, v, g, b, w, scale, initial_state, cu_seqlens)
    B, T, H, HV, K, V, N = x.B, x.T, x.H, x.HV, x.K, x.V, x.N
    dev = x.q.device

    o = torch.empty(B, T, HV, V, dtype=x.v.dtype, device=dev)
    if inplace_final_state:
        ht = initial_state
    elif output_final_state:
        ht = torch.empty(N, HV, K, V, dtype=torch.float32, device=dev)
    else:
        ht = None
    if N == 0:
        return o, ht
    BV = _pick_bv(N, HV, V, dev)
    _recurrent_kernel[(triton.cdiv(V, BV), N * HV)](
        x.q, x.k, x.v, x.g, x.b, x.w, o, x.initial_state, ht, x.cu_seqlens, x.scale, T,
        H=H, HV=HV, K=K, V=V, BV=BV,
        IS_VARLEN=x.cu_seqlens is not None, USE_H0=x.initial_state is not None, STORE_HT=ht is not None,
        L2NORM=bool(use_qk_l2norm),
        num_warps=1 if BV * K <= 2048 else 2 if BV * K <= 4096 else 4,
    )
    return o, ht
