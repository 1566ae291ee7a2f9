"""RULER on a GPU: wall time of the `gdn2` backend's generation against lm-eval's stock `hf` backend on the same
model and the same prompts, and one long sample (up to 128K tokens) with its time and peak memory.

The prompts are the paper's Table 3 grid (S-NIAH-1/2 at 1K-8K, S-NIAH-3 and MK-NIAH-1 at 1K-4K), generated for a
byte-level BPE trained here on the built-in haystack (no hub). Both backends wrap one in-memory model and serve the
same lm-eval `generate_until` requests; predictions and RULER scores are compared cell by cell. Run on a GPU:

    python -m gdn2_eval.bench.ruler --out results/bench/ruler_h100.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..results_store import atomic_write

GEN = {"until": [], "max_gen_toks": 128, "do_sample": False, "temperature": 0.0}
# Two greedy runs that part where the two tokens' logits (in the model's plain forward) are this close, relative to the
# largest logit, part on a near-tie: bf16 keeps 8 significant bits, so this is four of its rounding steps.
NEAR_TIE = 2.0**-6


def requests_for(docs: list[dict]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance("generate_until", d, (d["input"] + d["answer_prefix"], dict(GEN)), i) for i, d in enumerate(docs)]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, Any]:
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


def bench(model, tok_dir: Path, *, samples: int, batch_size: int, hf_batch_size: int, long_length: int,
          hf_budget_s: float, save, grid: dict[str, list[int]] | None = None,
          label: str | None = None, impl: str = "auto", share_compare: bool = True,
          profile_cells: tuple[str, ...] = (), profile_dir: Path | None = None,
          previous: dict[str, Any] | None = None, warm_every_cell: bool = False) -> dict[str, Any]:
    """The long sample (skipped when `long_length` is 0), then the comparison over `grid` (default: the paper's; skipped
    when `samples` is 0). With `previous` (the report of an earlier run of the same bench, cut short), its long sample
    and cells are kept and only the others run. `save(report)` is called after every step, so a run cut short by a
    time limit keeps what it measured. The `gdn2` backend runs `model` on the `impl` path; the stock backend runs it
    as given. With `share_compare`, each cell also runs through the gdn2 backend without prefix sharing
    (`gdn2_noshare_s`); the cells named in `profile_cells` (`task@length`) then run once more each way under
    `torch.profiler`, its tables written to `profile_dir`. With `warm_every_cell`, every cell (not only the first of
    its length) runs once untimed per backend before its timed run."""
    from ..lm_backend import GDN2LM
    from ..ruler import PAPER_GRID, load_tokenizer
    from .backend import for_ours

    tok = load_tokenizer(str(tok_dir))
    weight = next(model.parameters())
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(weight.device) if weight.is_cuda else "cpu",
        "model": label or f"{getattr(model.config, 'preset', None) or 'custom'} (random weights, {weight.dtype})",
        "kernel": getattr(model.config, "kernel", None), "samples_per_cell": samples, "gdn2_batch_size": batch_size,
        "hf_batch_size": hf_batch_size, "command": " ".join(sys.argv), "cells": {}}
    if warm_every_cell:  # recorded only when on, so that earlier reports resume as they were
        report["warm_every_cell"] = True
    fast = for_ours(model, impl)
    ours = GDN2LM(pretrained=fast, tokenizer=str(tok_dir), batch_size=batch_size)
    # prefix sharing forced on and off, whatever `auto` (the headline run) decides for each cell
    forced = tuple(GDN2LM(pretrained=fast, tokenizer=str(tok_dir), batch_size=batch_size, share_prefix=mode)
                   for mode in ("on", "off")) if share_compare else None
    report["gdn2_impl"] = ours.protocol()["impl"]
    report["backend_path"] = ours.path_record()
    if previous is not None:
        resume(report, previous, long_length)
    # first: it is short, and a run cut off by a time limit still has it (a resumed run may have it already)
    if long_length and report.get("long_sample", {}).get("length") != long_length:
        long_sample(report, tok, ours, long_length, save)
    if samples:
        # the model in float32, where it is not already: what tells a tie that precision decides from a difference
        reference = copy.deepcopy(model).float() if weight.dtype != torch.float32 else None
        compare(report, model, fast, tok, tok_dir, ours, samples, hf_batch_size, hf_budget_s, save,
                PAPER_GRID if grid is None else grid, forced, profile_cells, profile_dir, warm_every_cell, reference)
    return report


# what must match for an earlier report's cells to stand beside this run's
RESUME_KEYS = ("device", "model", "kernel", "samples_per_cell", "gdn2_batch_size", "hf_batch_size", "gdn2_impl",
               "warm_every_cell")


class ResumeMismatch(UserError):
    """The earlier report was not made by the same bench (model, GPU, samples, batch sizes)."""


def resume(report: dict[str, Any], previous: dict[str, Any], long_length: int) -> None:
    """Carry an earlier run's long sample (when of `long_length`) and cells into `report`."""
    differ = [k for k in RESUME_KEYS if previous.get(k) != report.get(k)]
    if differ:
        k = differ[0]
        raise ResumeMismatch(f"cannot resume: the earlier report has {k} {previous.get(k)!r}, this run "
                             f"{report.get(k)!r}")
    report["earlier_commands"] = [*previous.get("earlier_commands", []), previous.get("command")]
    if long_length and previous.get("long_sample", {}).get("length") == long_length:
        report["long_sample"] = previous["long_sample"]
    for key in ("cells", "decode_check", "sample_generation_s"):
        if key in previous:
            report[key] = previous[key]
    report["resumed_cells"] = len(report["cells"])


def totals(report: dict[str, Any]) -> None:
    """The grid's totals over the cells so far (kept current, so a run cut short has them)."""
    cells = report["cells"].values()
    both = [c for c in cells if "hf_s" in c]
    report["cells_with_both"] = len(both)
    report["speedup_on_those_cells"] = sum(c["hf_s"] for c in both) / max(1e-9, sum(c["gdn2_s"] for c in both))
    counted = [c for c in both if "differing_rows" in c]  # cells of earlier reports may not have the count
    if counted:
        report["differing_rows"] = sum(c["differing_rows"] for c in counted)
        report["near_tie_rows"] = sum(c["near_tie_rows"] for c in counted)
    weighed = [c for c in both if "precision_tie_rows" in c]
    if weighed:
        report["precision_tie_rows"] = sum(c["precision_tie_rows"] for c in weighed)
        report["differing_rows_weighed"] = sum(c["differing_rows"] for c in weighed)
    shared = [c for c in cells if "gdn2_noshare_s" in c]
    if shared:
        noshare, ours_s = sum(c["gdn2_noshare_s"] for c in shared), sum(c["gdn2_share_on_s"] for c in shared)
        report["share_speedup"] = noshare / max(1e-9, ours_s)
        report["prefill_over_prompt_tokens"] = (sum(c["prefill_tokens"] for c in shared)
                                                / max(1, sum(c["prompt_tokens"] for c in shared)))


def compare(report: dict[str, Any], model, fast, tok, tok_dir: Path, ours, samples: int, hf_batch_size: int,
            hf_budget_s: float, save, grid: dict[str, list[int]], forced=None, profile_cells: tuple[str, ...] = (),
            profile_dir: Path | None = None, warm_every_cell: bool = False, reference=None) -> None:
    """The grid through both backends, cell by cell, into `report["cells"]`; with `forced` (the gdn2 backend with
    prefix sharing on, and off) also with and without sharing, and the tokens the shared run prefilled."""
    from lm_eval.models.huggingface import HFLM

    from ..generation import greedy_generate
    from ..ruler import generate_samples, prompt_ids, sample_score

    t_gen = time.perf_counter()
    cells = {(task, length): generate_samples(task, length, samples, tok)
             for task, lengths in grid.items() for length in lengths
             if f"{task}@{length}" not in report["cells"]}  # a resumed run has some already
    if not cells:
        return
    report["sample_generation_s"] = report.get("sample_generation_s", 0.0) + time.perf_counter() - t_gen

    stock = HFLM(pretrained=model, tokenizer=str(tok_dir), batch_size=hf_batch_size, max_length=1 << 20)
    warm = requests_for(next(iter(cells.values()))[:4])  # compile / autotune outside the timings
    ours.generate_until(warm, disable_tqdm=True), stock.generate_until(warm, disable_tqdm=True)
    save(report)  # with --dump-fla-configs, what the warm-up tuned is kept even if the first cell is cut off

    if next(model.parameters()).is_cuda and callable(getattr(fast, "new_cache", None)):
        # the captured decode step against the eager one on the real model: same kernels, so the same tokens
        prompts = [prompt_ids(d, tok) for d in next(iter(cells.values()))[:16]]
        t_eager, eager = timed(lambda: greedy_generate(fast, prompts, 64, cuda_graph=False))
        t_graph, graph = timed(lambda: greedy_generate(fast, prompts, 64, cuda_graph=True))
        report["decode_check"] = {"rows": len(prompts), "new_tokens": 64, "graph_equals_eager": graph == eager,
                                  "eager_s": t_eager, "graph_s": t_graph}
        print(json.dumps(report["decode_check"]), flush=True)

    # The first cell of each length runs twice per backend: its first run compiles kernel variants for the new
    # shapes (Triton specialises on sizes divisible by 16, among others), which later runs on the same machine do
    # not pay. The timings are of the second run there (the first is kept as *_cold_s) and of the only run elsewhere.
    # A model whose kernels specialise or autotune on more than the length (fla's, where no launch configurations are
    # pinned for the GPU) needs the untimed run in every cell: `warm_every_cell`.
    spent_hf, seen = 0.0, set()
    for (task, length), docs in cells.items():
        reqs = requests_for(docs)
        cold_run = length not in seen or warm_every_cell  # an untimed run first
        seen.add(length)
        runs = [timed(lambda reqs=reqs: ours.generate_until(reqs, disable_tqdm=True)) for _ in range(1 + cold_run)]
        t_ours, p_ours = runs[-1]
        cell = {"gdn2_s": t_ours,
                "gdn2_score": 100 * sum(sample_score(p, d["outputs"]) for p, d in zip(p_ours, docs)) / len(docs)}
        if forced is not None:
            on, off = forced
            # the shared walk's forwards have shapes no earlier run had (one per tree level), so its first run
            # compiles, and where no launch configurations are pinned for this GPU, autotunes: timed on the second
            # run (the first kept as gdn2_share_on_cold_s)
            cold_on, _ = timed(lambda reqs=reqs, lm=on: lm.generate_until(reqs, disable_tqdm=True))
            on.reset_token_stats()
            t_on, p_on = timed(lambda reqs=reqs, lm=on: lm.generate_until(reqs, disable_tqdm=True))
            t_off, p_off = timed(lambda reqs=reqs, lm=off: lm.generate_until(reqs, disable_tqdm=True))
            cell.update(gdn2_share_on_s=t_on, gdn2_share_on_cold_s=cold_on, gdn2_noshare_s=t_off,
                        share_speedup=t_off / t_on, **on.token_stats,
                        same_prediction_noshare=sum(a == b for a, b in zip(p_on, p_off)) / len(docs))
            if f"{task}@{length}" in profile_cells:
                cell["profile"] = {mode: profiled(lambda reqs=reqs, lm=lm: lm.generate_until(reqs, disable_tqdm=True),
                                                  profile_dir / f"profile_{task}_{length}_share_{mode}.txt")
                                   for mode, lm in (("on", on), ("off", off))}
        if cold_run:
            cell["gdn2_cold_s"] = runs[0][0]
        if spent_hf < hf_budget_s:
            runs = [timed(lambda reqs=reqs: stock.generate_until(reqs, disable_tqdm=True)) for _ in range(1 + cold_run)]
            t_hf, p_hf = runs[-1]
            spent_hf += sum(t for t, _ in runs)
            if cold_run:
                cell["hf_cold_s"] = runs[0][0]
            cell.update(hf_s=t_hf, speedup=t_hf / t_ours,
                        hf_score=100 * sum(sample_score(p, d["outputs"]) for p, d in zip(p_hf, docs)) / len(docs),
                        same_prediction=sum(a == b for a, b in zip(p_ours, p_hf)) / len(docs),
                        same_first_16_chars=sum(a[:16] == b[:16] for a, b in zip(p_ours, p_hf)) / len(docs))
            margins = divergence_margins(model, tok, docs, p_ours, p_hf)
            cell.update(differing_rows=len(margins),
                        near_tie_rows=sum(m is not None and m <= NEAR_TIE for m in margins),
                        divergence_margins=[None if m is None else round(m, 5) for m in margins])
            if reference is not None:
                ties = reference_ties(model, reference, tok, docs, p_ours, p_hf)
                cell.update(precision_tie_rows=sum(bool(t and t["tie"]) for t in ties),
                            reference_ties=[t and {k: round(v, 5) if isinstance(v, float) else v for k, v in t.items()}
                                            for t in ties])
        report["cells"][f"{task}@{length}"] = cell
        totals(report)
        print(json.dumps({f"{task}@{length}": cell}), flush=True)
        save(report)


def divergence_points(tok, docs: list[dict], preds_a: list[str], preds_b: list[str]) -> list[tuple | None]:
    """For each row whose two predictions differ: (the prompt and the shared part as token ids, the token each
    prediction chose next). The predictions are re-tokenised, which gives the generated ids back for text that the
    tokenizer round-trips; None where they cannot be told apart by token (the texts differ but their token ids do
    not, or one is a prefix of the other with no end token)."""
    from ..ruler import prompt_ids

    eos = tok.eos_token_id
    points: list[tuple | None] = []
    for doc, a, b in zip(docs, preds_a, preds_b):
        if a == b:
            continue
        ids_a, ids_b = (tok(p, add_special_tokens=False)["input_ids"] for p in (a, b))
        j = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
        pick_a, pick_b = (ids[j] if j < len(ids) else eos for ids in (ids_a, ids_b))
        ok = pick_a is not None and pick_b is not None and pick_a != pick_b
        points.append((prompt_ids(doc, tok) + ids_a[:j], pick_a, pick_b) if ok else None)
    return points


@torch.no_grad()
def _last_logits(model, context: list[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=torch.tensor([context], device=device)).logits[0, -1].float()


def _gap(logits: torch.Tensor, a: int, b: int) -> float:
    return float((logits[a] - logits[b]).abs() / logits.abs().max().clamp_min(1e-30))


def divergence_margins(model, tok, docs: list[dict], preds_a: list[str], preds_b: list[str]) -> list[float | None]:
    """For each row whose two predictions differ (`divergence_points`): the gap between the logits of the two tokens
    chosen where they part, over the largest logit's magnitude, from one plain forward of `model` over the prompt and
    the shared part (a gap at or under `NEAR_TIE` is a near-tie)."""
    return [None if p is None else _gap(_last_logits(model, p[0]), p[1], p[2])
            for p in divergence_points(tok, docs, preds_a, preds_b)]


def reference_ties(model, reference, tok, docs: list[dict], preds_a: list[str],
                   preds_b: list[str]) -> list[dict[str, float] | None]:
    """For each row whose two predictions differ, where they part: the gap of the two chosen tokens' logits in
    `reference` (the model in float32) and the error of `model`'s logits there (the largest difference from the
    reference's), both over the reference's largest logit. Each of two low-precision runs is off by about that
    error, so a gap of at most twice it is a tie that precision decides: `tie`."""
    rows: list[dict[str, float] | None] = []
    for p in divergence_points(tok, docs, preds_a, preds_b):
        if p is None:
            rows.append(None)
            continue
        ref, low = _last_logits(reference, p[0]), _last_logits(model, p[0])
        gap = _gap(ref, p[1], p[2])
        error = float((low - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        rows.append({"gap": gap, "error": error, "tie": gap <= 2 * error})
    return rows


def profiled(fn, table: Path) -> dict[str, Any]:
    """Run `fn` once under `torch.profiler` (CPU, and CUDA where there is one); write its operator table (sorted by
    device time on a GPU) to `table`. Returns the wall time, the time the device spent in kernels, the kernels
    launched and the model forwards run eagerly (one embedding lookup each; replayed decode graphs have none): what
    separates GPU work from launch, Python and compile cost."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        wall, _ = timed(fn)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(prof.key_averages().table(sort_by=sort, row_limit=60) + "\n")
    on_device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {"wall_s": wall, "device_kernel_s": sum(e.device_time_total for e in on_device) / 1e6,
            "device_kernels": len(on_device), "eager_forwards": sum(e.name == "aten::embedding" for e in prof.events()),
            "table": table.name}


def long_sample(report: dict[str, Any], tok, ours, length: int, save) -> None:
    """One sample of `length` tokens: prefill in chunks carrying state, constant-size decode state. A shorter
    sample runs first in the same chunks, so that kernel compilation (and the autotuning of kernels whose tuning key
    holds the chunk length) is outside the time."""
    from ..ruler import generate_samples

    # two whole chunks and a short one carrying the state: the shapes the long sample's prefill runs
    warm_doc = generate_samples("niah_single_2", min(length, 2 * ours.chunk_tokens + 1024), 1, tok)
    warm, _ = timed(lambda: ours.generate_until(requests_for(warm_doc), disable_tqdm=True))
    doc = generate_samples("niah_single_2", length, 1, tok)[0]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    secs, pred = timed(lambda: ours.generate_until(requests_for([doc]), disable_tqdm=True))
    peak = torch.cuda.max_memory_allocated() if cuda else None
    report["long_sample"] = {"length": length, "prompt_tokens": doc["length"] - 128, "seconds": secs,
                             "warmup_s": warm, "peak_gib": peak and peak / 2**30,
                             "peak_above_weights_gib": peak and (peak - base) / 2**30, "prediction": pred[0][:80]}
    print(json.dumps(report["long_sample"]), flush=True)
    save(report)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50, help="samples per (task, length) cell (0: skip the comparison)")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per batch of the gdn2 backend")
    ap.add_argument("--hf-batch-size", type=int, default=64, help="rows per batch of the stock hf backend")
    ap.add_argument("--long-length", type=int, default=131072, help="one sample at this length (0: skip)")
    ap.add_argument("--hf-budget-s", type=float, default=400.0, help="stop running hf cells after this many seconds")
    ap.add_argument("--kernel", help="GDN-2 kernel [default: fla for the preset, the model's own for --model]")
    ap.add_argument("--preset", default="gdn2_1.3B",
                    help="a GDN-2 preset or an fla baseline (kda, gated_deltanet, mamba2), random weights in bf16")
    ap.add_argument("--model", help="a trained model instead (HF directory or a demo name), with its tokenizer; "
                    "scores then mean something")
    ap.add_argument("--lengths", help="only these lengths of the grid, e.g. 1k,2k")
    ap.add_argument("--impl", default="auto", help="how the gdn2 backend runs GDN-2: auto, inference, reference")
    ap.add_argument("--no-share-compare", action="store_true",
                    help="skip the second gdn2 run of each cell with prefix sharing off")
    ap.add_argument("--dump-fla-configs", type=Path,
                    help="after each step, write the launch configurations fla's autotuner chose here as fla config "
                         "files (what kernels/configs/fla/<GPU>/ keeps): a run cut short keeps what it tuned")
    ap.add_argument("--profile-cells", default="",
                    help="cells (task@length, comma-separated) to run once more with and without prefix sharing "
                         "under torch.profiler; tables written to a folder beside --out named "
                         "for it (so two benches writing to one folder keep their own)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the cells (and long sample) already in --out, from an earlier run of this bench on "
                         "the same GPU, model and sizes that was cut short, and run only the others")
    ap.add_argument("--warm-every-cell", action="store_true",
                    help="run every cell once untimed per backend before timing it, not only the first of each length")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from ..ruler import PAPER_GRID, parse_lengths

    lengths = set(parse_lengths(args.lengths)) if args.lengths else None
    grid = {task: [n for n in ns if lengths is None or n in lengths] for task, ns in PAPER_GRID.items()}
    if args.model:
        from ..demo import resolve_model
        from ..loading import load_model

        tok_dir = Path(resolve_model(args.model))
        overrides = {"kernel": args.kernel} if args.kernel else {}
        model, label = load_model(tok_dir, impl="reference", **overrides).model, f"{args.model} (trained weights)"
    else:
        from ..bpe import train_bpe
        from ..model import GDN2Config, GDN2ForCausalLM
        from ..ruler import ANSWER_PREFIX, NOISE, TEMPLATE, builtin_essay

        tok_dir = Path(tempfile.mkdtemp(prefix="bench-ruler-")) / "tok"
        train_bpe([builtin_essay().text, TEMPLATE, ANSWER_PREFIX, NOISE] * 4, 8000).save_pretrained(tok_dir)
        from .backend import FLA_BASELINES, build_model

        if args.preset in FLA_BASELINES:  # through the backend's adapter (`gdn2_eval.hf_adapter`)
            model, label = build_model(args.preset, "cuda", "fla"), f"fla {args.preset} (random weights, bf16)"
        else:
            torch.manual_seed(0)
            config = GDN2Config.from_preset(args.preset, kernel=args.kernel or "fla")
            model, label = GDN2ForCausalLM(config).to("cuda", torch.bfloat16), None
    bench(model.eval(), tok_dir, samples=args.samples, batch_size=args.batch_size, hf_batch_size=args.hf_batch_size,
          long_length=args.long_length, hf_budget_s=args.hf_budget_s, grid={t: n for t, n in grid.items() if n},
          label=label, impl=args.impl, share_compare=not args.no_share_compare,
          profile_cells=tuple(c for c in args.profile_cells.split(",") if c), profile_dir=args.out.with_suffix(""),
          previous=json.loads(args.out.read_text()) if args.resume and args.out.exists() else None,
          warm_every_cell=args.warm_every_cell,
          save=lambda report: save(report, args.out, args.dump_fla_configs))


def save(report: dict[str, Any], out: Path, fla_configs: Path | None) -> None:
    atomic_write(out, json.dumps(report, indent=1) + "\n")
    if fla_configs is not None:
        from ..kernels.fla_configs import dump_autotuned

        dump_autotuned(fla_configs)


if __name__ == "__main__":
    main()
