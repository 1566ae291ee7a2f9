"""The inference path's fused operators: each a Triton kernel with its PyTorch reference beside it (`naive.py` in
its folder). `fused_ops(device)` picks the kernels wherever Triton can launch (CUDA, or the interpreter in the CPU
tests) and the references elsewhere, so the inference model also runs, slowly, on a plain CPU."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .dispatch import triton_runs_on


@dataclass(frozen=True)
class FusedOps:
    short_conv: Callable  # packed prefill: (x, weight, cu, seq_idx, pos, state, state_rows, splits) -> (q,k,v), state
    short_conv_step: Callable  # decode: (x, weight, state (in place), splits) -> (q, k, v)
    gates: Callable  # (P, f, A_log, dt_bias, GateLayout) -> g fp32, b, w
    add_rms_norm: Callable  # (x, y | None, weight, eps) -> (x + y, RMSNorm(x + y))
    gated_rms_norm: Callable  # (o [T, H, V], u [T, H*V], weight, eps, act) -> [T, H*V]
    swiglu: Callable  # ab [T, 2I] -> [T, I]
    # the mixer's decode step between its projections, conv + gates + recurrence + gated norm (`decode/`):
    # (P, f, u, conv_w, conv_state, state (both in place), A_log, dt_bias, norm_w, GateLayout, eps, act, scale, l2)
    decode_step: Callable
    linear: Callable  # (x [M, K], weight, bias | None) -> [M, N]: F.linear, or for a few rows a pinned Triton GEMM
    kind: str  # "triton" | "torch"


@functools.cache
def _references() -> FusedOps:
    from .conv.naive import short_conv_step_ref, short_conv_varlen_ref
    from .decode.naive import decode_step_ref
    from .gates.naive import gdn2_gates_ref
    from .linear.naive import linear_ref
    from .norm.naive import add_rms_norm_ref, gated_rms_norm_ref
    from .swiglu.naive import swiglu_ref

    def conv(x, weight, cu, seq_idx, pos, state, state_rows, splits):
        return short_conv_varlen_ref(x, weight, cu, state, state_rows, splits)

    return FusedOps(conv, short_conv_step_ref, gdn2_gates_ref, add_rms_norm_ref, gated_rms_norm_ref, swiglu_ref,
                    decode_step_ref, linear_ref, "torch")


@functools.cache
def _triton() -> FusedOps:
    from .conv.short_conv import short_conv_step, short_conv_varlen
    from .decode.fused_step import fused_decode_step
    from .gates.gdn2_gates import gdn2_gates
    from .linear.skinny import decode_linear
    from .norm.rms_norm import add_rms_norm, gated_rms_norm
    from .swiglu.swiglu import swiglu

    return FusedOps(short_conv_varlen, short_conv_step, gdn2_gates, add_rms_norm, gated_rms_norm, swiglu,
                    fused_decode_step, decode_linear, "triton")


def fused_ops(device: torch.device | str) -> FusedOps:
    return _triton() if triton_runs_on(device) else _references()
