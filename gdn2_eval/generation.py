"""Greedy generation for recurrent and hybrid models with a fixed-size cache: the decode loop of the `gdn2` backend.

Where the time goes in NIAH evaluation is the decode loop, not arithmetic: one step of a 1.3B model reads ~2.6 GB
of weights (about 1 ms on an H100) but Hugging Face `generate` spends tens of milliseconds per step around it. Here:

* the prompts are prefilled in chunks of `chunk_tokens` tokens, left-padded rows running as packed variable-length
  sequences (pad tokens never reach a state), so a 128K-token prompt needs no more memory than a short one;
* each step is one forward of the model on one token per row, with nothing else in the loop but an argmax;
* the state has a fixed shape, so batches can be large; rows that finished (an end-of-sequence token or a stop
  string) are dropped from the batch every `check_every` steps. Rows are independent, so dropping one never
  changes another's prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def pad_batch(seqs: Sequence[Sequence[int]], side: str, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one [rows, longest] tensor padded on `side` ("left" or "right"), and its 0/1 mask."""
    n = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            sl = slice(n - len(s), n) if side == "left" else slice(0, len(s))
            ids[i, sl] = torch.as_tensor(list(s))
            mask[i, sl] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def prefill(model, prompts: Sequence[Sequence[int]], pad_id: int, chunk_tokens: int):
    """Run left-padded `prompts` through `model` `chunk_tokens` tokens per forward, state carried in a fresh cache
    (pad tokens never reach it). Returns the cache and the logits after each prompt's last token [rows, vocab]."""
    ids, mask = pad_batch(prompts, side="left", pad=pad_id, device=model.device)
    cache = model.new_cache(len(prompts))
    step = max(1, chunk_tokens // len(prompts))
    for c0 in range(0, ids.shape[1], step):
        out = model(ids[:, c0 : c0 + step], attention_mask=mask[:, c0 : c0 + step], past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1]


@torch.no_grad()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    chunk_tokens: int = 16384,
    finished: Callable[[int, list[int]], bool] | None = None,
    check_every: int = 8,
) -> list[list[int]]:
    """Greedy continuations of `prompts` (token ids, one list per row), each cut before its first token in
    `eos_ids`. `finished(row, tokens)` may end a row early (a stop string was generated); it is asked every
    `check_every` steps. The model must have `new_cache(batch)` (a `GDN2ForCausalLM`)."""
    n = len(prompts)
    if n == 0:
        return []
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    dev = model.device
    cache, last = prefill(model, prompts, pad_id, chunk_tokens)
    token = last.argmax(-1)

    generated = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=dev)
    rows = torch.arange(n, device=dev)  # the original row of each row still in the batch
    lengths = [max_new_tokens] * n  # tokens produced per original row (shorter for rows dropped early)
    for t in range(max_new_tokens):
        generated[rows, t] = token
        if t == max_new_tokens - 1:
            break
        if (t + 1) % check_every == 0:
            keep = _still_running(generated, rows, t + 1, eos, finished)
            if keep is not None:
                for r in rows[~keep].tolist():
                    lengths[r] = t + 1
                if not keep.any():
                    break
                idx = keep.nonzero()[:, 0]
                rows, token = rows[idx], token[idx]
                cache.batch_select_indices(idx)
        out = model(token[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1)
    return [_cut(row[:k], eos_ids) for row, k in zip(generated.tolist(), lengths)]


def _still_running(generated, rows, length, eos, finished) -> torch.Tensor | None:
    """Boolean mask over the batch's rows: False where a row has produced EOS or `finished` says so. None when every
    row goes on (nothing to drop)."""
    done = torch.isin(generated[rows, :length], eos).any(1) if eos.numel() else torch.zeros_like(rows, dtype=bool)
    if finished is not None:
        so_far = generated[rows, :length].tolist()
        extra = [finished(int(r), toks) for r, toks in zip(rows.tolist(), so_far)]
        done = done | torch.tensor(extra, dtype=torch.bool, device=done.device)
    return None if not done.any() else ~done


def _cut(tokens: list[int], eos_ids: Sequence[int]) -> list[int]:
    stop = set(eos_ids)
    for i, tok in enumerate(tokens):
        if tok in stop:
            return tokens[:i]
    return tokens
