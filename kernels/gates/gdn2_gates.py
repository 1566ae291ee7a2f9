"""The mixer's gates in Triton: decay (softplus, -exp(A_log)), erase and write sigmoids, the negative-eigenvalue
doubling and the Table 5 scalar ablations, read from the fused projection's output in one pass. The reference
mixer spends some fifteen elementwise kernels on this. `naive.py` is the reference and says what the kinds mean."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .naive import GateLayout

_KINDS = {"gdn2": 0, "kda": 1, "gdn": 2}
_ABLATIONS = {"none": 0, "scalar_erase": 1, "scalar_write": 2}


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _gates_kernel(
    P, p_stride, f, f_stride, A_log, dt_bias, g_out, b_out, w_out, T, off_b, off_w, off_a,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    KIND: tl.constexpr, NEG: tl.constexpr, ABLATION: tl.constexpr,
):
    i_t, i_hv = tl.program_id(0), tl.program_id(1)
    o_t = (i_t * BT + tl.arange(0, BT)).to(tl.int64)
    m = (o_t < T)[:, None]
    o_k, o_v = tl.arange(0, K), tl.arange(0, V)
    p_row = P + o_t[:, None] * p_stride
    if KIND == 0:  # decoupled gates: write gate of this value head
        wl = tl.load(p_row + off_w + i_hv * V + o_v[None, :], mask=m, other=0.0)
        wv = tl.sigmoid(wl.to(tl.float32)).to(wl.dtype)
        if ABLATION == 2:
            wv = (tl.zeros([BT, V], tl.float32) + (tl.sum(wv.to(tl.float32), 1) / V)[:, None]).to(wl.dtype)
        tl.store(w_out + o_t[:, None] * (HV * V) + i_hv * V + o_v[None, :], wv, mask=m)
    if i_hv % (HV // H) == 0:  # the first value head of a group also does its key head
        i_h = i_hv // (HV // H)
        a = tl.exp(tl.load(A_log + i_h).to(tl.float32))
        if KIND == 2:  # one decay per head
            pre = tl.load(p_row + off_a + i_h, mask=m, other=0.0).to(tl.float32)
            pre = pre + tl.load(dt_bias + i_h).to(tl.float32)
            g = tl.zeros([BT, K], tl.float32) - a * _softplus(pre)
        else:
            pre = tl.load(f + o_t[:, None] * f_stride + i_h * K + o_k[None, :], mask=m, other=0.0).to(tl.float32)
            g = -a * _softplus(pre + tl.load(dt_bias + i_h * K + o_k).to(tl.float32)[None, :])
        tl.store(g_out + o_t[:, None] * (H * K) + i_h * K + o_k[None, :], g, mask=m)
        if KIND == 0:
            bl = tl.load(p_row + off_b + i_h * K + o_k[None, :], mask=m, other=0.0)
            bv = tl.sigmoid(bl.to(tl.float32)).to(bl.dtype)
            if NEG:
                bv = (bv.to(tl.float32) * 2.0).to(bl.dtype)  # exact: a power of two
            if ABLATION == 1:
                bv = (tl.zeros([BT, K], tl.float32) + (tl.sum(bv.to(tl.float32), 1) / K)[:, None]).to(bl.dtype)
            tl.store(b_out + o_t[:, None] * (H * K) + i_h * K + o_k[None, :], bv, mask=m)
        else:  # one beta per head for erase and write (HV == H)
            bl = tl.load(p_row + off_b + i_h, mask=m, other=0.0)
            beta = tl.sigmoid(bl.to(tl.float32)).to(bl.dtype)
            tl.store(b_out + o_t[:, None] * (H * K) + i_h * K + o_k[None, :],
                     tl.zeros([BT, K], bl.dtype) + beta, mask=m)
            tl.store(w_out + o_t[:, None] * (HV * V) + i_h * V + o_v[None, :],
                     tl.zeros([BT, V], bl.dtype) + beta, mask=m)


def gdn2_gates(
    P: torch.Tensor, f: torch.Tensor | None, A_log: torch.Tensor, dt_bias: torch.Tensor, lay: GateLayout
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as `naive.gdn2_gates_ref`. P and f need unit column stride (rows may be strided)."""
    T = P.shape[0]
    if P.stride(1) != 1 or (f is not None and f.stride(1) != 1):
        raise ValueError("P and f need unit column stride")
    if lay.kind != "gdn2" and lay.HV != lay.H:
        raise ValueError(f"gates={lay.kind!r} needs as many value heads as key heads")
    g = torch.empty(T, lay.H * lay.K, dtype=torch.float32, device=P.device)
    b = torch.empty(T, lay.H * lay.K, dtype=P.dtype, device=P.device)
    w = torch.empty(T, lay.HV * lay.V, dtype=P.dtype, device=P.device)
    if T:
        BT = 64
        _gates_kernel[(triton.cdiv(T, BT), lay.HV)](
            P, P.stride(0), P if f is None else f, 0 if f is None else f.stride(0), A_log, dt_bias, g, b, w, T,
            lay.off_b, lay.off_w, lay.off_a, H=lay.H, HV=lay.HV, K=lay.K, V=lay.V, BT=BT,
            KIND=_KINDS[lay.kind], NEG=lay.neg_eigval, ABLATION=_ABLATIONS[lay.ablation], num_warps=8,
        )
    return g, b, w
