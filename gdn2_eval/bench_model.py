"""Model-level GPU checks and timings: kernel paths agree, long prefill, decoding with constant memory.

`python -m gdn2_eval.bench_model --out results/bench/model.json` (also `gdn2-eval bench model`). Random weights
(the numbers measure the implementation, not a trained model); every record names the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from .model import GDN2Config, GDN2ForCausalLM


def _sync_time(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _logits_and_seconds(model, ids, kernels, warmup_ids, repeats: int = 1, **kwargs) -> dict:
    """For each kernel in turn: {kernel: (the model's logits on `ids`, median seconds of `repeats` runs)}, after a
    warm-up on `warmup_ids` (Triton compiles and autotunes on first use)."""
    out = {}
    for kernel in kernels:
        model.config.kernel = kernel
        model(warmup_ids, **kwargs)
        runs = [_sync_time(lambda: model(ids, **kwargs).logits.float()) for _ in range(repeats)]
        out[kernel] = (runs[0][0], statistics.median(t for _, t in runs))
    return out


def _random_model(preset: str, dtype: torch.dtype, kernel: str) -> GDN2ForCausalLM:
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GDN2ForCausalLM(GDN2Config.from_preset(preset, kernel=kernel))
    return model.to(dtype).eval()


@torch.no_grad()
def kernel_paths_agree(preset: str, tokens: int) -> dict:
    """Logits of the fla path vs the PyTorch path, both bf16, and each against a float32 PyTorch-path reference."""
    model = _random_model(preset, torch.float32, "torch")
    ids = torch.randint(0, 32000, (1, tokens), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    ref = model(ids).logits.float()
    model = model.to(torch.bfloat16)
    out = _logits_and_seconds(model, ids, ("torch", "fla"), ids[:, :256])
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    fla, tor = out["fla"][0], out["torch"][0]
    top1 = (fla.argmax(-1) == tor.argmax(-1)).float().mean().item()
    return {
        "check": "fla vs torch logits",
        "preset": preset,
        "tokens": tokens,
        "rel_err_fla_vs_torch_bf16": rel(fla, tor),
        "rel_err_fla_bf16_vs_fp32": rel(fla, ref),
        "rel_err_torch_bf16_vs_fp32": rel(tor, ref),
        "max_abs_diff_fla_vs_torch": (fla - tor).abs().max().item(),
        "top1_agreement": top1,
        "seconds_torch": out["torch"][1],
        "seconds_fla": out["fla"][1],
        "finite": bool(torch.isfinite(fla).all() and torch.isfinite(tor).all()),
    }


@torch.no_grad()
def long_prefill(preset: str, tokens: int, kernel: str) -> dict:
    model = _random_model(preset, torch.bfloat16, kernel)
    ids = torch.randint(0, 32000, (1, tokens), device="cuda")
    model(ids, logits_to_keep=1)  # warm-up at the same shape: Triton compiles and autotunes on first use
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out, seconds = _sync_time(lambda: model(ids, logits_to_keep=1).logits)
    return {
        "check": "prefill",
        "preset": preset,
        "tokens": tokens,
        "kernel": kernel,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_above_weights_gib": (torch.cuda.max_memory_allocated() - base) / 2**30,
        "finite": bool(torch.isfinite(out).all()),
    }


@torch.no_grad()
def prefill_ours_vs_fla(preset: str = "gdn2_1.3B", tokens: int = 65536, repeats: int = 3) -> dict:
    """One model, the same prompt, prefilled with this project's kernels and with fla's: median seconds and ratio."""
    model = _random_model(preset, torch.bfloat16, "triton")
    ids = torch.randint(0, 32000, (1, tokens), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    out = _logits_and_seconds(model, ids, ("triton", "fla"), ids, repeats, logits_to_keep=1)
    logits, seconds = ({kernel: r[i] for kernel, r in out.items()} for i in (0, 1))
    diff = (logits["triton"] - logits["fla"]).norm() / logits["fla"].norm()
    return {
        "check": "prefill ours vs fla",
        "preset": preset,
        "tokens": tokens,
        "seconds_ours": seconds["triton"],
        "seconds_fla": seconds["fla"],
        "fla_over_ours": seconds["fla"] / seconds["triton"],
        "last_logits_rel_diff": diff.item(),
        "finite": bool(torch.isfinite(logits["triton"]).all()),
    }


@torch.no_grad()
def decode_after_prompt(preset: str, prompts: tuple[int, ...], new_tokens: int, kernel: str) -> list[dict]:
    """Prefill, then greedy decoding; peak memory of the decoding phase alone, per prompt length."""
    model = _random_model(preset, torch.bfloat16, kernel)
    records = []
    warm = torch.randint(0, 32000, (1, 300), device="cuda")
    model.generate(warm, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)  # compile kernels
    for n in prompts:
        ids = torch.randint(0, 32000, (1, n), device="cuda")
        out = model(ids, use_cache=True, logits_to_keep=1)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        gen, gen_seconds = _sync_time(
            lambda ids=ids: model.generate(
                ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        )
        records.append(
            {
                "check": "decode",
                "preset": preset,
                "prompt_tokens": n,
                "new_tokens": new_tokens,
                "kernel": kernel,
                "decode_seconds": seconds,
                "decode_tokens_per_second": new_tokens / seconds,
                "decode_peak_above_start_mib": (torch.cuda.max_memory_allocated() - before) / 2**20,
                "cache_mib": cache.nbytes() / 2**20,
                "generate_seconds": gen_seconds,
                "generate_shape": list(gen.shape),
            }
        )
        del cache, out
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("results/bench/model.json"))
    parser.add_argument("--kernel", default="fla", help="kernel for the timing runs (fla, triton, torch)")
    parser.add_argument("--skip-agree", action="store_true")
    parser.add_argument("--ours-vs-fla", action="store_true",
                        help="only the end-to-end 64K prefill of gdn2_1.3B with our kernels against fla's")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name()
    records: list[dict] = []

    def add(rec):
        rec = rec if isinstance(rec, list) else [rec]
        for r in rec:
            r["device"] = device
            print(json.dumps(r), flush=True)
        records.extend(rec)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": device, "torch": torch.__version__, "records": records}, indent=1))

    if args.ours_vs_fla:
        add(prefill_ours_vs_fla())
        return save()
    if not args.skip_agree:
        for preset in ("swa_gdn2_100M", "gdn2_12h_305M"):
            add(kernel_paths_agree(preset, 8192))
    for preset in ("gdn2_1.3B", "swa_gdn2_1.3B"):
        add(long_prefill(preset, 65536, args.kernel))
    for preset in ("gdn2_1.3B", "swa_gdn2_1.3B"):
        add(decode_after_prompt(preset, (8192, 32768), 128, args.kernel))
    save()


if __name__ == "__main__":
    main()
