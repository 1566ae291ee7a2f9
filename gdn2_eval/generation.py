"""Greedy generation for recurrent and hybrid models with a fixed-size cache: the decode loop of the `gdn2` backend.

Where the time goes in NIAH evaluation is the decode loop, not arithmetic: one step of a 1.3B model reads ~2.6 GB
of weights (about 1 ms on an H100) but Hugging Face `generate` spends tens of milliseconds per step around it. Here:

* the prompts are prefilled in chunks of `chunk_tokens` tokens, left-padded rows running as packed variable-length
  sequences (pad tokens never reach a state), so a 128K-token prompt needs no more memory than a short one;
* each step is one forward of the model on one token per row, with nothing else in the loop but an argmax;
* the state has a fixed shape, so batches can be large. On CUDA the one-token step is captured once as a CUDA
  graph and replayed (`GraphDecoder`); elsewhere it runs eagerly (`EagerDecoder`) and rows that finished (an
  end-of-sequence token or a stop string) leave the batch. Finished rows are checked every `check_every` steps;
  rows are independent, so one row's end never changes another's prediction.
"""

from __future__ import annotations

import sys
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
def prefill(model, prompts: Sequence[Sequence[int]], pad_id: int, chunk_tokens: int, cache=None):
    """Run left-padded `prompts` through `model` `chunk_tokens` tokens per forward, state carried in a fresh cache
    or in `cache` (one row per prompt, continued; pad tokens never reach it). Returns the cache and the logits
    after each prompt's last token [rows, vocab].

    Every chunk runs packed, padded or not, so a prefill needs one set of kernel variants (on a GPU, each new
    variant costs a compilation and autotuning on first use)."""
    ids, mask = pad_batch(prompts, side="left", pad=pad_id, device=model.device)
    if cache is None:
        cache = model.new_cache(len(prompts))
    step = max(1, chunk_tokens // len(prompts))
    for c0 in range(0, ids.shape[1], step):
        out = model(ids[:, c0 : c0 + step], attention_mask=mask[:, c0 : c0 + step], past_key_values=cache,
                    use_cache=True, logits_to_keep=1, packed=True)
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
    cuda_graph: bool | None = None,
) -> list[list[int]]:
    """Greedy continuations of `prompts` (token ids, one list per row), each cut before its first token in
    `eos_ids`. `finished(row, tokens)` may end a row early (a stop string was generated); it is asked every
    `check_every` steps. The model must have `new_cache(batch)` (a `GDN2ForCausalLM`).

    `cuda_graph` (default: on CUDA) captures the one-token step once as a CUDA graph and replays it (`GraphDecoder`);
    otherwise each step runs eagerly and finished rows leave the batch (`EagerDecoder`)."""
    n = len(prompts)
    if n == 0:
        return []
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    cache, last = prefill(model, prompts, pad_id, chunk_tokens)
    return generate_from(model, cache, last, max_new_tokens, eos_ids, pad_id, finished, check_every, cuda_graph)


@torch.no_grad()
def generate_from(model, cache, last: torch.Tensor, max_new_tokens: int, eos_ids: Sequence[int] = (), pad_id: int = 0,
                  finished: Callable[[int, list[int]], bool] | None = None, check_every: int = 8,
                  cuda_graph: bool | None = None) -> list[list[int]]:
    """Greedy continuations of prompts already prefilled into `cache`, `last` their last logits [rows, vocab]."""
    if cuda_graph is None:
        cuda_graph = model.device.type == "cuda"
    token = last.argmax(-1)
    decoder = GraphDecoder(model, cache, token) if cuda_graph else EagerDecoder(model, cache, token)
    return decode(decoder, last.shape[0], max_new_tokens, eos_ids, pad_id, finished, check_every)


def decode(decoder, n: int, max_new_tokens: int, eos_ids: Sequence[int], pad_id: int,
           finished: Callable[[int, list[int]], bool] | None, check_every: int) -> list[list[int]]:
    """The decode loop over `n` rows whose first new token `decoder` already holds."""
    dev = decoder.token.device
    generated = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=dev)
    rows = torch.arange(n, device=dev)  # the original row of each row still running
    lengths = [max_new_tokens] * n  # tokens produced per original row (shorter for rows that finished early)
    for t in range(max_new_tokens):
        generated[rows, t] = decoder.tokens()
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
                rows = rows[idx]
                decoder.keep(idx)
        decoder.step()
    return [_cut(row[:k], eos_ids) for row, k in zip(generated.tolist(), lengths)]


class EagerDecoder:
    """Each step one eager forward of the model on one token per row; rows that finish leave the batch."""

    def __init__(self, model, cache, token: torch.Tensor) -> None:
        self.model, self.cache, self.token = model, cache, token

    def tokens(self) -> torch.Tensor:
        """The current token of each running row."""
        return self.token

    def keep(self, idx: torch.Tensor) -> None:
        """Only the running rows at positions `idx` go on."""
        self.token = self.token[idx]
        self.cache.batch_select_indices(idx)

    def step(self) -> None:
        out = self.model(self.token[:, None], past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.token = out.logits[:, -1].argmax(-1)


class GraphDecoder:
    """The one-token step over a fixed batch, captured once as a CUDA graph and then replayed.

    Eager decoding of a 1.3B model spends tens of milliseconds per step launching some 8K small kernels; a replay
    launches them all at once, so a step costs about what its weight reads cost. A graph needs fixed shapes and
    addresses, so the state lives in fixed buffers: each step's forward reads them and copies the new state back
    into them, and window caches are padded to their full width up front (the padding is masked as before the
    first token). Rows that finish stay in the batch (their tokens are ignored): at one token per row a step
    costs the same at any batch size, since reading the weights dominates.

    With `capture=False` the same fixed-buffer step runs eagerly (what CPU tests check against `EagerDecoder`).
    """

    def __init__(self, model, cache, token: torch.Tensor, capture: bool = True) -> None:
        self.model, self.capture = model, capture
        cache.widen_windows(getattr(model.config, "local_window", 1) - 1)  # the keys a future query can still see
        self.cache = cache.copy()  # the fixed buffers
        self.token = token.clone()
        self.rows = torch.arange(token.numel(), device=token.device)  # batch slots of the running rows
        self.graph = None

    def tokens(self) -> torch.Tensor:
        return self.token[self.rows]

    def keep(self, idx: torch.Tensor) -> None:
        self.rows = self.rows[idx]

    def step(self) -> None:
        if not self.capture:
            self._forward()
        elif self.graph is not None:
            self.graph.replay()
        else:
            # the first step runs eagerly on a side stream (kernel autotuning and lazy set-up happen outside the
            # capture), then the same step is recorded for the replays that follow
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self._forward()
            except RuntimeError as e:  # a step that waits for the GPU cannot be captured: the same step, eagerly
                # (nothing recorded ran, so the state is the eager first step's)
                first = (str(e).splitlines() or [type(e).__name__])[0]
                print(f"decode step of {type(self.model).__name__} could not be captured as a CUDA graph ({first}); "
                      "decoding eagerly", file=sys.stderr, flush=True)
                self.graph, self.capture = None, False

    def _forward(self) -> None:
        work = self.cache.view()
        out = self.model(self.token[:, None], past_key_values=work, use_cache=True, logits_to_keep=1)
        self.cache.copy_from(work)
        self.token.copy_(out.logits[:, -1].argmax(-1))


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
