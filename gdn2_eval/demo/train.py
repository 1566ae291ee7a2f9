"""Training of the demo models: small GDN-2, KDA and Gated DeltaNet language models on synthetic retrieval.

* Tokenizer: a byte-level BPE trained on the built-in haystack text and RULER's template (`demo_tokenizer`), shared
  by the three demos so that their numbers compare.
* Data (`RetrievalStream`, `batch_examples`): RULER-format samples of every NIAH task over the built-in haystacks,
  and a key-value list recall format, at lengths up to 2K, generated on the fly with `TRAIN_SEED`, never the
  evaluation seed. Each step holds one length and about `batch_tokens` tokens (many short samples or few long
  ones, no padding between lengths); the first `curriculum_steps` use `curriculum_lengths`. Batch `n` depends
  only on the recipe and `n`: the same for any number of data workers, and a resumed run continues it.
* Loss: on the answer only (the values, the closing period and EOS): the models learn retrieval, not the haystack.
* On CUDA the recurrence runs through fla's kernels (forward and backward) under bf16 autocast; elsewhere through
  PyTorch. A checkpoint is written every `save_every` steps and `resume=True` continues from it.
* At the end: the model (bf16 safetensors), the tokenizer, `training.json` (recipe, losses, evaluation) and a model
  card `README.md`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError
from ..ruler import (
    ANSWER_PREFIX,
    DEFAULT_SEED,
    NEEDLE,
    NOISE,
    TEMPLATE,
    builtin_essay,
    generate_samples,
    load_tokenizer,
    prompt_ids,
    sample_score,
)
from ..ruler.words import draw_unique
from .recipe import DemoRecipe

TRAIN_SEED = 1  # seed of the training samples; evaluation samples use ruler.DEFAULT_SEED
if TRAIN_SEED == DEFAULT_SEED:
    raise AssertionError("training and evaluation seeds must differ")

# How often each format is drawn: the paper's Table 3 tasks most, every other NIAH task and key-value lists too.
TASK_WEIGHTS = {
    "niah_single_1": 2,
    "niah_single_2": 2,
    "niah_single_3": 1,
    "niah_multikey_1": 2,
    "niah_multikey_2": 1,
    "niah_multikey_3": 1,
    "niah_multivalue": 1,
    "niah_multiquery": 1,
    "kv_recall": 2,
}
SAMPLES_PER_DRAW = 16  # samples generated per (format, length) draw: amortises the generator's set-up
MAX_DRAWS = 256  # draws per batch; sample indices are numbered (seed, step, draw), so this bounds a batch
EVAL_CELLS = (("niah_single_1", 1024), ("niah_single_1", 2048))


def demo_tokenizer(vocab_size: int):
    """The demos' BPE (`<s>`, `</s>`, `<pad>` are ids 0, 1, 2), trained on the built-in essays and RULER's text."""
    from ..bpe import train_bpe

    digits = " ".join(str(n) for n in range(1000))
    return train_bpe([builtin_essay().text, TEMPLATE, ANSWER_PREFIX, NEEDLE, NOISE, digits] * 4, vocab_size)


def kv_recall_samples(length: int, n: int, tok, start: int, seed: int = TRAIN_SEED) -> list[dict[str, Any]]:
    """A second retrieval format: a list of `key: value` lines and a question about one key, prompt tokens + 128
    within `length` and as many lines as fit, in the RULER sample schema (`input`, `answer_prefix`, `outputs`)."""
    out = []
    for index in range(start, start + n):
        rng = random.Random(f"gdn2-eval/demo/kv/{seed}/{length}/{index}")
        used: set[str] = set()
        pairs = [(draw_unique("words", rng, used), draw_unique("numbers", rng, used)) for _ in range(length // 6)]
        # How many lines fit, from each line's token count (one batched call): tokenising the whole prompt per
        # candidate count made this format the slowest part of a short training batch.
        lines = tok([f"{k}: {v}\n" for k, v in pairs], add_special_tokens=False)["input_ids"]
        longest = max((k for k, _ in pairs), key=len)
        budget = length - 128 - len(tok(_kv_text([], longest)[0] + _kv_text([], longest)[1],
                                         add_special_tokens=False)["input_ids"])
        keep, used_tokens = 0, 0
        while keep < len(pairs) and used_tokens + len(lines[keep]) <= budget:
            used_tokens += len(lines[keep])
            keep += 1
        pairs = pairs[: max(2, keep)]
        key, value = rng.choice(pairs)
        while True:  # the per-line count is an estimate (tokens can merge across a line break): check the prompt
            text, prefix = _kv_text(pairs, key)
            if len(tok(text + prefix, add_special_tokens=False)["input_ids"]) + 128 <= length or len(pairs) <= 2:
                break
            pairs.remove(next(p for p in reversed(pairs) if p[0] != key))
        out.append({"input": text, "answer_prefix": prefix, "outputs": [value], "length": length})
    return out


def _kv_text(pairs: list[tuple[str, str]], key: str) -> tuple[str, str]:
    """(prompt text, answer prefix) of a key-value list sample."""
    text = "Remember the value of every key.\n" + "\n".join(f"{k}: {v}" for k, v in pairs)
    return text + f"\nWhat is the value of {key}?", f" The value of {key} is"


def training_example(sample: dict[str, Any], tok) -> tuple[list[int], list[int]]:
    """(token ids, labels): the prompt as the model sees it, then the answer (values, a period, EOS), with labels
    -100 everywhere but the answer."""
    prompt = prompt_ids(sample, tok)
    answer = tok(" " + ", ".join(sample["outputs"]) + ".", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def batch_examples(step: int, recipe: DemoRecipe, tok) -> list[tuple[list[int], list[int]]]:
    """The training examples of step `step`: one length (from `curriculum_lengths` during the curriculum),
    `batch_tokens // length` samples, formats drawn by `TASK_WEIGHTS` among those that fit the length, in groups of
    `SAMPLES_PER_DRAW`. Depends only on the recipe's seed, lengths and batch size, and `step`."""
    from ..ruler import RulerError

    rng = random.Random(f"gdn2-eval/demo/batch/{recipe.seed}/{step}")
    length = rng.choice(sorted(recipe.curriculum_lengths if step < recipe.curriculum_steps else recipe.lengths))
    n = max(1, recipe.batch_tokens // length)
    weights = dict(TASK_WEIGHTS)
    examples: list[tuple[list[int], list[int]]] = []
    for draw in range(MAX_DRAWS):
        if len(examples) >= n:
            return examples
        if not weights:
            break
        task = rng.choices(list(weights), list(weights.values()))[0]
        k = min(SAMPLES_PER_DRAW, n - len(examples))
        start = ((recipe.seed * (1 << 24) + step) * MAX_DRAWS + draw) * SAMPLES_PER_DRAW  # never reused
        try:
            if task == "kv_recall":
                samples = kv_recall_samples(length, k, tok, start)
            else:
                samples = generate_samples(task, length, k, tok, seed=TRAIN_SEED, start_index=start)
        except RulerError:
            del weights[task]  # its template does not fit this length under this tokenizer: draw among the others
            continue
        examples.extend(training_example(sample, tok) for sample in samples)
    raise UserError(f"could not fill a training batch at length {length}: no training format fits it")


class RetrievalStream(torch.utils.data.IterableDataset):
    """Collated batches from step `start` on; worker `w` of `W` makes steps start+w, start+w+W, ..., which the
    loader hands out in step order."""

    def __init__(self, tok_dir: str, recipe: DemoRecipe, start: int) -> None:
        self.tok_dir, self.recipe, self.start = tok_dir, recipe, start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        tok = load_tokenizer(self.tok_dir)
        for step in range(self.start + worker, 1 << 62, workers):
            yield collate(batch_examples(step, self.recipe, tok), tok.pad_token_id)


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int, multiple: int = 64) -> tuple[torch.Tensor, ...]:
    """Right-padded ids and labels, the length rounded up to `multiple` (fewer kernel variants to compile). Right
    padding needs no mask: a causal model's real positions never see it."""
    n = -(-max(len(ids) for ids, _ in batch) // multiple) * multiple
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), torch.tensor(y)
    return ids, labels


def answer_loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens; logits only at the positions that predict them."""
    hidden = model.model(ids)[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[keep])
    return F.cross_entropy(logits.float(), target[keep])


@torch.no_grad()
def niah_score(model, tok, task: str, length: int, samples: int, seed: int = DEFAULT_SEED) -> float:
    """RULER `string_match_all` (percent) of greedy answers on fresh evaluation samples."""
    from ..generation import greedy_generate

    docs = generate_samples(task, length, samples, tok, seed=seed)
    prompts = [prompt_ids(d, tok) for d in docs]
    outs = greedy_generate(model, prompts, 32, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    preds = [tok.decode(o) for o in outs]
    return 100 * sum(sample_score(p, d["outputs"]) for p, d in zip(preds, docs)) / len(docs)


def _lr(step: int, recipe: DemoRecipe) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = min(1.0, (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup))
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_demo(recipe: DemoRecipe, out: Path, device: str = "auto", resume: bool = False) -> dict[str, Any]:
    """Train one demo model into `out` (see the module doc); returns what `training.json` records."""
    from ..loading import resolve_device
    from ..model import GDN2ForCausalLM

    dev = resolve_device(device)
    out = Path(out)
    ckpt = out / "checkpoint"
    if out.exists() and any(out.iterdir()) and not resume:
        raise UserError(f"{out} is not empty: pass --resume to continue its training, or choose another --out")
    if resume and (out / "training.json").is_file() and not ckpt.exists():
        raise UserError(f"{out} holds a finished training; choose another --out to train again")
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = ckpt / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        demo_tokenizer(recipe.vocab_size).save_pretrained(tok_dir)
    tok = load_tokenizer(tok_dir)
    if len(tok) > recipe.vocab_size:
        raise UserError(f"the tokenizer has {len(tok)} tokens, more than vocab_size={recipe.vocab_size}")

    torch.manual_seed(recipe.seed)
    kernel = "fla" if dev.type == "cuda" else "torch"
    model = GDN2ForCausalLM(recipe.config(kernel)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.01)
    step, log, resumed_at = 0, [], []  # log rows: [step, loss, seconds since the start of training]
    if resume and (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        resumed_at = [*state.get("resumed_at", []), step]
        log = json.loads((ckpt / "log.json").read_text())
    elapsed_before = log[-1][2] if log else 0.0  # seconds trained before a resume

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the loader forks after the tokenizer was used
    workers = recipe.workers if dev.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(RetrievalStream(str(tok_dir), recipe, step), batch_size=None,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=dev.type == "cuda")
    batches = iter(loader)
    autocast = torch.autocast("cuda", torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    t0, stopped_early = time.perf_counter(), False
    model.train()
    bar = tqdm(total=recipe.steps, initial=step, desc=f"train {recipe.gates}", unit="step")
    while step < recipe.steps:
        if time.perf_counter() - t0 > recipe.max_minutes * 60:
            stopped_early = True
            break
        ids, labels = (t.to(dev, non_blocking=True) for t in next(batches))
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        with autocast:
            loss = answer_loss(model, ids, labels)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        value = loss.item()  # one device sync per step
        log.append([step, round(value, 5), round(time.perf_counter() - t0 + elapsed_before, 2)])
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}")
        if step % recipe.save_every == 0:
            save_checkpoint(ckpt, model, opt, step, log, resumed_at)
    bar.close()
    if stopped_early:  # keep what was trained: `--resume` with a longer --max-minutes continues from here
        save_checkpoint(ckpt, model, opt, step, log, resumed_at)
    minutes = (time.perf_counter() - t0 + elapsed_before) / 60
    half = log[len(log) // 2:]  # steady speed: the second half, past kernel compilation and data-worker start
    rate = (half[-1][0] - half[0][0]) / max(1e-9, half[-1][2] - half[0][2]) if len(half) > 1 else None

    model.eval()
    scores = evaluation(model, tok, recipe.eval_samples)
    tail = [row[1] for row in log[-50:]]
    record = {
        "recipe": asdict(recipe),
        "steps_done": step,
        "stopped_by_time_limit": stopped_early,
        "resumed_at_steps": resumed_at,
        "train_minutes": round(minutes, 2),
        "steps_per_second": round(rate, 2) if rate else None,
        "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "first_loss": log[0][1] if log else None,
        "eval_seed": DEFAULT_SEED,
        "train_seed": TRAIN_SEED,
        "eval_string_match_all": scores,
        "eval_samples": recipe.eval_samples if scores else 0,
        "parameters": sum(p.numel() for p in model.parameters()),
        "state_floats_per_layer": recipe.heads * recipe.head_dim * recipe.head_dim,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
    }
    model.config.kernel = "auto"
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "train_log.json").write_text(json.dumps(log))
    (out / "README.md").write_text(model_card(record))
    if not stopped_early:
        shutil.rmtree(ckpt)  # the finished model is in `out`; the training state is only for resuming
    return record


def save_checkpoint(ckpt: Path, model, opt, step: int, log: list, resumed_at: list[int]) -> None:
    """The training state for `--resume`, written atomically (an interrupted save leaves the previous one)."""
    ckpt.mkdir(exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "resumed_at": resumed_at}, ckpt / "tmp.pt")
    (ckpt / "tmp.pt").replace(ckpt / "state.pt")
    (ckpt / "log.json").write_text(json.dumps(log))


def evaluation(model, tok, samples: int) -> dict[str, float]:
    """S-NIAH-1 at 1K and 2K (`EVAL_CELLS`) on `samples` fresh evaluation samples each; {} when `samples` is 0."""
    return {f"{task}@{length}": niah_score(model, tok, task, length, samples)
            for task, length in EVAL_CELLS} if samples else {}


def evaluate_demo(out: Path, samples: int, device: str = "auto") -> dict[str, Any]:
    """Evaluate the trained model in `out` (as at the end of training) and rewrite its `training.json` and card;
    for a model trained with no evaluation, or to evaluate on another device."""
    from ..loading import load_model

    out = Path(out)
    if not (out / "training.json").is_file():
        raise UserError(f"{out} holds no finished demo training (no training.json)")
    loaded = load_model(out, device=device)
    record = json.loads((out / "training.json").read_text())
    record["eval_string_match_all"] = evaluation(loaded.model.eval(), loaded.tokenizer, samples)
    record["eval_samples"] = record["recipe"]["eval_samples"] = samples  # the card's command then evaluates alike
    record["eval_device"] = str(next(loaded.model.parameters()).device)
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "README.md").write_text(model_card(record))
    return record


def model_card(record: dict[str, Any]) -> str:
    """The model card (`README.md`) of a trained demo, from its `training.json` record."""
    r = record["recipe"]
    family = {"gdn2": "Gated DeltaNet-2 (decoupled erase/write gates, channel-wise decay)",
              "kda": "KDA (one beta per head for erase and write, channel-wise decay)",
              "gdn": "Gated DeltaNet (one beta per head for erase and write, scalar decay)"}[r["gates"]]
    lengths = ", ".join(str(n) for n in r["lengths"])
    recipe = DemoRecipe.from_record(r)
    short = ", ".join(map(str, recipe.curriculum_lengths))
    curriculum = f" (the first {r['curriculum_steps']} at lengths {short})" if r["curriculum_steps"] else ""
    resumed = record.get("resumed_at_steps") or []
    resumes = f", resumed from its checkpoint at step {', '.join(map(str, resumed))}" if resumed else ""
    rows = {
        "architecture": f"{r['layers']} blocks, d_model {r['hidden_size']}, {r['heads']} heads x {r['head_dim']}, "
                        f"SwiGLU {r['intermediate_size']}, gates `{r['gates']}`",
        "parameters": f"{record['parameters']:,}",
        "recurrent state": f"{r['heads']} x {r['head_dim']} x {r['head_dim']} = {record['state_floats_per_layer']:,} "
                           "floats per layer (the same for the three demos)",
        "tokenizer": f"byte-level BPE, {r['vocab_size']} tokens, trained on the built-in essays and RULER's template",
        "training data": f"RULER-format samples of all eight NIAH tasks and key-value lists over the built-in "
                         f"haystacks, lengths {lengths}, seed {record['train_seed']} (evaluation uses "
                         f"{record['eval_seed']})",
        "training": f"{record['steps_done']} steps of {r['batch_tokens']:,} tokens{curriculum}, AdamW lr {r['lr']}, "
                    f"answer-only loss, {record['train_minutes']} min on {record['device']}{resumes}",
        "final loss": f"{record['final_loss']} (mean of the last 50 steps; first step {record['first_loss']})",
    }
    if record.get("note"):
        rows["note"] = record["note"]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows.items())
    scores = "\n".join(f"| {cell} | {value:.1f} |" for cell, value in record["eval_string_match_all"].items())
    if scores:
        evaluation_text = (f"Evaluation (RULER `string_match_all`, {record['eval_samples']} fresh samples per cell, "
                           f"seed {record['eval_seed']}):\n\n| cell | score |\n|---|---|\n{scores}")
    else:
        evaluation_text = "Not evaluated yet: `gdn2-eval train-demo --out DIR --evaluate` adds the evaluation."
    return f"""# gdn2-eval demo model: {family}

**This is a demo of the evaluation harness, trained on RULER-format synthetic data. It is not evidence about the
architecture at scale**: its RULER scores measure what it was trained on.

| | |
|---|---|
{table}

{evaluation_text}

Reproduce: `{recipe.command()}` (the whole recipe is in `training.json`).
"""


def train_all(out: Path, args: list[str]) -> list[dict[str, Any]]:
    """Train the three demos at once, one process each, into `out/demo`, `out/demo-kda`, `out/demo-gdn`; `args` are
    the other `train-demo` options. They share a GPU (each is far too small to fill one), or take turns over the
    visible GPUs when there are several. Returns their records."""
    import subprocess
    import sys

    from . import DEMOS

    procs = {}
    for i, (name, gates) in enumerate(DEMOS.items()):
        gpu = _gpu_for(i)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
        procs[name] = subprocess.Popen([sys.executable, "-m", "gdn2_eval", "train-demo", "--gates", gates,
                                        "--out", str(Path(out) / name), *args], env=env)
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise UserError(f"training failed for {', '.join(failed)} (see the output above)")
    return [json.loads((Path(out) / name / "training.json").read_text()) for name in procs]


def _gpu_for(i: int) -> str | None:
    """The GPU of the `i`-th training process, round robin over the visible ones; None with fewer than two."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([g for g in visible.split(",") if g.strip()] if visible is not None
            else [str(n) for n in range(torch.cuda.device_count())])
    return gpus[i % len(gpus)].strip() if len(gpus) > 1 else None
