"""Input checks and small helpers shared by the GDN-2 Triton kernels (`chunk.py`, `fused_recurrent.py`).

Everything here runs on the host before any launch, so a bad call fails with a `ValueError` that names the
offending argument instead of a Triton crash or a silent wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Head sizes the kernels are built for (tiles are powers of two; 16 is the smallest `tl.dot` operand).
SUPPORTED_K = (16, 32, 64, 128)
SUPPORTED_V = (16, 32, 64, 128, 256)
INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_INT_DTYPES = (torch.int32, torch.int64)


@dataclass
class Inputs:
    """The checked (and made contiguous) arguments of one call."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    b: torch.Tensor
    w: torch.Tensor
    scale: float
    initial_state: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    bounds: list[int] | None  # cu_seqlens as a host list (None without cu_seqlens)
    B: int
    T: int
    H: int  # key heads (q, k, g, b)
    HV: int  # value heads (v, w); a multiple of H, head hv reads key head hv // (HV // H)
    K: int
    V: int
    N: int  # number of sequences (rows of the state)


def _contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_contiguous() else x.contiguous()


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> Inputs:
    """Validate a GDN-2 call; raise `ValueError` naming the argument at fault. Returns contiguous copies."""
    named = {"q": q, "k": k, "v": v, "g": g, "b": b, "w": w}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, T, H, D], got shape {tuple(x.shape)}")
    B, T, H, K = q.shape
    for name in ("k", "g", "b"):
        if tuple(named[name].shape) != (B, T, H, K):
            raise ValueError(f"{name} must have q's shape {(B, T, H, K)}, got {tuple(named[name].shape)}")
    HV, V = v.shape[2], v.shape[3]
    if tuple(v.shape[:2]) != (B, T):
        raise ValueError(f"v must have shape [B={B}, T={T}, HV, V] like q, got {tuple(v.shape)}")
    if HV == 0 or H == 0 or HV % H != 0:
        raise ValueError(f"v has {HV} heads, which is not a positive multiple of q's {H} heads")
    if tuple(w.shape) != tuple(v.shape):
        raise ValueError(f"w must have v's shape {tuple(v.shape)}, got {tuple(w.shape)}")
    if K not in SUPPORTED_K:
        raise ValueError(f"q/k head size K={K} is not supported; use one of {SUPPORTED_K}")
    if V not in SUPPORTED_V:
        raise ValueError(f"v head size V={V} is not supported; use one of {SUPPORTED_V}")

    device = q.device
    for name, x in named.items():
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but q is on {device}")
    if q.dtype not in INPUT_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; supported: bfloat16, float16, float32")
    for name in ("k", "v", "b", "w"):
        if named[name].dtype != q.dtype:
            raise ValueError(f"{name} has dtype {named[name].dtype} but q has {q.dtype}; they must match")
    if g.dtype != torch.float32:
        raise ValueError(f"g (log-decay) must be float32, got {g.dtype}")

    if scale is None:
        scale = K**-0.5
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a number, got {scale!r}") from None

    N = B
    bounds = None
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise ValueError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.dtype not in _INT_DTYPES:
            raise ValueError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if cu_seqlens.device != device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {device}")
        if B != 1:
            raise ValueError(f"cu_seqlens requires batch size 1 (packed sequences), got B={B}")
        bounds = [int(x) for x in cu_seqlens.tolist()]
        if bounds[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {bounds[0]}")
        if any(e < s for s, e in zip(bounds[:-1], bounds[1:])):
            raise ValueError("cu_seqlens must be non-decreasing")
        if bounds[-1] != T:
            raise ValueError(f"cu_seqlens must end at T={T}, got {bounds[-1]}")
        N = len(bounds) - 1
        cu_seqlens = _contig(cu_seqlens.to(torch.int32))

    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor):
            raise ValueError(f"initial_state must be a torch.Tensor, got {type(initial_state).__name__}")
        if tuple(initial_state.shape) != (N, HV, K, V):
            raise ValueError(f"initial_state must have shape {(N, HV, K, V)}, got {tuple(initial_state.shape)}")
        if initial_state.dtype != torch.float32:
            raise ValueError(f"initial_state must be float32, got {initial_state.dtype}")
        if initial_state.device != device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {device}")

    return Inputs(
        q=_contig(q), k=_contig(k), v=_contig(v), g=_contig(g), b=_contig(b), w=_contig(w), scale=scale,
        initial_state=None if initial_state is None else _contig(initial_state), cu_seqlens=cu_seqlens,
        bounds=bounds, B=B, T=T, H=H, HV=HV, K=K, V=V, N=N,
    )


# The name the brief (and the tests) use.
_check_inputs = check_inputs


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


# Reductions and scans as `tl.reduce` / `tl.associative_scan` with triton's own combine functions, rather than
# `tl.sum` / `tl.max` / `tl.cumsum`: the compiled code is the same, but those three are @triton.jit functions of
# triton's standard library, which Triton's CPU interpreter cannot call when triton itself was imported before
# TRITON_INTERPRET=1 was set (as happens when a test session imports torch first). The interpreter recognises
# these combine functions and runs them as numpy reductions.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


_SUM_COMBINE = getattr(tl.standard, "_sum_combine", _add)
_MAX_COMBINE = getattr(tl.standard, "_elementwise_max", _maximum)


@triton.jit
def tsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _SUM_COMBINE)


@triton.jit
def tmax(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _MAX_COMBINE)


@triton.jit
def tcumsum(x, axis: tl.constexpr, reverse: tl.constexpr = False):
    return tl.associative_scan(x, axis, _SUM_COMBINE, reverse=reverse)
