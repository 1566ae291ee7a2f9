"""The one place that picks which implementation runs the GDN-2 recurrence.

Backends:
* ``torch``  - plain PyTorch (chunkwise for prefill, token by token for decoding); any device.
* ``fla``    - fla's ``chunk_gdn2`` / ``fused_recurrent_gdn2`` Triton kernels; CUDA only.
* ``triton`` - this project's inference kernels (``gdn2_eval.kernels.gdn2.chunk`` / ``fused_recurrent``, and on the
  inference path the fused decode step ``gdn2_eval.kernels.decode``); CUDA, or the CPU under Triton's interpreter.

``auto`` takes the best available for the device: on CUDA fla's kernels first, then ours, then PyTorch. Our
kernels pass their correctness tests (CPU interpreter and GPU) but are not yet faster than fla at the benchmark
shapes (see ``results/bench/kernels_h100.json``), so ``auto`` prefers them only once ``TRITON_PREFERRED`` is set.
The inference path's one-token step is the exception (``STEP_TRITON_PREFERRED``): there ``auto`` takes the fused
decode step, which is faster than fla's recurrence plus the separate conv, gates and norm kernels on both GPUs
measured (``results/bench/model_h100.json``, ``decode_sweep_h200.json``).
A request comes from the model config (``kernel``) and can be overridden without touching the config through the
``GDN2_KERNEL`` environment variable.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

import torch

from .gdn2.torch_impl import chunk_gdn2_torch, recurrent_gdn2_torch

ENV_VAR = "GDN2_KERNEL"
BACKENDS = ("auto", "triton", "fla", "torch")
# Inputs up to this many tokens per sequence go through the token-by-token kernel (decoding, short continuations).
RECURRENT_MAX_T = 16
# Whether `auto` on CUDA puts this project's kernels before fla's. Set only when they are both correct and not
# slower than fla at every benchmark shape (`gdn2-eval bench kernels`); until then they are selectable by name.
TRITON_PREFERRED = False
# Whether `auto` on CUDA takes this project's kernels for the inference path's one-token step (the fused decode step,
# `kernels/decode`): 0.90-0.97x fla's step time at batch 1-64 on the H100 and the H200.
STEP_TRITON_PREFERRED = True


def triton_runs_on(device: torch.device | str) -> bool:
    """Whether Triton kernels can launch for tensors on `device`: on CUDA, or anywhere under Triton's interpreter
    (how the CPU tests run them)."""
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _cuda_preference() -> tuple[str, ...]:
    """Preference order for `auto` on CUDA."""
    return ("triton", "fla", "torch") if TRITON_PREFERRED else ("fla", "triton", "torch")


@functools.cache  # asked on every forward (every decode step); what is installed does not change mid-run
def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _triton_kernels_ready() -> bool:
    return _has_module("triton") and _has_module("gdn2_eval.kernels.gdn2.chunk")


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on `device`, best first."""
    if torch.device(device).type != "cuda":
        # under Triton's interpreter (the CPU tests) the project's kernels run too, by name only
        return ["torch", "triton"] if triton_runs_on(device) and _triton_kernels_ready() else ["torch"]
    ready = {"triton": _triton_kernels_ready(), "fla": _has_module("fla"), "torch": True}
    return [name for name in _cuda_preference() if ready[name]]


def resolve_backend(requested: str | None, device: torch.device | str, fused_step: bool = False) -> str:
    """Turn a request (config field, maybe overridden by $GDN2_KERNEL) into a concrete backend for `device`.
    `fused_step`: for the inference path's one-token step, where `auto` may choose differently."""
    choice = (os.environ.get(ENV_VAR) or requested or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown GDN-2 kernel {choice!r}; choose one of {', '.join(BACKENDS)}")
    usable = available_backends(device)
    on_cuda = torch.device(device).type == "cuda"
    if choice == "auto":
        if fused_step and STEP_TRITON_PREFERRED and on_cuda and "triton" in usable:
            return "triton"
        return usable[0]
    if choice not in usable:
        why = "is not installed" if on_cuda else "needs a CUDA device"
        raise ValueError(f"GDN-2 kernel {choice!r} {why}; available here: {', '.join(usable)}")
    return choice


def _fla_ops() -> tuple[Callable, Callable]:
    from .fla_configs import use_pinned_configs

    use_pinned_configs()  # before fla's first import: its launch configurations for this GPU, no autotuning
    from fla.ops.gdn2 import chunk_gdn2
    from fla.ops.gdn2.fused_recurrent import fused_recurrent_gdn2_fwd

    def chunk(q, k, v, g, b, w, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm):
        return chunk_gdn2(q, k, v, g, b, w, scale=scale, initial_state=initial_state,
                          output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm,
                          cu_seqlens=cu_seqlens)

    def recurrent(q, k, v, g, b, w, scale, initial_state, output_final_state, cu_seqlens, use_qk_l2norm,
                  inplace_final_state=False):
        # the forward entry point, which can write the final state in place (the public wrapper cannot)
        return fused_recurrent_gdn2_fwd(q, k, v, g, b, w, initial_state=initial_state, scale=scale,
                                        output_final_state=output_final_state or inplace_final_state,
                                        inplace_final_state=inplace_final_state, cu_seqlens=cu_seqlens,
                                        use_qk_l2norm_in_kernel=use_qk_l2norm)

    return chunk, recurrent


def _triton_ops() -> tuple[Callable, Callable]:
    from .gdn2.chunk import chunk_gdn2_fwd
    from .gdn2.fused_recurrent import fused_recurrent_gdn2_fwd

    return chunk_gdn2_fwd, fused_recurrent_gdn2_fwd


def _ops(backend: str) -> tuple[Callable, Callable]:
    if backend == "fla":
        return _fla_ops()
    if backend == "triton":
        return _triton_ops()
    return chunk_gdn2_torch, recurrent_gdn2_torch


def gdn2_recurrence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    *,
    backend: str,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
    inplace_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the GDN-2 recurrence with a resolved `backend` (see `resolve_backend`).

    q, k, g, b: [B, T, H, K]; v, w: [B, T, H, V]; g is the float32 log-decay; state [N, H, K, V] float32.
    Returns (o [B, T, H, V] in v's dtype, final state or None). With `inplace_final_state` the final state is
    written into `initial_state` (contiguous) and returned: a decode step then keeps its state's address, which is
    what a captured CUDA graph replays over.
    """
    chunk, recurrent = _ops(backend)
    if inplace_final_state and (initial_state is None or not initial_state.is_contiguous()):
        raise ValueError("inplace_final_state needs a contiguous initial_state")
    if cu_seqlens is None:
        longest = q.shape[1]
    else:
        longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if inplace_final_state and longest <= RECURRENT_MAX_T and backend != "torch":
        return recurrent(q, k, v, g, b, w, scale=scale, initial_state=initial_state, output_final_state=True,
                         cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm, inplace_final_state=True)
    fn = recurrent if longest <= RECURRENT_MAX_T else chunk
    o, state = fn(
        q,
        k,
        v,
        g,
        b,
        w,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state or inplace_final_state,
        cu_seqlens=cu_seqlens,
        use_qk_l2norm=use_qk_l2norm,
    )
    if inplace_final_state:
        initial_state.copy_(state)
        state = initial_state
    return o, state
