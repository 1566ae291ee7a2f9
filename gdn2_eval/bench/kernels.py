"""Benchmark of this project's GDN-2 Triton kernels against fla's, on one CUDA device, in one process.

For every shape (B x T, with H=16 heads, K=V=128, bf16 q/k/v/b/w and fp32 log-decay g) it times, on the same
inputs, our prefill (`chunk_gdn2_fwd`) against fla's `chunk_gdn2` (forward, final state, q/k L2-normalised in
the kernel) and our one-token decode step (`fused_recurrent_gdn2_fwd`) against fla's `fused_recurrent_gdn2`;
it reports the median of repeated runs after warm-up, the ratio fla / ours, the achieved bandwidth (bytes of
inputs and outputs over time) next to a measured device-to-device copy bandwidth, and an accuracy check against
fla and against a float64 chunkwise reference computed on the GPU, for typical gates and for gates spread from
decay ~ 1 (g ~ -1e-6) to decay ~ 0 (g ~ -50).

    python -m gdn2_eval.bench.kernels --out results/bench/kernels.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((1, 4096), (8, 4096), (32, 1024), (1, 16384), (1, 65536), (1, 131072))
HEADS, HEAD_K, HEAD_V = 16, 128, 128
DEFAULT_OUT = Path("results/bench/kernels.json")
GATES = ("typical", "wide")


# ----------------------------------------------------------------------------------------------------------- inputs
def make_inputs(
    B: int, T: int, *, H: int = HEADS, K: int = HEAD_K, V: int = HEAD_V, gates: str = "typical",
    dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda", seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """q, k, v, g, b, w like a GDN-2 layer produces them. `gates`:

    * "typical": g = logsigmoid(N(0,1)) (decays ~0.3-0.9 per token), b in [0, 2], w in [0, 1];
    * "wide": |g| log-uniform in [1e-6, 50] per element, so decays near 1 and near 0 both occur.
    """
    gen = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device=device, generator=gen)

    def uni(*shape):
        return torch.rand(*shape, device=device, generator=gen)

    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V)
    if gates == "typical":
        g = torch.nn.functional.logsigmoid(rnd(B, T, H, K))
    elif gates == "wide":
        g = -torch.exp(uni(B, T, H, K) * (math.log(50.0) - math.log(1e-6)) + math.log(1e-6))
    elif gates == "strong":  # decay ~ e^-50 per token: the exact diagonal path everywhere
        g = -40.0 - 20.0 * uni(B, T, H, K)
    elif gates == "weak":  # decay ~ 1
        g = -1e-6 * uni(B, T, H, K)
    else:
        raise ValueError(f"unknown gates {gates!r}; choose from {GATES}")
    b, w = 2.0 * uni(B, T, H, K), uni(B, T, H, V)
    return q.to(dtype), k.to(dtype), v.to(dtype), g.float().contiguous(), b.to(dtype), w.to(dtype)


# ------------------------------------------------------------------------------------------------- f64 reference
def reference_f64(
    q, k, v, g, b, w, scale: float | None = None, initial_state: torch.Tensor | None = None,
    chunk: int = 64, budget: int = 1 << 27,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise GDN-2 (spec section 2) in float64 on the inputs' device, every decay as exp(x <= 0).

    Returns (o [B, T, H, V] float64, final state [B, H, K, V] float64)."""
    f = torch.float64
    q, k, v, g, b, w = (x.to(f) for x in (q, k, v, g, b, w))
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    B, T, H, K = k.shape
    V = v.shape[-1]
    if T == 0:
        S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(f).clone()
        return v.new_zeros(B, 0, H, V), S
    q = q * (K**-0.5 if scale is None else scale)
    C = chunk
    NC = -(-T // C)
    pad = NC * C - T

    def chunked(x):
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.view(B, NC, C, H, -1).permute(0, 3, 1, 2, 4)

    q, k, v, g, b, w = (chunked(x) for x in (q, k, v, g, b, w))
    G = g.cumsum(3)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(f).clone()
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = causal.tril(-1)
    eye = torch.eye(C, dtype=f, device=q.device)
    o = q.new_empty(B, H, NC, C, V)
    slab = max(1, budget // (B * H * C * C * K))
    for c0 in range(0, NC, slab):
        cs = slice(c0, min(NC, c0 + slab))
        Gs, ks = G[:, :, cs], k[:, :, cs]
        D = torch.where(causal[:, :, None], Gs[..., :, None, :] - Gs[..., None, :, :], float("-inf")).exp()
        Tm = torch.einsum("...rk,...rsk,...sk->...rs", b[:, :, cs] * ks, D, ks) * strict
        Aqk = torch.einsum("...rk,...rsk,...sk->...rs", q[:, :, cs], D, ks) * causal
        del D
        gamma = Gs.exp()
        rhs = torch.cat((gamma * b[:, :, cs] * ks, w[:, :, cs] * v[:, :, cs]), -1)
        YU = torch.linalg.solve_triangular(eye + Tm, rhs, upper=False, unitriangular=True)
        Y, U = YU[..., :K], YU[..., K:]
        Qg = gamma * q[:, :, cs]
        G_last = Gs[..., -1:, :]
        Kt = (G_last - Gs).exp() * ks
        g_end = G_last.squeeze(-2).exp()
        for i in range(Y.shape[2]):
            R = U[:, :, i] - Y[:, :, i] @ S
            o[:, :, c0 + i] = Qg[:, :, i] @ S + Aqk[:, :, i] @ R
            S = g_end[:, :, i, :, None] * S + Kt[:, :, i].transpose(-1, -2) @ R
    return o.permute(0, 2, 3, 1, 4).reshape(B, NC * C, H, V)[:, :T], S


# ------------------------------------------------------------------------------------------------------- timing
def time_cuda(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of `fn` in ms, each run timed with CUDA events (launch overhead included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(device: torch.device | str = "cuda", nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src), repeats=repeats, warmup=3)
    return 2 * nbytes / (ms * 1e-3)


def _nbytes(*xs) -> int:
    return sum(x.numel() * x.element_size() for x in xs if x is not None)


def _err(x: torch.Tensor | None, ref: torch.Tensor) -> dict:
    if x is None:
        return {"max_rel_err": None, "nan": None}
    x = x.double()
    finite = bool(torch.isfinite(x).all())
    den = ref.abs().max().item() or 1.0
    err = (x - ref).abs().max().item() / den if finite else float("nan")
    return {"max_rel_err": err, "nan": not finite}


def _fla():
    try:
        from fla.ops.gdn2 import chunk_gdn2, fused_recurrent_gdn2
    except ImportError:
        return None
    return chunk_gdn2, fused_recurrent_gdn2


# ---------------------------------------------------------------------------------------------------- the bench
def bench_shape(B: int, T: int, *, repeats: int = 20, copy_bw: float | None = None, accuracy: bool = True,
                device: str = "cuda") -> dict:
    from gdn2_eval.kernels.gdn2.chunk import chunk_gdn2_fwd
    from gdn2_eval.kernels.gdn2.fused_recurrent import fused_recurrent_gdn2_fwd

    fla = _fla()
    H, K, V = HEADS, HEAD_K, HEAD_V
    row: dict = {"B": B, "T": T, "H": H, "K": K, "V": V, "shape": f"{B}x{T}",
                 "device": torch.cuda.get_device_name(device)}
    with torch.inference_mode():
        ins = make_inputs(B, T, device=device)
        q, k, v, g, b, w = ins

        def ours():
            return chunk_gdn2_fwd(*ins, output_final_state=True, use_qk_l2norm=True)

        def theirs():
            return fla[0](*ins, output_final_state=True, use_qk_l2norm_in_kernel=True)

        o, ht = ours()
        io_bytes = _nbytes(q, k, v, g, b, w, o, ht)
        row["prefill_bytes"] = io_bytes
        row["ours_ms"] = time_cuda(ours, repeats)
        row["ours_GBps"] = io_bytes / (row["ours_ms"] * 1e-3) / 1e9
        if fla is not None:
            row["fla_ms"] = time_cuda(theirs, repeats)
            row["fla_GBps"] = io_bytes / (row["fla_ms"] * 1e-3) / 1e9
            row["speedup_vs_fla"] = row["fla_ms"] / row["ours_ms"]
        if copy_bw:
            row["copy_GBps"] = copy_bw / 1e9
            row["floor_ms"] = io_bytes / copy_bw * 1e3
            row["ours_over_floor"] = row["ours_ms"] / row["floor_ms"]
        del o, ht

        # one decode step per sequence, from a random state
        q1, k1, v1, g1, b1, w1 = (x[:, -1:].contiguous() for x in (q, k, v, g, b, w))
        h0 = torch.randn(B, H, K, V, device=device) * 0.1
        row["decode_ours_ms"] = time_cuda(
            lambda: fused_recurrent_gdn2_fwd(q1, k1, v1, g1, b1, w1, initial_state=h0, output_final_state=True),
            repeats * 5)
        h0c = h0.clone()
        row["decode_ours_inplace_ms"] = time_cuda(
            lambda: fused_recurrent_gdn2_fwd(q1, k1, v1, g1, b1, w1, initial_state=h0c, inplace_final_state=True),
            repeats * 5)
        if fla is not None:
            row["decode_fla_ms"] = time_cuda(
                lambda: fla[1](q1, k1, v1, g1, b1, w1, initial_state=h0, output_final_state=True,
                               use_qk_l2norm_in_kernel=True),
                repeats * 5)
            row["decode_speedup_vs_fla"] = row["decode_fla_ms"] / row["decode_ours_ms"]
            od, hd = fused_recurrent_gdn2_fwd(q1, k1, v1, g1, b1, w1, initial_state=h0, output_final_state=True)
            of, hf = fla[1](q1, k1, v1, g1, b1, w1, initial_state=h0, output_final_state=True,
                            use_qk_l2norm_in_kernel=True)
            row["decode_vs_fla"] = _err(od, of.double())["max_rel_err"]
            row["decode_state_vs_fla"] = _err(hd, hf.double())["max_rel_err"]
        del q, k, v, g, b, w, ins
        torch.cuda.empty_cache()

        if accuracy:
            row["accuracy"] = {}
            for gates in GATES:
                ins = make_inputs(B, T, device=device, gates=gates, seed=1)
                h0 = torch.randn(B, H, K, V, device=device) * 0.1
                ref_o, ref_h = reference_f64(*ins, initial_state=h0)
                o, ht = chunk_gdn2_fwd(*ins, initial_state=h0, output_final_state=True)
                acc = {"ours_o": _err(o, ref_o), "ours_state": _err(ht, ref_h)}
                if fla is not None:
                    fo, fh = fla[0](*ins, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
                    acc["fla_o"] = _err(fo, ref_o)
                    acc["fla_state"] = _err(fh, ref_h)
                    acc["ours_vs_fla_o"] = _err(o, fo.double())["max_rel_err"]
                    del fo, fh
                row["accuracy"][gates] = acc
                del ins, ref_o, ref_h, o, ht
                torch.cuda.empty_cache()
    torch.cuda.empty_cache()
    return row


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(rows: Sequence[dict]) -> str:
    dev = rows[0]["device"] if rows else "?"
    lines = [
        f"# GDN-2 kernels vs fla ({dev})", "",
        "Prefill: forward, bf16 q/k/v/b/w, fp32 g, H=16, K=V=128, final state, q/k L2-norm in kernel. "
        "Median ms over repeated runs after warm-up. Floor = bytes of inputs+outputs / measured copy bandwidth.",
        "",
        "| B x T | ours ms | fla ms | fla/ours | ours GB/s | copy GB/s | ours/floor | decode ours ms | "
        "decode fla ms | fla/ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {_fmt(r.get('ours_ms'))} | {_fmt(r.get('fla_ms'))} | "
            f"{_fmt(r.get('speedup_vs_fla'), '.2f')} | {_fmt(r.get('ours_GBps'), '.0f')} | "
            f"{_fmt(r.get('copy_GBps'), '.0f')} | {_fmt(r.get('ours_over_floor'), '.2f')} | "
            f"{_fmt(r.get('decode_ours_ms'), '.4f')} | {_fmt(r.get('decode_fla_ms'), '.4f')} | "
            f"{_fmt(r.get('decode_speedup_vs_fla'), '.2f')} |")
    lines += ["", "Accuracy: max |x - ref| / max |ref| against a float64 chunkwise reference (o and final state).", "",
              "| B x T | gates | ours o | ours state | fla o | fla state | ours vs fla o | NaN (ours/fla) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for gates, a in (r.get("accuracy") or {}).items():
            nan = f"{a['ours_o']['nan']}/{a.get('fla_o', {}).get('nan')}"
            lines.append(
                f"| {r['shape']} | {gates} | {_fmt(a['ours_o']['max_rel_err'], '.2e')} | "
                f"{_fmt(a['ours_state']['max_rel_err'], '.2e')} | "
                f"{_fmt(a.get('fla_o', {}).get('max_rel_err'), '.2e')} | "
                f"{_fmt(a.get('fla_state', {}).get('max_rel_err'), '.2e')} | "
                f"{_fmt(a.get('ours_vs_fla_o'), '.2e')} | {nan} |")
    return "\n".join(lines) + "\n"


def run_kernel_bench(
    shapes: Sequence[tuple[int, int]] = DEFAULT_SHAPES,
    out: Path | str | None = DEFAULT_OUT,
    repeats: int = 20,
    accuracy: bool = True,
    device: str = "cuda",
) -> list[dict]:
    """Time and check our kernels against fla for every (B, T) in `shapes`; write JSON (+ .md) to `out`."""
    if not torch.cuda.is_available():
        raise RuntimeError("the kernel benchmark needs a CUDA device")
    from gdn2_eval.kernels.gdn2 import chunk as ch

    bw = copy_bandwidth(device)
    rows = []
    for B, T in shapes:
        t0 = time.time()
        rows.append(bench_shape(B, T, repeats=repeats, copy_bw=bw, accuracy=accuracy, device=device))
        rows[-1]["bench_s"] = round(time.time() - t0, 1)
        rows[-1]["tune"] = {key: val for key, val in ch.TUNE.items() if val is not None}
        print(json.dumps({key: val for key, val in rows[-1].items() if key != "accuracy"}), flush=True)
        if out is not None:  # after every shape, so a run cut short keeps what it measured
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=2))
            out.with_suffix(".md").write_text(markdown(rows))
    return rows


def pick_variant(variants: Sequence[dict], B: int = 1, T: int = 65536, repeats: int = 10,
                 device: str = "cuda") -> dict:
    """Time our prefill under each knob setting at one shape; keep the fastest in `chunk.TUNE`."""
    res = tune(((B, T),), repeats=repeats, device=device, variants=variants)
    ok = [r for r in res if "all_ms" in r]
    best = min(ok, key=lambda r: r["all_ms"])
    from gdn2_eval.kernels.gdn2 import chunk as ch

    ch.TUNE.update({key: val for key, val in best.items() if key in ch.TUNE})
    print("picked", json.dumps(best), flush=True)
    return best


# ------------------------------------------------------------------------------------------------------- tuning
ACCURACY_CASES: tuple[tuple, ...] = (
    # B, T, H, K, V, dtype, gates, varlen, initial state
    (2, 1000, 4, 128, 128, torch.bfloat16, "typical", False, True),
    (2, 1000, 4, 128, 128, torch.bfloat16, "wide", False, True),
    (2, 1000, 4, 128, 128, torch.bfloat16, "strong", False, True),
    (2, 1000, 4, 128, 128, torch.bfloat16, "weak", False, False),
    (1, 2000, 4, 64, 64, torch.bfloat16, "wide", True, True),
    (2, 777, 4, 64, 128, torch.float16, "typical", False, True),
    (2, 333, 2, 64, 64, torch.float32, "wide", False, True),
)


def accuracy_cases(device: str = "cuda") -> list[dict]:
    """Ours against the float64 reference at small shapes covering head sizes, dtypes, gate ranges and varlen."""
    from gdn2_eval.kernels.gdn2.chunk import chunk_gdn2_fwd
    from gdn2_eval.kernels.gdn2.fused_recurrent import fused_recurrent_gdn2_fwd
    from gdn2_eval.kernels.gdn2.naive import naive_varlen

    out = []
    for B, T, H, K, V, dtype, gates, varlen, use_h0 in ACCURACY_CASES:
        ins = make_inputs(B, T, H=H, K=K, V=V, gates=gates, dtype=dtype, device=device, seed=3)
        cu = None
        N = B
        if varlen:
            cu = torch.tensor([0, T // 7, T // 7, T // 2 + 5, T], dtype=torch.int32, device=device)
            N = 4
        h0 = torch.randn(N, H, K, V, device=device) * 0.1 if use_h0 else None
        with torch.inference_mode():
            if varlen:
                ref_o, ref_h = naive_varlen(reference_f64, *ins, cu_seqlens=cu.cpu(), initial_state=h0)
            else:
                ref_o, ref_h = reference_f64(*ins, initial_state=h0)
            o, ht = chunk_gdn2_fwd(*ins, initial_state=h0, output_final_state=True, cu_seqlens=cu)
            rec = {"case": f"{B}x{T} H{H} K{K} V{V} {str(dtype)[6:]} {gates}{' varlen' if varlen else ''}",
                   "chunk_o": _err(o, ref_o), "chunk_state": _err(ht, ref_h)}
            n = min(T, 40)
            short = tuple(x[:, :n].contiguous() for x in ins)
            ro, rh = reference_f64(*short, initial_state=None if varlen else h0)
            fo, fh = fused_recurrent_gdn2_fwd(*short, initial_state=None if varlen else h0, output_final_state=True)
            rec["recurrent_o"] = _err(fo, ro)
            rec["recurrent_state"] = _err(fh, rh)
        out.append(rec)
        print(json.dumps(rec), flush=True)
    return out


# Knob settings the tune times. `python -m gdn2_eval.bench.resources` compiles the same list without a GPU
# (registers, spills), so a variant that spills can be dropped before device time is spent on it.
TUNE_VARIANTS: tuple[dict, ...] = (
    {},
    {"intra_chunk_ref": 0},  # sub-chunk references only: what the whole-chunk reference saves
    {"sweep_bv": 32},
    {"sweep_bv": 64},
    {"sweep_bv": 32, "sweep_stages": 2},
    {"segment_chunks": 16},
    {"segment_chunks": 32, "sweep_bv": 32},
    {"intra_bv": 32},
    {"intra_bk": 16},
    {"intra_bk": 16, "intra_bv": 32},  # the one intra setting that spills nothing on sm_90 (kernels_notes.md)
    {"intra_bk": 16, "intra_bv": 32, "intra_maxnreg": 128},  # two programs per SM, at the price of spills
)

# The intra-kernel settings `--pick` chooses among before the benchmark.
PICK_VARIANTS: tuple[dict, ...] = tuple(v for v in TUNE_VARIANTS if not v or any(k.startswith("intra") for k in v))


def tune(shapes: Sequence[tuple[int, int]] = ((1, 65536), (1, 16384), (8, 4096), (32, 1024)),
         repeats: int = 10, device: str = "cuda", variants: Sequence[dict] = TUNE_VARIANTS,
         log: Path | None = None) -> list[dict]:
    """Time our prefill (and each of its two kernels alone) under knob settings of `chunk.TUNE`."""
    from gdn2_eval.kernels.gdn2 import chunk as ch

    results = []
    defaults = dict(ch.TUNE)
    with torch.inference_mode():
        for B, T in shapes:
            ins = make_inputs(B, T, device=device)

            def run(ins=ins):
                return ch.chunk_gdn2_fwd(*ins, output_final_state=True)

            for var in variants:
                rec: dict = {"shape": f"{B}x{T}", **var}
                ch.TUNE.update(var)
                try:
                    for only in (None, "intra", "sweep"):
                        if only is not None and "segment_chunks" in var:
                            continue
                        ch._ONLY["kernel"] = only
                        if only is not None:
                            ch.TUNE["segment_chunks"] = 0
                        rec[f"{only or 'all'}_ms"] = round(time_cuda(run, repeats), 4)
                        ch.TUNE["segment_chunks"] = var.get("segment_chunks")
                except Exception as exc:  # a config may not compile (too many registers)
                    rec["error"] = repr(exc)[:300]
                finally:
                    ch._ONLY["kernel"] = None
                    ch.TUNE.clear()
                    ch.TUNE.update(defaults)
                results.append(rec)
                print(json.dumps(rec), flush=True)
                if log is not None:
                    log.write_text(json.dumps(results, indent=1))
            del ins
            torch.cuda.empty_cache()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--shapes", default=None, help="comma-separated BxT, e.g. 1x4096,8x4096")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--tune", action="store_true", help="sweep the kernel knobs instead (prints, writes --out)")
    p.add_argument("--check", action="store_true", help="accuracy at small shapes first")
    p.add_argument("--pick", action="store_true",
                   help="time PICK_VARIANTS at 1x65536 first and benchmark with the fastest")
    a = p.parse_args(argv)
    shapes = DEFAULT_SHAPES
    if a.shapes:
        shapes = tuple(tuple(int(n) for n in s.lower().split("x")) for s in a.shapes.split(","))
    if a.tune:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        if a.check:
            acc = accuracy_cases()
            a.out.with_suffix(".acc.json").write_text(json.dumps(acc, indent=1))
        res = tune(shapes if a.shapes else ((1, 65536), (1, 16384), (8, 4096), (32, 1024)), repeats=a.repeats,
                   log=a.out)
        a.out.write_text(json.dumps(res, indent=2))
        return
    if a.pick:
        pick_variant(PICK_VARIANTS)
    if a.check:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.with_suffix(".acc.json").write_text(json.dumps(accuracy_cases(), indent=1))
    rows = run_kernel_bench(shapes, a.out, repeats=a.repeats, accuracy=not a.no_accuracy)
    print(markdown(rows))


if __name__ == "__main__":
    main()
