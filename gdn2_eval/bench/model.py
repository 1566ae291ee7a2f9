"""The model end to end on a GPU: prefill and decode of `gdn2_1.3B` against fla's Gated DeltaNet 1.3B, the decode
step against its memory floor, the cold start, and how closely the inference path follows the reference.

`gdn2-eval bench model` (or `python -m gdn2_eval.bench.model`) writes `results/bench/model_<gpu>.json`:

* ``ceilings``: the measured device-to-device copy bandwidth and bf16 matmul rate (what the floors and `peak_frac`
  are computed from);
* ``prefill``: tokens/s per shape for the inference path (``ours_tok_s``), the reference path (``ref_tok_s``) and fla's
  `GatedDeltaNetForCausalLM` (``fla_gdn_tok_s``), ``ratio`` = ours / fla, ``peak_frac`` = achieved block-matmul FLOP/s
  (2 x block matmul parameters x tokens) over the measured bf16 rate;
* ``decode``: one captured greedy step after a 4K prompt per row, against ``floor_ms`` = (weights + every row's state
  read and written) / copy bandwidth;
* ``cold_start``: a new process to the end of its first forward, with an empty and with a warm Triton cache;
* ``agreement``: relative logits error of the inference path against the reference path (both bf16), and of each
  against the reference in float32, which gives the scale of bf16 rounding itself.

Random weights (the figures measure the implementation, not a model); one process, the same inputs for every path,
each figure the median of `--repeats` runs after a warm-up at the same shape (the first call compiles).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..model import GDN2Config, GDN2ForCausalLM

PREFILL_SHAPES = ((1, 4096), (1, 16384), (1, 65536), (1, 131072), (8, 4096))
DECODE_BATCHES = (1, 16, 64)
DECODE_PROMPT = 4096
# fla's Gated DeltaNet of about 1.3B parameters: hidden 2048, 21 layers, 16 heads of 128 (values not expanded)
FLA_GDN = dict(hidden_size=2048, num_hidden_layers=21, num_heads=16, head_dim=128, expand_v=1.0, vocab_size=32000,
               use_cache=False)


def _timed(fn, repeats: int) -> tuple[object, float]:
    """(last output, median seconds) of `repeats` synchronised runs."""
    times, out = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def ceilings() -> dict:
    """Copy bandwidth (bytes read + written) and bf16 matmul rate, measured here."""
    x = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    _timed(lambda: y.copy_(x), 3)
    _, t = _timed(lambda: y.copy_(x), 20)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    _timed(lambda: a @ b, 3)
    _, tm = _timed(lambda: a @ b, 20)
    return {"copy_bytes_per_s": 2 * x.numel() * 2 / t, "bf16_matmul_flop_per_s": 2 * 8192**3 / tm}


def random_models(preset: str, kernel: str) -> tuple[GDN2ForCausalLM, torch.nn.Module]:
    """(reference, inference) on the same random bf16 weights."""
    from ..inference import GDN2InferenceForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        ref = GDN2ForCausalLM(GDN2Config.from_preset(preset, kernel=kernel))
    ref = ref.to(torch.bfloat16).eval()
    return ref, GDN2InferenceForCausalLM.from_reference(copy.deepcopy(ref))


def fla_gdn_model() -> torch.nn.Module | None:
    from ..kernels.fla_configs import use_pinned_configs

    use_pinned_configs()
    try:
        from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    except ImportError:
        return None
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**FLA_GDN))
    return model.to(torch.bfloat16).eval()


def block_matmul_params(model: torch.nn.Module) -> int:
    """Parameters of the 2-D weights inside the blocks (what the prefill's matmuls read per token)."""
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in f".{n}" and p.dim() == 2)


@contextlib.contextmanager
def kernel_as(model: torch.nn.Module, kernel: str | None):
    """`model` with another recurrence backend for the duration (its config is read on every forward); None: as
    it is (fla's own model)."""
    if kernel is None:
        yield model
        return
    saved, model.config.kernel = model.config.kernel, kernel
    try:
        yield model
    finally:
        model.config.kernel = saved


@torch.no_grad()
def prefill(ref, ours, fla, shapes, kernels, repeats: int, peak: float, log) -> list[dict]:
    """`ours_tok_s` is the inference path with the run's kernel; `ours_<k>_tok_s` with each recurrence kernel `k`."""
    rows = []
    flops_per_token = 2 * block_matmul_params(ref)
    for B, T in shapes:
        ids = torch.randint(0, 32000, (B, T), device="cuda", generator=torch.Generator("cuda").manual_seed(B * T))
        row = {"batch": B, "tokens": T, "total_tokens": B * T}
        runs = {f"ours_{k}": (ours, {"packed": True}, k) for k in kernels}
        runs["ref"] = (ref, {"packed": True}, ref.config.kernel)
        if fla is not None:  # packed as one stream with cu_seqlens, as ours packs the batch
            cu = torch.arange(0, B * T + 1, T, device="cuda")
            runs["fla_gdn"] = (fla, {"cu_seqlens": cu} if B > 1 else {}, None)
        for name, (model, kwargs, kernel) in runs.items():
            x = ids.reshape(1, -1) if name == "fla_gdn" else ids
            call = lambda m=model, x=x, kw=kwargs: m(x, logits_to_keep=1, **kw).logits  # noqa: E731
            with kernel_as(model, kernel):
                call()  # compiles (and fla autotunes) for this shape
                torch.cuda.reset_peak_memory_stats()
                _, seconds = _timed(call, repeats)
            row[f"{name}_tok_s"] = B * T / seconds
            row[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["ours_tok_s"] = row[f"ours_{kernels[0]}_tok_s"]
        row["ratio"] = row["ours_tok_s"] / row["fla_gdn_tok_s"] if "fla_gdn_tok_s" in row else None
        row["ours_over_ref"] = row["ours_tok_s"] / row["ref_tok_s"]
        row["peak_frac"] = flops_per_token * row["ours_tok_s"] / peak
        log(row)
        rows.append(row)
    return rows


@torch.no_grad()
def decode(ref, ours, batches, kernels, copy_bw: float, steps: int, log) -> list[dict]:
    """One greedy step, captured as a CUDA graph over the cache's fixed buffers, after a 4K prompt per row.
    `step_ms` is the inference path with the run's kernel, `step_ms_<k>` with each recurrence kernel `k`."""
    from ..generation import GraphDecoder
    from ..generation import prefill as prefill_prompts
    from ..kernels.linear import skinny

    # the checkpoint's bytes: what any implementation must read (the inference layout's block-diagonal branch
    # weight reads some zeros more, which is this implementation's overhead, not the floor's)
    weight_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
    pinned = skinny.has_pins(next(ours.parameters()).device)
    rows = []
    for B in batches:
        prompts = torch.randint(0, 32000, (B, DECODE_PROMPT), generator=torch.Generator().manual_seed(B)).tolist()
        row = {"batch": B, "prompt_tokens": DECODE_PROMPT}
        runs = [(f"step_ms_{k}", ours, k, False) for k in kernels] + [("ref_step_ms", ref, ref.config.kernel, False)]
        if pinned:  # the few-row GEMMs pinned for this GPU against cuBLAS's, with the run's recurrence kernel
            runs.append(("step_ms_cublas_gemms", ours, kernels[0], True))
        for name, model, kernel, cublas in runs:
            with kernel_as(model, kernel), (skinny.pins_disabled() if cublas else contextlib.nullcontext()):
                cache, last = prefill_prompts(model, prompts, 0, 65536)
                state_bytes = cache.nbytes()
                decoder = GraphDecoder(model, cache, last.argmax(-1))
                for _ in range(3):  # eager warm-up, capture, a replay
                    decoder.step()
                _, seconds = _timed(decoder.step, steps)
            row[name] = 1e3 * seconds
            del decoder, cache
        row["step_ms"] = row[f"step_ms_{kernels[0]}"]
        row["state_bytes"] = state_bytes
        row["floor_ms"] = 1e3 * (weight_bytes + 2 * state_bytes) / copy_bw
        row["over_floor"] = row["step_ms"] / row["floor_ms"]
        log(row)
        rows.append(row)
    return rows


@torch.no_grad()
def agreement(ref, ours, lengths, keep: int, log) -> list[dict]:
    """Relative logits error over the last `keep` positions (which see the whole context through the state)."""
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    ref32 = copy.deepcopy(ref).float()
    ref32.config.kernel = "torch"  # the plain PyTorch recurrence, in float32
    rows = []
    for T in lengths:
        ids = torch.randint(0, 32000, (1, T), device="cuda", generator=torch.Generator("cuda").manual_seed(T))
        exact = ref32(ids, logits_to_keep=keep).logits.float()
        r = ref(ids, logits_to_keep=keep).logits.float()
        o = ours(ids, logits_to_keep=keep).logits.float()
        row = {"tokens": T, "positions": keep, "ours_vs_ref_bf16": rel(o, r), "ours_bf16_vs_fp32": rel(o, exact),
               "ref_bf16_vs_fp32": rel(r, exact),
               "top1_ours_vs_ref": (o.argmax(-1) == r.argmax(-1)).float().mean().item(),
               "finite": bool(torch.isfinite(o).all())}
        log(row)
        rows.append(row)
        del exact, r, o
    del ref32
    return rows


@torch.no_grad()
def profile(ours, B: int, T: int, path: Path) -> None:
    """torch.profiler table of one packed prefill on the inference path: where its GPU time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ids = torch.randint(0, 32000, (B, T), device="cuda")
    ours(ids, logits_to_keep=1, packed=True)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        ours(ids, logits_to_keep=1, packed=True)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    path.write_text(f"# {torch.cuda.get_device_name()}: one packed prefill of {B} x {T} tokens, inference path\n"
                    + table)


def cold_start(preset: str, kernel: str, cache_dir: str) -> dict:
    """A new process: import, build the model, its first prefill (1 x 4K) and decode step; with TRITON_CACHE_DIR."""
    env = {**os.environ, "TRITON_CACHE_DIR": cache_dir, "GDN2_T0": repr(time.time())}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gdn2_eval.bench.first_forward", "--preset", preset,
                          "--kernel", kernel], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        return {"error": res.stderr[-2000:], "wall_s": wall}
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "wall_s": wall}


def gpu_slug() -> str:
    return torch.cuda.get_device_name().lower().replace("nvidia", "").strip().split()[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON to write [default: results/bench/model_<gpu>.json]")
    ap.add_argument("--preset", default="gdn2_1.3B")
    ap.add_argument("--kernel", default="auto", help="GDN-2 recurrence kernels: auto, fla, triton")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="ceilings,cold_start,prefill,decode,agreement,profile",
                    help="comma-separated parts to run")
    ap.add_argument("--shapes", default=",".join(f"{b}x{t}" for b, t in PREFILL_SHAPES),
                    help="prefill shapes, comma-separated BxT")
    ap.add_argument("--batches", default=",".join(map(str, DECODE_BATCHES)), help="decode batch sizes")
    ap.add_argument("--compare-kernels", default="",
                    help="further recurrence kernels to time the inference path with (prefill and decode)")
    ap.add_argument("--dump-fla-configs", type=Path,
                    help="at the end, write the launch configurations fla's autotuner chose here as fla config files "
                         "in this folder (what kernels/configs/fla/<GPU>/ keeps)")
    ap.add_argument("--merge", action="store_true", help="update the JSON's other keys rather than replacing it")
    ap.add_argument("--cold-kernels", default="auto",
                    help="recurrence kernels to time the cold start with, each from its own empty cache")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench model needs a CUDA device")
    parts = set(args.parts.split(","))
    out = args.out or Path(f"results/bench/model_{gpu_slug()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = json.loads(out.read_text()) if args.merge and out.exists() else {}
    report.update(device=torch.cuda.get_device_name(), torch=torch.__version__, preset=args.preset,
                  kernel=args.kernel, command=" ".join(sys.argv))
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",") if s]
    batches = [int(b) for b in args.batches.split(",") if b]

    def save():
        out.write_text(json.dumps(report, indent=1) + "\n")

    def logger(key, *ident):  # each row printed and saved as it comes, so a run cut short keeps what it measured
        report.setdefault(key, [])

        def log(row):  # a row replaces an earlier one of the same shape (`--merge`)
            print(json.dumps({key: row}), flush=True)
            report[key] = [r for r in report[key] if any(r.get(f) != row[f] for f in ident)] + [row]
            save()

        return log

    if "cold_start" in parts:  # first, in fresh processes, before this one has compiled anything
        import tempfile

        report["cold_start"] = {}
        for kernel in args.cold_kernels.split(","):
            cache = tempfile.mkdtemp(prefix=f"triton-cache-{kernel}-")
            fresh, warm = (cold_start(args.preset, kernel, cache) for _ in range(2))
            report["cold_start"][kernel] = {"fresh": fresh, "warm": warm, "fresh_s": fresh.get("first_forward_s"),
                                            "warm_s": warm.get("first_forward_s")}
            if kernel == args.kernel:  # this process then starts from that warm cache
                os.environ["TRITON_CACHE_DIR"] = cache
                report["cold_start"].update(fresh_s=fresh.get("first_forward_s"), warm_s=warm.get("first_forward_s"))
            print(json.dumps({"cold_start": {kernel: report["cold_start"][kernel]}}), flush=True)
            save()
    todo = [p for p in args.parts.split(",") if p in ("prefill", "decode", "agreement", "profile")]
    if not todo:
        save()
        return
    report["ceilings"] = ceil = ceilings()
    save()
    ref, ours = random_models(args.preset, args.kernel)
    from ..kernels import resolve_backend

    kernels = list(dict.fromkeys([resolve_backend(args.kernel, "cuda")]
                                 + [k for k in args.compare_kernels.split(",") if k]))
    report["kernels_timed"] = kernels
    report["block_matmul_params"] = block_matmul_params(ref)

    def run_prefill():
        fla = fla_gdn_model()
        if fla is not None:
            report["fla_gdn_params"] = sum(p.numel() for p in fla.parameters())
        prefill(ref, ours, fla, shapes, kernels, args.repeats, ceil["bf16_matmul_flop_per_s"],
                logger("prefill", "batch", "tokens"))
        del fla
        torch.cuda.empty_cache()

    measures = {
        "prefill": run_prefill,
        "decode": lambda: decode(ref, ours, batches, kernels, ceil["copy_bytes_per_s"], 50, logger("decode", "batch")),
        "agreement": lambda: agreement(ref, ours, (4096, 65536), 2048, logger("agreement", "tokens")),
        "profile": lambda: profile(ours, 8, 8192, out.with_name(f"profile_{out.stem}.txt")),
    }
    for part in todo:  # in the order asked
        try:
            measures[part]()
        except Exception as exc:  # a part that fails is recorded; the others still run
            import traceback

            traceback.print_exc()
            report.setdefault("errors", {})[part] = f"{type(exc).__name__}: {exc}"
            torch.cuda.empty_cache()
    if args.dump_fla_configs:
        from ..kernels.fla_configs import dump_autotuned

        report["fla_configs_dumped"] = dump_autotuned(args.dump_fla_configs)
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
