"""x [M, K] @ W[N, K]^T (+ bias) for M up to 64 rows, the shape of every projection in a decode step.

At a few rows a GEMM only streams its weight once, so its time is the weight's bytes over the memory bandwidth. Each
program reads a [BN, K] strip of W (in BK-wide tiles, `num_stages` in flight) against all M rows padded to a tensor-core
tile; with `split_k` > 1 the K axis is cut into that many slices whose float32 partial sums a second kernel adds in a
fixed order (so the result does not depend on scheduling) together with the bias, rounding once to x's dtype, as
cuBLAS's split-K does. Launch configurations are chosen per GPU ahead of time (`bench gemv`), never tuned at run time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..fla_configs import gpu_dir_name

MAX_ROWS = 64
# rows the configurations are chosen for: a call with M rows takes the first bucket >= M
ROW_BUCKETS = (1, 16, 64)
PIN_ROOT = Path(__file__).parent.parent / "configs" / "skinny"


@dataclass(frozen=True)
class SkinnyConfig:
    block_n: int = 32
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4


@triton.jit
def _skinny_kernel(x, w, bias, out, M, N, K, sx, sw, so, k_per_split,
                   HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   PARTIAL: tl.constexpr, UPCAST: tl.constexpr):
    i_n, i_s = tl.program_id(0), tl.program_id(1)
    o_m = tl.arange(0, BM)
    o_n = (i_n * BN + tl.arange(0, BN)).to(tl.int64)
    m_m, m_n = o_m < M, o_n < N
    k_lo = i_s * k_per_split
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(k_lo, tl.minimum(k_lo + k_per_split, K), BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < tl.minimum(k_lo + k_per_split, K)
        xt = tl.load(x + o_m[:, None] * sx + o_k[None, :], mask=m_m[:, None] & m_k[None, :], other=0.0)
        wt = tl.load(w + o_n[:, None] * sw + o_k[None, :], mask=m_n[:, None] & m_k[None, :], other=0.0)
        if UPCAST:  # float32 inputs (no TF32, as F.linear), or the CPU interpreter, which cannot multiply bf16 tiles
            acc = tl.dot(xt.to(tl.float32), tl.trans(wt.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, tl.trans(wt), acc)
    mask = m_m[:, None] & m_n[None, :]
    if PARTIAL:  # float32 partial sums of this K slice: [split, M, N]
        tl.store(out + (i_s * M + o_m[:, None]) * N + o_n[None, :], acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias + o_n, mask=m_n, other=0.0).to(tl.float32)[None, :]
        tl.store(out + o_m[:, None] * so + o_n[None, :], acc.to(out.dtype.element_ty), mask=mask)


@triton.jit
def _split_sum_kernel(part, bias, out, M, N, so, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < M * N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SPLIT):  # a fixed order: the same bits on every run
        acc += tl.load(part + s * M * N + o, mask=m, other=0.0)
    n = o % N
    if HAS_BIAS:
        acc += tl.load(bias + n, mask=m, other=0.0).to(tl.float32)
    tl.store(out + (o // N) * so + n, acc.to(out.dtype.element_ty), mask=m)


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  config: SkinnyConfig = SkinnyConfig()) -> torch.Tensor:
    """Same contract as `naive.linear_ref` for x [M, K] with M <= MAX_ROWS and unit column stride (rows may be
    strided: a slice of a wider activation), weight [N, K] contiguous, bias [N] or None. Returns [M, N] contiguous."""
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x [M, K] and weight [N, K], got {tuple(x.shape)} and {tuple(weight.shape)}")
    M, K = x.shape
    N = weight.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"at most {MAX_ROWS} rows, got {M}")
    if (M and x.stride(1) != 1) or not weight.is_contiguous() or (bias is not None and bias.shape != (N,)):
        raise ValueError("x needs unit column stride, weight must be contiguous and bias [N]")
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    c = config
    BM = max(16, triton.next_power_of_2(M))  # tensor-core tiles have at least 16 rows
    split = max(1, min(c.split_k, triton.cdiv(K, c.block_k)))
    k_per_split = triton.cdiv(triton.cdiv(K, split), c.block_k) * c.block_k
    split = triton.cdiv(K, k_per_split)
    grid = (triton.cdiv(N, c.block_n), split)
    b = weight if bias is None else bias
    upcast = x.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    if split == 1:
        _skinny_kernel[grid](x, weight, b, out, M, N, K, x.stride(0), weight.stride(0), out.stride(0), k_per_split,
                             HAS_BIAS=bias is not None, BM=BM, BN=c.block_n, BK=c.block_k, PARTIAL=False, UPCAST=upcast,
                             num_warps=c.num_warps, num_stages=c.num_stages)
        return out
    part = torch.empty(split, M, N, dtype=torch.float32, device=x.device)
    _skinny_kernel[grid](x, weight, b, part, M, N, K, x.stride(0), weight.stride(0), N, k_per_split,
                         HAS_BIAS=False, BM=BM, BN=c.block_n, BK=c.block_k, PARTIAL=True, UPCAST=upcast,
                         num_warps=c.num_warps, num_stages=c.num_stages)
    BLOCK = 1024
    _split_sum_kernel[(triton.cdiv(M * N, BLOCK),)](part, b, out, M, N, out.stride(0), SPLIT=split,
                                                   HAS_BIAS=bias is not None, BLOCK=BLOCK, num_warps=4)
    return out


# ---- configurations chosen per GPU ahead of time (`gdn2-eval bench gemv` writes them) -----------------------------
def pin_file(device_name: str) -> Path:
    return PIN_ROOT / f"{gpu_dir_name(device_name)}.json"


def write_pins(device_name: str, rows: list[dict]) -> Path:
    """rows: {"n", "k", "rows", "config": SkinnyConfig, "faster": bool} for each weight shape and row bucket."""
    path = pin_file(device_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"device": device_name, "configs": [{**r, "config": asdict(r["config"])} for r in rows]}
    path.write_text(json.dumps(data, indent=1) + "\n")
    _pins.cache_clear()
    return path


@functools.cache
def _pins(device_name: str) -> dict[tuple[int, int, int], SkinnyConfig]:
    """The shapes where this kernel beat cuBLAS on this GPU, with the configuration that did."""
    path = pin_file(device_name)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {(e["n"], e["k"], e["rows"]): SkinnyConfig(**e["config"]) for e in data["configs"] if e["faster"]}


@functools.cache
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


# off: cuBLAS everywhere (what the benchmarks compare the pinned kernels against)
ENABLED = {"pins": True}


@contextlib.contextmanager
def pins_disabled():
    ENABLED["pins"] = False
    try:
        yield
    finally:
        ENABLED["pins"] = True


def has_pins(device: torch.device) -> bool:
    return bool(_pins(_device_name(device)))


def pinned_config(M: int, N: int, K: int, device: torch.device) -> SkinnyConfig | None:
    if M == 0 or M > MAX_ROWS or not ENABLED["pins"]:
        return None
    bucket = next(r for r in ROW_BUCKETS if r >= M)
    return _pins(_device_name(device)).get((N, K, bucket))


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` for x [M, K], taking this kernel where it was measured faster for that weight shape and row count
    on this GPU; cuBLAS everywhere else (prefill, other GPUs, shapes never measured)."""
    cfg = pinned_config(x.shape[0], weight.shape[0], weight.shape[1], x.device) if x.dim() == 2 else None
    if cfg is None or x.stride(-1) != 1:
        return F.linear(x, weight, bias)
    return skinny_linear(x, weight, bias, cfg)
