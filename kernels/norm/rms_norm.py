"""Fused RMSNorms in Triton: one read and one write per row where the reference model makes four to six passes
(upcast, square, mean, rsqrt, scale, cast; and the residual add before it). `naive.py` is the reference."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(x, y, w, s_out, h_out, N, D, eps, BR: tl.constexpr, BD: tl.constexpr,
                         HAS_Y: tl.constexpr):
    o_r = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    o_d = tl.arange(0, BD)
    m = (o_r < N)[:, None] & (o_d < D)[None, :]
    p = o_r[:, None] * D + o_d[None, :]
    s = tl.load(x + p, mask=m, other=0.0)
    if HAS_Y:
        # rounded to the stream's dtype first, as the reference model's `x + y`
        s = (s.to(tl.float32) + tl.load(y + p, mask=m, other=0.0).to(tl.float32)).to(s.dtype)
        tl.store(s_out + p, s, mask=m)
    sf = s.to(tl.float32)
    r = tl.rsqrt(tl.sum(sf * sf, 1) / D + eps)
    h = sf * r[:, None] * tl.load(w + o_d, mask=o_d < D, other=0.0).to(tl.float32)[None, :]
    tl.store(h_out + p, h.to(h_out.dtype.element_ty), mask=m)


@triton.jit
def _gated_rms_norm_kernel(o, u, u_stride, w, y, R, H, eps, V: tl.constexpr, BR: tl.constexpr,
                           SIGMOID: tl.constexpr):
    o_r = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    o_v = tl.arange(0, V)
    m = (o_r < R)[:, None]
    p = o_r[:, None] * V + o_v[None, :]
    of = tl.load(o + p, mask=m, other=0.0).to(tl.float32)
    pu = (o_r // H * u_stride + o_r % H * V)[:, None] + o_v[None, :]  # u's rows may be a slice of a wider GEMM
    uf = tl.load(u + pu, mask=m, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(of * of, 1) / V + eps)
    gate = tl.sigmoid(uf) if SIGMOID else uf * tl.sigmoid(uf)
    out = of * r[:, None] * tl.load(w + o_v).to(tl.float32)[None, :] * gate
    tl.store(y + p, out.to(y.dtype.element_ty), mask=m)


def add_rms_norm(
    x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [N, D] contiguous. Returns (s = x + y, written into x's buffer; RMSNorm(s) * weight); y None: s is x."""
    if not x.is_contiguous() or (y is not None and (not y.is_contiguous() or y.shape != x.shape)):
        raise ValueError(f"x and y must be contiguous [N, D] of one shape, got {tuple(x.shape)}")
    N, D = x.shape
    h = torch.empty_like(x)
    if N:
        BD = triton.next_power_of_2(D)
        BR = max(1, 2048 // BD)  # one row per program at model widths, several for narrow test models
        _add_rms_norm_kernel[(triton.cdiv(N, BR),)](x, x if y is None else y, weight, x, h, N, D, eps, BR=BR, BD=BD,
                                                    HAS_Y=y is not None, num_warps=min(16, max(1, BD // 256)))
    return x, h


def gated_rms_norm(o: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, eps: float, act: str) -> torch.Tensor:
    """o [T, H, V] contiguous, u [T, H*V] with unit column stride (rows may be strided). Returns [T, H*V] in o's
    dtype."""
    T, H, V = o.shape
    if not o.is_contiguous() or u.shape != (T, H * V) or (T and u.stride(1) != 1) or V & (V - 1):
        raise ValueError(f"o [T, H, V] contiguous (V a power of two) and u [T, H*V] with unit column stride; got "
                         f"{tuple(o.shape)}, {tuple(u.shape)}")
    y = torch.empty(T, H * V, dtype=o.dtype, device=o.device)
    R = T * H
    if R:
        BR = max(1, 2048 // V)
        _gated_rms_norm_kernel[(triton.cdiv(R, BR),)](o, u, u.stride(0), weight, y, R, H, eps, V=V, BR=BR,
                                                      SIGMOID=act == "sigmoid", num_warps=4)
    return y
