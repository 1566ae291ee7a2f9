"""The GDN-2 mixer's decode step in two Triton kernels: short conv + SiLU (conv state shifted in place), the gates,
the q/k L2 norm and one recurrence step (fp32 state updated in place) in the first; the output RMSNorm x gate in the
second.

Unfused, the step between the mixer's projections is four launches (conv step, gates, recurrence, gated norm) with
their intermediates written and read back; at decode's sizes each is a few microseconds of latency for almost no
bytes, so a captured step spends more on launches than on work. The recurrence splits each head's value channels
across programs, as a memory-bound step needs many programs in flight; the norm reduces over all of a head's value
channels, so it is the second kernel's, and that kernel also shifts the q/k conv state, which every recurrence
program of the head reads. `naive.py` is the reference: the same operators in PyTorch, with the same roundings (conv
outputs and gates in the activations' dtype, the recurrence in float32, its output rounded once before the norm).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..gates.gdn2_gates import _ABLATIONS, _KINDS, _softplus  # the same gate codes and activation
from ..gates.naive import GateLayout
from ..gdn2.utils import tsum

# Value channels per recurrence program. A whole 128 x 128 head state in one program's registers leaves the GPU a
# few hundred programs at decode's batch sizes and spills; K x 32 slices give every SM several programs to overlap.
BLOCK_V = 32


@triton.jit
def _conv_read(x_row, s_row, w, ch, C, KS: tl.constexpr):
    """SiLU(w . [s_0 .. s_{KS-2}, x]) on channels `ch`, rounded to x's dtype and returned in float32. Sums in the
    reference's order."""
    xv = tl.load(x_row + ch)
    acc = tl.zeros(ch.shape, tl.float32)
    for j in tl.static_range(KS - 1):
        acc += tl.load(s_row + j * C + ch).to(tl.float32) * tl.load(w + ch * KS + j).to(tl.float32)
    acc += xv.to(tl.float32) * tl.load(w + ch * KS + KS - 1).to(tl.float32)
    return (acc * tl.sigmoid(acc)).to(xv.dtype).to(tl.float32)


@triton.jit
def _conv_shift(x_row, s_row, ch, C, KS: tl.constexpr, RB: tl.constexpr):
    """Shift the state rows of channels `ch` in place to [s_1 .. s_{KS-2}, x]. More threads than channels hold
    copies of each one, and threads of other warps run ahead: every load of the state rows (the caller's reads
    included) must come before any store to them, or a late thread reads a row already shifted."""
    o_j = tl.arange(0, RB)  # the state's KS - 1 rows, padded to a power of two
    keep = (o_j >= 1) & (o_j < KS - 1)
    rows = tl.load(s_row + o_j[:, None] * C + ch[None, :], mask=keep[:, None], other=0.0)
    xv = tl.load(x_row + ch)
    tl.debug_barrier()
    tl.store(s_row + (o_j[:, None] - 1) * C + ch[None, :], rows, mask=keep[:, None])
    tl.store(s_row + (KS - 2) * C + ch, xv.to(s_row.dtype.element_ty))


@triton.jit
def _recurrence_kernel(
    P, p_stride, f, f_stride, conv_w, conv_s, S_ptr, A_log, dt_bias, o_buf, off_b, off_w, off_a, scale,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, KS: tl.constexpr,
    RB: tl.constexpr, KIND: tl.constexpr, NEG: tl.constexpr, ABLATION: tl.constexpr, L2NORM: tl.constexpr,
):
    """One program per (cache row, value head, block of BV value channels): the conv of q, k (read only: several
    programs read them, the norm kernel shifts their state) and of its own v channels (shifted here), the gates,
    and one recurrence step on its K x BV slice of the state. Writes the output rounded to the activations' dtype."""
    i_n = tl.program_id(0).to(tl.int64)
    i_hv = tl.program_id(1)
    i_v = tl.program_id(2)
    i_h = i_hv // (HV // H)
    C: tl.constexpr = 2 * H * K + HV * V
    dt = P.dtype.element_ty
    o_k = tl.arange(0, K)
    o_v = i_v * BV + tl.arange(0, BV)
    row = P + i_n * p_stride
    s_row = conv_s + i_n * (KS - 1) * C

    q = _conv_read(row, s_row, conv_w, i_h * K + o_k, C, KS)
    k = _conv_read(row, s_row, conv_w, H * K + i_h * K + o_k, C, KS)
    if L2NORM:
        q = q * tl.rsqrt(tsum(q * q, 0) + 1e-6)
        k = k * tl.rsqrt(tsum(k * k, 0) + 1e-6)
    q = q * scale

    # gates of this key head (as kernels/gates computes them)
    a = tl.exp(tl.load(A_log + i_h).to(tl.float32))
    if KIND == 2:  # one decay per head
        pre = tl.load(row + off_a + i_h).to(tl.float32) + tl.load(dt_bias + i_h).to(tl.float32)
        g = tl.zeros([K], tl.float32) - a * _softplus(pre)
    else:
        pre = tl.load(f + i_n * f_stride + i_h * K + o_k).to(tl.float32)
        g = -a * _softplus(pre + tl.load(dt_bias + i_h * K + o_k).to(tl.float32))
    decay = tl.exp(g)
    if KIND == 0:
        bv = tl.sigmoid(tl.load(row + off_b + i_h * K + o_k).to(tl.float32)).to(dt)
        if NEG:
            bv = (bv.to(tl.float32) * 2.0).to(dt)  # exact: a power of two
        if ABLATION == 1:
            bv = (tl.zeros([K], tl.float32) + tsum(bv.to(tl.float32), 0) / K).to(dt)
        bk = bv.to(tl.float32) * k
        if ABLATION == 2:  # the mean over all V channels of the head, not only this block's
            wall = tl.sigmoid(tl.load(row + off_w + i_hv * V + tl.arange(0, V)).to(tl.float32)).to(dt)
            wv = (tl.zeros([BV], tl.float32) + tsum(wall.to(tl.float32), 0) / V).to(dt).to(tl.float32)
        else:
            wv = tl.sigmoid(tl.load(row + off_w + i_hv * V + o_v).to(tl.float32)).to(dt).to(tl.float32)
    else:  # one beta per head for erase and write
        beta = tl.sigmoid(tl.load(row + off_b + i_h).to(tl.float32)).to(dt).to(tl.float32)
        bk = beta * k
        wv = tl.zeros([BV], tl.float32) + beta

    v_ch = 2 * H * K + i_hv * V + o_v
    v = _conv_read(row, s_row, conv_w, v_ch, C, KS)
    _conv_shift(row, s_row, v_ch, C, KS, RB)  # this program's own channels
    p_S = S_ptr + (i_n * HV + i_hv) * (K * V) + o_k[:, None] * V + o_v[None, :]
    S = tl.load(p_S) * decay[:, None]
    r = tsum(bk[:, None] * S, 0)
    S = S + k[:, None] * (wv * v - r)[None, :]
    tl.store(p_S, S)
    o = tsum(q[:, None] * S, 0)
    tl.store(o_buf + i_n * (HV * V) + i_hv * V + o_v, o.to(dt))  # rounded once, as the recurrence returns it


@triton.jit
def _norm_kernel(
    P, p_stride, u, u_stride, conv_s, o_buf, norm_w, y, eps,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, KS: tl.constexpr, RB: tl.constexpr,
    SIGMOID: tl.constexpr,
):
    """One program per (cache row, value head): the output RMSNorm over the head's V channels times act(u); the
    first value head of each key head's group then shifts that key head's q/k conv state, which every recurrence
    program of the group has read by now."""
    i_n = tl.program_id(0).to(tl.int64)
    i_hv = tl.program_id(1)
    C: tl.constexpr = 2 * H * K + HV * V
    o_v = tl.arange(0, V)
    o = tl.load(o_buf + i_n * (HV * V) + i_hv * V + o_v).to(tl.float32)
    rstd = tl.rsqrt(tsum(o * o, 0) / V + eps)
    uf = tl.load(u + i_n * u_stride + i_hv * V + o_v).to(tl.float32)
    gate = tl.sigmoid(uf) if SIGMOID else uf * tl.sigmoid(uf)
    out = o * rstd * tl.load(norm_w + o_v).to(tl.float32) * gate
    tl.store(y + i_n * (HV * V) + i_hv * V + o_v, out.to(y.dtype.element_ty))
    G: tl.constexpr = HV // H
    if i_hv % G == 0:
        i_h = i_hv // G
        o_k = tl.arange(0, K)
        row = P + i_n * p_stride
        s_row = conv_s + i_n * (KS - 1) * C
        _conv_shift(row, s_row, i_h * K + o_k, C, KS, RB)
        _conv_shift(row, s_row, H * K + i_h * K + o_k, C, KS, RB)


def fused_decode_step(
    P: torch.Tensor, f: torch.Tensor | None, u: torch.Tensor, conv_w: torch.Tensor, conv_state: torch.Tensor,
    state: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, norm_w: torch.Tensor, lay: GateLayout,
    eps: float, act: str, scale: float, use_qk_l2norm: bool, block_v: int | None = None,
) -> torch.Tensor:
    """Same contract as `naive.decode_step_ref`. P, f and u need unit column stride (their rows may be slices of wider
    GEMM outputs); conv_w, conv_state and state must be contiguous (the states are written where they lie, which is
    what a captured CUDA graph replays). `block_v` value channels per recurrence program (default BLOCK_V)."""
    H, HV, K, V = lay.H, lay.HV, lay.K, lay.V
    B = P.shape[0]
    C = 2 * H * K + HV * V
    KS = conv_w.shape[1]
    if P.stride(1) != 1 or (f is not None and f.stride(1) != 1) or u.stride(1) != 1:
        raise ValueError("P, f and u need unit column stride")
    if K & (K - 1) or V & (V - 1) or HV % H:
        raise ValueError(f"head sizes must be powers of two and value heads a multiple of key heads, got "
                         f"K={K}, V={V}, H={H}, HV={HV}")
    if lay.kind != "gdn2" and HV != H:
        raise ValueError(f"gates={lay.kind!r} needs as many value heads as key heads")
    if tuple(conv_w.shape) != (C, KS) or KS < 2 or not conv_w.is_contiguous():
        raise ValueError(f"conv weight must be contiguous [{C}, KS], got {tuple(conv_w.shape)}")
    if tuple(conv_state.shape) != (B, KS - 1, C) or not conv_state.is_contiguous() or conv_state.dtype != P.dtype:
        raise ValueError(f"conv state must be contiguous [{B}, {KS - 1}, {C}] in {P.dtype}, got "
                         f"{tuple(conv_state.shape)} {conv_state.dtype}")
    if tuple(state.shape) != (B, HV, K, V) or not state.is_contiguous() or state.dtype != torch.float32:
        raise ValueError(f"state must be contiguous float32 [{B}, {HV}, {K}, {V}], got {tuple(state.shape)} "
                         f"{state.dtype}")
    if tuple(u.shape) != (B, HV * V):
        raise ValueError(f"u must be [{B}, {HV * V}], got {tuple(u.shape)}")
    BV = min(V, block_v or BLOCK_V)
    if BV & (BV - 1):
        raise ValueError(f"block_v must be a power of two, got {BV}")
    y = torch.empty(B, HV * V, dtype=P.dtype, device=P.device)
    if B:
        o = torch.empty_like(y)
        RB = triton.next_power_of_2(KS - 1)
        _recurrence_kernel[(B, HV, V // BV)](
            P, P.stride(0), P if f is None else f, 0 if f is None else f.stride(0), conv_w, conv_state, state,
            A_log, dt_bias, o, lay.off_b, lay.off_w, lay.off_a, scale,
            H=H, HV=HV, K=K, V=V, BV=BV, KS=KS, RB=RB, KIND=_KINDS[lay.kind], NEG=lay.neg_eigval,
            ABLATION=_ABLATIONS[lay.ablation], L2NORM=bool(use_qk_l2norm),
            num_warps=max(1, min(8, K * BV // 1024)),  # about 32 state values a thread
        )
        _norm_kernel[(B, HV)](
            P, P.stride(0), u, u.stride(0), conv_state, o, norm_w, y, eps,
            H=H, HV=HV, K=K, V=V, KS=KS, RB=RB, SIGMOID=act == "sigmoid", num_warps=max(1, min(4, V // 128)),
        )
    return y
