"""Short convolution + SiLU in Triton, for the inference path: one pass over the packed q/k/v projections.

The reference model runs three `F.conv1d` calls, three SiLUs and a handful of gathers per layer (11% of a prefill in
the profile); here one kernel reads the projection output once, in place in the fused projection's output (rows
`x_stride` apart), and writes q, k and v as separate contiguous tensors, which is what the recurrence kernels read.
Each output's taps come from the same sequence's earlier tokens or, for its first KS-1 tokens, from the cache row's
carried state, so packed variable-length batches need no per-sequence work. `naive.py` is the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _plane(c0, k_plane, v_plane, CK, CV):
    """Where channel block c0 of [q | k | v] is written: (element offset of its plane, first column, row stride).
    The plane offsets come from the wrapper (T x CK elements each), so they are int64 whenever they need to be."""
    is_k = c0 >= CK
    is_v = c0 >= 2 * CK
    base = tl.where(is_v, v_plane, tl.where(is_k, k_plane, 0))
    col = tl.where(is_v, c0 - 2 * CK, tl.where(is_k, c0 - CK, c0))
    return base, col, tl.where(is_v, CV, CK)


@triton.jit
def _conv_varlen_kernel(
    x, x_stride, w, out, seq_idx, pos, state, state_rows, T, C, CK, CV, k_plane, v_plane,
    KS: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_STATE: tl.constexpr,
):
    i_t, i_c = tl.program_id(0), tl.program_id(1)
    o_t = (i_t * BT + tl.arange(0, BT)).to(tl.int64)
    c0 = i_c * BC
    o_c = c0 + tl.arange(0, BC)
    m_t = o_t < T
    p = tl.load(pos + o_t, mask=m_t, other=0)
    if HAS_STATE:
        row = tl.load(state_rows + tl.load(seq_idx + o_t, mask=m_t, other=0), mask=m_t, other=0).to(tl.int64)
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(KS):
        lag = KS - 1 - j
        w_j = tl.load(w + o_c * KS + j).to(tl.float32)
        own = p >= lag  # the tap reads this sequence's own token; otherwise the carried state
        xv = tl.load(x + (o_t - lag)[:, None] * x_stride + o_c[None, :], mask=(m_t & own)[:, None], other=0.0)
        xv = xv.to(tl.float32)
        if HAS_STATE:
            slot = KS - 1 - lag + p  # state slot of token p - lag (< 0)
            sv = tl.load(state + (row * (KS - 1) + slot)[:, None] * C + o_c[None, :],
                         mask=(m_t & (p < lag))[:, None], other=0.0)
            xv += sv.to(tl.float32)
        acc += xv * w_j[None, :]
    acc = acc * tl.sigmoid(acc)
    base, col, stride = _plane(c0, k_plane, v_plane, CK, CV)
    dst = out + base + o_t[:, None] * stride + (col + tl.arange(0, BC))[None, :]
    tl.store(dst, acc.to(out.dtype.element_ty), mask=m_t[:, None])


@triton.jit
def _conv_state_kernel(
    x, x_stride, cu_seqlens, state, state_rows, new_state, C,
    KS: tl.constexpr, BC: tl.constexpr, HAS_STATE: tl.constexpr,
):
    """new_state[n] = the last KS-1 entries of [state[row n] ; tokens of sequence n]."""
    i_n, i_c = tl.program_id(0), tl.program_id(1)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    L = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    o_c = i_c * BC + tl.arange(0, BC)
    if HAS_STATE:
        row = tl.load(state_rows + i_n).to(tl.int64)
    for j in tl.static_range(KS - 1):
        m = L - (KS - 1) + j  # index into the sequence's tokens; < 0 means the carried state
        if m >= 0:
            val = tl.load(x + (bos + m) * x_stride + o_c).to(tl.float32)
        else:
            if HAS_STATE:
                val = tl.load(state + (row * (KS - 1) + KS - 1 + m) * C + o_c).to(tl.float32)
            else:
                val = tl.zeros([BC], dtype=tl.float32)
        tl.store(new_state + (i_n * (KS - 1) + j) * C + o_c, val.to(new_state.dtype.element_ty))


@triton.jit
def _conv_step_kernel(
    x, x_stride, w, out, state, B, C, CK, CV, k_plane, v_plane, BB: tl.constexpr, BC: tl.constexpr,
):
    """One token per row, kernel size 4: y = SiLU(w . [s0, s1, s2, x]); the state shifts in place to [s1, s2, x]."""
    i_b, i_c = tl.program_id(0), tl.program_id(1)
    o_b = (i_b * BB + tl.arange(0, BB)).to(tl.int64)
    c0 = i_c * BC
    o_c = c0 + tl.arange(0, BC)
    m = (o_b < B)[:, None]
    p_s = state + o_b[:, None] * (3 * C) + o_c[None, :]
    s0 = tl.load(p_s, mask=m, other=0.0)
    s1 = tl.load(p_s + C, mask=m, other=0.0)
    s2 = tl.load(p_s + 2 * C, mask=m, other=0.0)
    xv = tl.load(x + o_b[:, None] * x_stride + o_c[None, :], mask=m, other=0.0)
    acc = s0.to(tl.float32) * tl.load(w + o_c * 4).to(tl.float32)[None, :]
    acc += s1.to(tl.float32) * tl.load(w + o_c * 4 + 1).to(tl.float32)[None, :]
    acc += s2.to(tl.float32) * tl.load(w + o_c * 4 + 2).to(tl.float32)[None, :]
    acc += xv.to(tl.float32) * tl.load(w + o_c * 4 + 3).to(tl.float32)[None, :]
    acc = acc * tl.sigmoid(acc)
    # where threads outnumber the block's elements they hold copies: every load of the state comes before any store
    tl.debug_barrier()
    tl.store(p_s, s1, mask=m)
    tl.store(p_s + C, s2, mask=m)
    tl.store(p_s + 2 * C, xv.to(s2.dtype), mask=m)
    base, col, stride = _plane(c0, k_plane, v_plane, CK, CV)
    tl.store(out + base + o_b[:, None] * stride + (col + tl.arange(0, BC))[None, :], acc.to(out.dtype.element_ty),
             mask=m)


def _channel_block(splits: tuple[int, ...]) -> int:
    """Largest power-of-two block (<= 128) that tiles every output, so a block never straddles two of them."""
    bc = 128
    while any(s % bc for s in splits):
        bc //= 2
    if bc < 4:
        raise ValueError(f"channel splits {splits} need a power-of-two block of at least 4")
    return bc


def _check(x: torch.Tensor, weight: torch.Tensor, splits: tuple[int, ...]) -> tuple[int, int]:
    if len(splits) != 3 or splits[0] != splits[1]:
        raise ValueError(f"splits must be (q, k, v) channel counts with q == k, got {splits}")
    if x.stride(1) != 1 or x.shape[1] != sum(splits) or tuple(weight.shape[:1]) != (x.shape[1],):
        raise ValueError(f"x [T, {sum(splits)}] (unit channel stride) and weight [C, KS] expected, got "
                         f"{tuple(x.shape)} / {tuple(weight.shape)}")
    return splits[0], splits[2]


def _planes(T: int, splits: tuple[int, ...], like: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    flat = torch.empty(T * sum(splits), dtype=like.dtype, device=like.device)
    parts, start = [], 0
    for c in splits:
        parts.append(flat[start : start + T * c].view(T, c))
        start += T * c
    return flat, tuple(parts)


def short_conv_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    cu_seqlens: torch.Tensor,
    seq_idx: torch.Tensor,
    pos: torch.Tensor,
    state: torch.Tensor | None,
    state_rows: torch.Tensor | None,
    splits: tuple[int, ...],
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Packed prefill. `seq_idx`/`pos` [T]: each token's sequence and rank in it (`TokenLayout`). Returns the (q, k, v)
    outputs, each [T, c] contiguous, and the new state [N, KS-1, C] of each sequence (the caller stores it)."""
    CK, CV = _check(x, weight, splits)
    T, C = x.shape
    KS = weight.shape[1]
    N = cu_seqlens.numel() - 1
    weight = weight.contiguous()
    flat, parts = _planes(T, splits, x)
    new_state = torch.empty(N, KS - 1, C, dtype=x.dtype, device=x.device)
    has_state = state is not None
    if has_state and (not state.is_contiguous() or state_rows is None or state.dtype != x.dtype):
        raise ValueError("state must be contiguous [rows, KS-1, C] in x's dtype and come with state_rows")
    BC = _channel_block(splits)
    dummy = cu_seqlens
    if T:
        _conv_varlen_kernel[(triton.cdiv(T, 64), C // BC)](
            x, x.stride(0), weight, flat, seq_idx, pos, state if has_state else x, state_rows if has_state else dummy,
            T, C, CK, CV, T * CK, 2 * T * CK, KS=KS, BT=64, BC=BC, HAS_STATE=has_state, num_warps=4,
        )
    if N:
        _conv_state_kernel[(N, C // BC)](
            x, x.stride(0), cu_seqlens, state if has_state else x, state_rows if has_state else dummy, new_state, C,
            KS=KS, BC=BC, HAS_STATE=has_state, num_warps=1,
        )
    return parts, new_state


def short_conv_step(
    x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, splits: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """Decode step: x [B, C] (one token per row), state [B, 3, C] updated in place. Returns (q, k, v)."""
    CK, CV = _check(x, weight, splits)
    B, C = x.shape
    if weight.shape[1] != 4 or not state.is_contiguous() or tuple(state.shape) != (B, 3, C):
        raise ValueError(f"the step kernel needs kernel size 4 and a contiguous state [B, 3, C], got weight "
                         f"{tuple(weight.shape)} and state {tuple(state.shape)}")
    flat, parts = _planes(B, splits, x)
    BC = _channel_block(splits)
    if B:
        _conv_step_kernel[(triton.cdiv(B, 4), C // BC)](
            x, x.stride(0), weight.contiguous(), flat, state, B, C, CK, CV, B * CK, 2 * B * CK, BB=4, BC=BC,
            num_warps=4,
        )
    return parts
