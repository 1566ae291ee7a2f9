"""Throughput of the `gdn2` lm-eval backend against lm-eval's stock `hf` backend, same model, same requests.

The requests are the `table2` suite's real mix (lm-eval's own task definitions, `--limit` documents per task) over
synthetic stand-in data (`gdn2_eval.standins`), so the machine needs no datasets. Both backends wrap the same
in-memory model; every request's log-likelihood is compared between them. Run on a GPU machine:

    python -m gdn2_eval.bench.backend --out results/bench/backend_h100.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# hidden 2048, 16 heads of 128: the shape of the 1.3B baselines of the GPU notes (KDA about 1.2B parameters)
KDA_SHAPE = dict(hidden_size=2048, num_hidden_layers=21, num_heads=16, head_dim=128, vocab_size=32000)


def table2_requests(data_dir: Path, limit: int) -> dict[str, list]:
    """The table2 suite's lm-eval instances, grouped by request type."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from ..data import local_datasets
    from ..suites import SUITES

    by_type: dict[str, list] = {}
    with local_datasets(data_dir):
        tasks = get_task_dict(SUITES["table2"], TaskManager())
    for task in tasks.values():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        for inst in task.instances:
            by_type.setdefault(inst.request_type, []).append(inst)
    return by_type


# fla's baselines of about 1.3B parameters, random weights: name -> (config class, model class, shape)
FLA_BASELINES = {
    "kda": ("KDAConfig", "KDAForCausalLM", KDA_SHAPE),
    "gated_deltanet": ("GatedDeltaNetConfig", "GatedDeltaNetForCausalLM",
                       dict(hidden_size=2048, num_hidden_layers=21, num_heads=16, head_dim=128, expand_v=1.0,
                            vocab_size=32000)),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(hidden_size=2048, num_hidden_layers=48, num_heads=64, head_dim=64, state_size=128, expand=2,
                    n_groups=1, vocab_size=32000)),
}


def build_model(kind: str, device: str, kernel: str) -> torch.nn.Module:
    """A GDN-2 preset (`gdn2_1.3B`, ...) or one of fla's baselines (`FLA_BASELINES`), random weights in bf16."""
    torch.manual_seed(0)
    if kind in FLA_BASELINES:
        from ..kernels.fla_configs import use_pinned_configs

        use_pinned_configs()  # as the loaders do: the launch configurations kept for this GPU
        import fla.models  # registers fla's models

        config_cls, model_cls, shape = FLA_BASELINES[kind]
        model = getattr(fla.models, model_cls)(getattr(fla.models, config_cls)(**shape))
    else:
        from ..model import GDN2Config, GDN2ForCausalLM

        model = GDN2ForCausalLM(GDN2Config.from_preset(kind, kernel=kernel))
    return model.to(device=device, dtype=torch.bfloat16).eval()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def score(lm, requests: dict[str, list]) -> tuple[float, dict[str, list]]:
    """Seconds to serve every request (synchronised), and the answers per request type."""
    _sync()
    t0 = time.perf_counter()
    answers = {
        "loglikelihood": lm.loglikelihood(requests["loglikelihood"], disable_tqdm=True),
        "loglikelihood_rolling": lm.loglikelihood_rolling(requests["loglikelihood_rolling"], disable_tqdm=True),
    }
    _sync()
    return time.perf_counter() - t0, answers


def compare(a: dict[str, list], b: dict[str, list], requests: dict[str, list], tok) -> dict[str, Any]:
    """Differences of log-likelihoods per continuation token, and agreement of multiple-choice answers."""
    per_token, same_choice, docs = [], 0, 0
    for kind in ("loglikelihood", "loglikelihood_rolling"):
        for inst, x, y in zip(requests[kind], a[kind], b[kind]):
            lx, ly = (x[0], y[0]) if kind == "loglikelihood" else (x, y)
            text = inst.args[1] if kind == "loglikelihood" else inst.args[0]
            per_token.append(abs(lx - ly) / max(1, len(tok(text, add_special_tokens=False).input_ids)))
    groups: dict[tuple[str, int], list[int]] = {}
    for i, inst in enumerate(requests["loglikelihood"]):
        groups.setdefault((inst.task_name, inst.doc_id), []).append(i)
    for ix in groups.values():
        if len(ix) > 1:
            docs += 1
            pick = [max(ix, key=lambda i: ans["loglikelihood"][i][0]) for ans in (a, b)]
            same_choice += pick[0] == pick[1]
    per_token.sort()
    return {
        "requests": len(per_token),
        "max_abs_diff_per_token": per_token[-1],
        "median_abs_diff_per_token": per_token[len(per_token) // 2],
        "multiple_choice_docs": docs,
        "same_choice_fraction": same_choice / max(1, docs),
        "all_finite": all(math.isfinite(v) for v in per_token),
    }


def for_ours(model: torch.nn.Module, impl: str) -> torch.nn.Module:
    """The model the `gdn2` backend runs: a GDN-2 model on the inference path (built from a copy, so that the stock
    backend keeps the reference model), anything else as it is."""
    from ..loading import resolve_impl
    from ..model import GDN2ForCausalLM

    if isinstance(model, GDN2ForCausalLM) and resolve_impl(impl, model.device) == "inference":
        from ..inference import GDN2InferenceForCausalLM

        return GDN2InferenceForCausalLM.from_reference(copy.deepcopy(model))
    return model


def bench(kinds: list[str], limit: int, batch_size: int, kernel: str = "fla", repeats: int = 2,
          impl: str = "auto") -> dict[str, Any]:
    from lm_eval.models.huggingface import HFLM

    from ..bpe import train_bpe
    from ..lm_backend import GDN2LM
    from ..standins import STANDINS, write_standins

    work = Path(tempfile.mkdtemp(prefix="bench-backend-"))
    write_standins(work / "data", n_docs=max(limit, 8))
    texts = [line for f in (work / "data").rglob("*.jsonl") for line in f.read_text().splitlines()]
    tok_dir = work / "tokenizer"  # a BPE of the stand-in text and the tasks' templates
    train_bpe(texts + ["Question: Answer: Q: A: yes no? True False"], 4000,
              ("<unk>", "<s>", "</s>", "<pad>")).save_pretrained(tok_dir)
    requests = table2_requests(work / "data", limit)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "kernel": kernel,
        "impl": impl,
        "limit_per_task": limit,
        "batch_size": batch_size,
        "tasks": sorted(STANDINS),
        "n_requests": {k: len(v) for k, v in requests.items()},
        "models": {},
    }
    for kind in kinds:
        model = build_model(kind, device, kernel)
        fast = for_ours(model, impl)
        ours = GDN2LM(pretrained=fast, tokenizer=str(tok_dir), batch_size=batch_size)
        stock = HFLM(pretrained=model, tokenizer=str(tok_dir), batch_size=batch_size, max_length=ours.ppl_window)
        # Triton specialises kernels on shapes, so a first pass compiles (and fla autotunes) for whichever backend
        # runs first: one untimed pass of each, then timed passes in alternating order, best of `repeats`.
        shared = GDN2LM(pretrained=fast, tokenizer=str(tok_dir), batch_size=batch_size, share_prefix=True)
        lms = {"gdn2": ours, "gdn2_always_shared": shared, "hf": stock}
        for lm in lms.values():
            score(lm, requests)
        times: dict[str, list[float]] = {label: [] for label in lms}
        answers: dict[str, dict[str, list]] = {}
        for _ in range(repeats):
            for label, lm in lms.items():
                t, answers[label] = score(lm, requests)
                times[label].append(t)
        t_ours, t_stock = min(times["gdn2"]), min(times["hf"])
        a_ours, a_stock = answers["gdn2"], answers["hf"]
        n = sum(len(v) for v in requests.values())
        report["models"][kind] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "recurrent_aware_path": ours.recurrent,
            "backend_path": ours.path_record(),
            "gdn2_impl": ours.protocol()["impl"],
            "gdn2_seconds": t_ours,
            "hf_seconds": t_stock,
            "gdn2_requests_per_s": n / t_ours,
            "hf_requests_per_s": n / t_stock,
            "speedup_gdn2_over_hf": t_stock / t_ours,
            "speedup_always_shared_over_hf": t_stock / min(times["gdn2_always_shared"]),
            "all_times_s": times,
            "agreement": compare(a_ours, a_stock, requests, ours.tokenizer),
        }
        if device == "cuda":
            report["models"][kind]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps({kind: report["models"][kind]}, indent=1), flush=True)
        del ours, shared, stock, lms, model, fast
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gdn2_1.3B,kda",
                    help=f"GDN-2 preset names and/or fla baselines ({', '.join(FLA_BASELINES)})")
    ap.add_argument("--limit", type=int, default=40, help="documents per task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--kernel", default="fla", help="GDN-2 kernel path (fla, triton, torch)")
    ap.add_argument("--impl", default="auto", help="how the gdn2 backend runs GDN-2: auto, inference, reference")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    report = bench(args.models.split(","), args.limit, args.batch_size, args.kernel, impl=args.impl)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
