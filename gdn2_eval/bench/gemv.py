"""The decode step's GEMMs at a few rows: cuBLAS (`F.linear`) against the project's few-row Triton GEMM
(`kernels/linear/skinny.py`) over a small grid of launch configurations, for every weight shape the step of a preset
multiplies by and each row bucket.

`gdn2-eval bench gemv` writes `results/bench/gemv_<gpu>.json` (per shape and row count: both times, the bandwidth
each reached, the best configuration) and, with `--pin`, `kernels/configs/skinny/<GPU>.json`: the configurations that
beat cuBLAS, which the inference model's step then takes on this GPU (nothing is tuned at run time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import triton

from ..kernels.linear.skinny import ROW_BUCKETS, SkinnyConfig, skinny_linear, write_pins

CONFIGS = [SkinnyConfig(block_n=bn, block_k=bk, split_k=sk, num_warps=4, num_stages=4)
           for bn in (16, 32, 64) for bk in (128, 256) for sk in (1, 2, 4)]
# a configuration must beat cuBLAS by this much to be pinned (timings of a few microseconds are noisy)
MARGIN = 0.97


def step_weights(preset: str) -> list[tuple[str, torch.Size, bool]]:
    """(name, weight shape [N, K], has bias) of each GEMM in the inference model's decode step, built on the meta
    device (no memory, no weights)."""
    from ..inference import GDN2InferenceForCausalLM
    from ..model import GDN2Config, GDN2ForCausalLM

    with torch.device("meta"):
        model = GDN2InferenceForCausalLM.from_reference(GDN2ForCausalLM(GDN2Config.from_preset(preset)))
    block = next(b for b in model.layers if b.layer_type == "gdn2")
    out = [("w_in", block.attn.w_in.shape, False)]
    if block.attn.fg1_w is not None:
        out.append(("f1|g1", block.attn.fg1_w.shape, True))
    else:
        out.append(("g1", block.attn.g1_w.shape, True))
    out += [("o_proj", block.attn.o_proj.shape, False), ("w1|w2", block.w12.shape, False),
            ("w3", block.w3.shape, False), ("lm_head", model.lm_head.weight.shape, model.lm_head.bias is not None)]
    return out


def _us(fn) -> float:
    import triton.testing

    return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=30)


def run_gemv_bench(preset: str, rows: tuple[int, ...] = ROW_BUCKETS, log=print) -> list[dict[str, Any]]:
    g = torch.Generator("cuda").manual_seed(0)
    table = []
    for name, (N, K), with_bias in step_weights(preset):
        w = (0.02 * torch.randn(N, K, device="cuda", generator=g)).bfloat16()
        b = torch.randn(N, device="cuda", generator=g).bfloat16() if with_bias else None
        for M in rows:
            x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
            want = F.linear(x, w, b)
            t_cublas = _us(lambda x=x, w=w, b=b: F.linear(x, w, b))
            best, best_us, worst_err = None, float("inf"), 0.0
            skipped = 0
            for cfg in CONFIGS:
                try:
                    y = skinny_linear(x, w, b, cfg)
                except triton.runtime.errors.OutOfResources:  # tiles too large for this GPU's shared memory
                    skipped += 1
                    continue
                err = ((y.float() - want.float()).norm() / want.float().norm()).item()
                worst_err = max(worst_err, err)
                if err > 1e-2:
                    raise AssertionError(f"{name} M={M} {cfg}: relative error {err:.3g} against F.linear")
                t = _us(lambda x=x, w=w, b=b, cfg=cfg: skinny_linear(x, w, b, cfg))
                if t < best_us:
                    best, best_us = cfg, t
            nbytes = N * K * 2
            row = {"name": name, "n": N, "k": K, "rows": M, "weight_bytes": nbytes, "cublas_us": t_cublas,
                   "skinny_us": best_us, "speedup": t_cublas / best_us, "cublas_bytes_per_s": nbytes / t_cublas * 1e6,
                   "skinny_bytes_per_s": nbytes / best_us * 1e6, "config": best,
                   "faster": best_us < MARGIN * t_cublas, "max_rel_err": worst_err, "configs_skipped": skipped}
            log({k: (v.__dict__ if isinstance(v, SkinnyConfig) else v) for k, v in row.items()})
            table.append(row)
    return table


def main(out: Path, preset: str, rows: tuple[int, ...], pin: bool) -> dict[str, Any]:
    device = torch.cuda.get_device_name()
    report: dict[str, Any] = {"device": device, "preset": preset, "configs_tried": len(CONFIGS), "margin": MARGIN,
                              "rows": []}
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(row: dict) -> None:  # after every shape, so that a run cut short keeps what it measured
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
        out.write_text(json.dumps(report, indent=1) + "\n")

    table = run_gemv_bench(preset, rows, log=save)
    if pin:
        report["pinned"] = str(write_pins(device, [{k: r[k] for k in ("n", "k", "rows", "config", "faster")}
                                                   for r in table]))
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report
