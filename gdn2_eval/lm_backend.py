"""The `gdn2` lm-eval model backend.

Registered with lm-eval on `import gdn2_eval.lm_backend` (and on `import gdn2_eval`), so both `gdn2-eval run` and
lm-eval's own CLI (`lm_eval --model gdn2 --model_args pretrained=...` with `--include_path` or after importing
gdn2_eval) can use it. It loads GDN-2 HF directories, the authors' `.pth` checkpoints (`arch=`, `tokenizer=`), fla
baselines and plain HF causal LMs through `gdn2_eval.load_model`.

For GDN-2 models, and for other Hugging Face causal LMs behind `gdn2_eval.hf_adapter` (fla's and transformers'
recurrent, hybrid and attention models), scoring is recurrent-aware and exact:
* a context shared by several requests (multiple choice) is run once; each continuation starts from a copy of its
  state;
* inputs are fed `chunk_tokens` at a time with the recurrent, convolution and window state carried across chunks, so
  memory does not grow with length and nothing is truncated; forwards that keep no logits but the last (prompts before
  generation, shared contexts) take `prefill_tokens` at a time, since their memory holds no [T, vocab] tensor;
* logits become log-probabilities one chunk at a time (never a [T, vocab] float32 tensor for a whole long input).
A model with no recurrent layer keeps its positional limit: a longer input is an error, never silently truncated.
GDN-2 models, and adapted models whose state has a fixed size, also get the prefix tree (`gdn2_eval.prefix_tree`);
they also decode with a captured step on CUDA, other models eagerly (`AdaptedLM.path_record` says why). A model the
adapter cannot take goes through lm-eval's stock HF path, with the same limit check.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm
from transformers import PreTrainedModel

from . import checks
from .distributed import balanced_call, make_accelerator, single_process
from .errors import UserError
from .generation import generate_from, greedy_generate, pad_batch, prefill
from .hf_adapter import AdaptedLM, NotAdaptable, adapt
from .loading import load_model, load_tokenizer
from .model import GDN2Config
from .prefix_tree import PrefixWalk, default_budget, join, tree_pays
from .provenance import gdn2_impl

PPL_PROTOCOLS = ("rolling", "carry")
# Recurrent models have no context limit; lm-eval still asks for one (generation budget arithmetic).
UNBOUNDED = 1 << 40


class NonFiniteLogits(RuntimeError):
    """NaN or inf in a model's logits: the task stops, naming the request."""


# share_prefix="auto": a context is run once for all its continuations when that saves at least this many context
# tokens; shorter groups are cheaper as one right-padded pass per request (one forward instead of two).
SHARE_MIN_TOKENS = 256


def _share_mode(value: Any) -> bool | str:
    text = str(value).lower()
    if text == "auto":
        return "auto"
    if text in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return text in ("1", "true", "yes", "on")
    raise UserError(f"share_prefix must be auto, on or off, not {value!r}")


@register_model("gdn2")
class GDN2LM(HFLM):
    def __init__(
        self,
        pretrained: str,
        arch: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int | str = 16,
        max_batch_size: int = 64,
        chunk_tokens: int = 16384,
        prefill_tokens: int = 65536,
        ppl_protocol: str = "rolling",
        ppl_window: int | None = None,
        share_prefix: bool | str = "auto",
        share_budget: int | str | None = None,
        gate_ablation: str | None = None,
        kernel: str | None = None,
        impl: str = "auto",
        max_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        overrides = {k: v for k, v in (("gate_ablation", gate_ablation), ("kernel", kernel)) if v is not None}
        accelerator = make_accelerator()  # under `accelerate launch` / torchrun: one replica per process
        if accelerator is not None:
            device = str(accelerator.device)
        if isinstance(pretrained, PreTrainedModel):  # an already loaded model, as lm-eval's `hf` backend accepts
            model, tok = pretrained.eval(), tokenizer
            if isinstance(tok, (str, Path)):
                tok = load_tokenizer(tok)
            for key, value in overrides.items():
                if not isinstance(model.config, GDN2Config):
                    raise UserError(f"GDN-2 option {key} does not apply to a {type(model).__name__}")
                setattr(model.config, key, value)
        else:
            model, tok = load_model(pretrained, arch=arch, tokenizer=tokenizer, dtype=dtype, device=device, impl=impl,
                                    **overrides)
        if tok is None:
            raise UserError(f"no tokenizer for {pretrained}: pass tokenizer=DIR (checkpoint files hold none)")
        if ppl_protocol not in PPL_PROTOCOLS:
            raise UserError(f"unknown ppl_protocol {ppl_protocol!r}; choose {', '.join(PPL_PROTOCOLS)}")
        # the backend's own path needs `new_cache` and chunked forwards: GDN-2 models have them, other causal LMs get
        # them from the adapter (None: a model it cannot take, run by lm-eval's stock path)
        self.stock_reason: str | None = None  # why a model runs on lm-eval's stock path, when it does
        # a model on the stock path whose cache holds a recurrent state (whole sequences then run in one forward,
        # with no positional limit)
        self.stock_recurrent = False
        if not callable(getattr(model, "new_cache", None)):
            try:
                model = adapt(model)
            except NotAdaptable as e:
                self.stock_reason, self.stock_recurrent = str(e), bool(e.recurrent)
        self.recurrent = callable(getattr(model, "new_cache", None))
        self.adapted = isinstance(model, AdaptedLM)
        if batch_size == "auto":  # batches are bounded by tokens per forward (chunk_tokens), not by probing memory
            batch_size = max_batch_size
        super().__init__(
            pretrained=model,
            tokenizer=tok,
            backend="causal",
            batch_size=int(batch_size),
            max_batch_size=int(max_batch_size),
            max_length=max_length,
            **kwargs,
        )
        if accelerator is not None:  # lm-eval shards documents by these and gathers results on rank 0
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        # Request cache of this rank's part of a balanced call (set by the runner in distributed runs, where
        # lm-eval's own per-rank cache would skip the collective call on a rank whose requests are all cached).
        self.request_cache: str | None = None
        self._rank_cache = None
        self.model_path = str(pretrained) if not isinstance(pretrained, PreTrainedModel) else type(pretrained).__name__
        self.chunk_tokens = int(chunk_tokens)
        self.prefill_tokens = int(prefill_tokens)
        self.share_prefix = _share_mode(share_prefix)
        self.share_budget = checks.size("share_budget", share_budget)
        # tokens of the prompts as given, and tokens actually run through the model (prefix sharing saves the
        # difference); the runner records both per task
        self.reset_token_stats()
        self.ppl_protocol = ppl_protocol
        # Default window of the rolling protocol: the length the model was trained at (lm-eval's standard protocol
        # at the model's training length).
        training = getattr(model.config, "training_length", None)
        self.ppl_window = int(ppl_window or training or super().max_length)
        if self.recurrent and self.model.device.type == "cuda":
            self.compile_kernels()

    def compile_kernels(self) -> float:
        """Run the model once on a small packed batch and one decode step. A process's first forward compiles every
        Triton kernel of the model (and fla may autotune): done here, the run says so instead of its first task
        seeming to hang. Later processes find the kernels in Triton's on-disk cache. Returns the seconds taken."""
        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if self.rank == 0 else (lambda msg: None)
        say("compiling the model's GPU kernels (first forward of this process; cached on disk for the next) ...")
        t0 = time.perf_counter()
        with torch.no_grad():
            cache, last = prefill(self.model, [[1] * 96, [1] * 40], 0, self.chunk_tokens)  # packed, two lengths
            self.model(last.argmax(-1)[:, None], past_key_values=cache, use_cache=True)  # the one-token step
        if self.model.device.type == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - t0
        say(f"compiled in {took:.1f}s")
        return took

    # ---- limits --------------------------------------------------------------------------------------------------
    @property
    def position_limit(self) -> int | None:
        """Longest input the model takes; None when a recurrent state carries any length."""
        if self._max_length:
            return self._max_length
        if self.adapted:
            return self.model.position_limit
        return None if self.recurrent or self.stock_recurrent else super().max_length

    @property
    def max_length(self) -> int:
        return self.position_limit or UNBOUNDED

    def path_record(self) -> dict[str, Any]:
        """Which path the model takes through this backend, and why (recorded with the run)."""
        if self.adapted:
            return self.model.path_record()
        if not self.recurrent:
            record = {"path": "stock-hf", "why": self.stock_reason or "no cache the backend can carry"}
            if self.stock_recurrent:  # recurrent: no positional limit, each request one whole-sequence forward
                record.update(layers="recurrent", length_limit=None,
                              scoring="each request in one forward over the whole sequence, no length limit")
            return record
        return {"path": "recurrent-aware", "layers": "gdn2",
                "why": "GDN-2: packed chunked prefill with the state carried, no length limit",
                "decode": "cuda graph" if self.model.device.type == "cuda" else "eager",
                "prefix_tree": self.share_prefix is not False}

    def protocol(self) -> dict[str, Any]:
        """The evaluation options that change numbers, recorded with every run."""
        return {
            "ppl_protocol": self.ppl_protocol,
            "ppl_window": self.ppl_window if self.ppl_protocol == "rolling" else None,
            "chunk_tokens": self.chunk_tokens,
            "prefill_tokens": self.prefill_tokens,
            "share_prefix": self.share_prefix,
            "impl": gdn2_impl(self.model),
        }

    def check_fits(self, lengths: list[int], what: str, advice: str | None = None) -> None:
        """A one-line `UserError` when the longest of `lengths` is past the model's positional limit."""
        limit = self.position_limit
        longest = max(lengths, default=0)
        if limit is not None and longest > limit:
            raise UserError(
                f"a {what} of {longest} tokens does not fit this model's limit of {limit} positions "
                "(an attention model has no state to carry past it); "
                + (advice or "use shorter tasks or --limit, or pass max_length=... if the model supports more")
            )

    # ---- loglikelihood -------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        self.check_fits([len(c) + len(x) - 1 for _, c, x in requests], "context plus continuation")
        if not self.recurrent:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        walk = self._context_walk(requests)
        if walk is not None:
            return self._score_tree(walk, requests, override_bs or self.batch_size, disable_tqdm)
        groups: dict[Any, list[int]] = defaultdict(list)
        for i, (_, ctx, _) in enumerate(requests):
            groups[tuple(ctx) if self.share_prefix else i].append(i)
        shared, direct = [], []
        for ix in groups.values():
            saved = (len(ix) - 1) * len(requests[ix[0]][1])
            if len(ix) > 1 and (self.share_prefix is True or saved >= SHARE_MIN_TOKENS):
                shared.append(ix)
            else:
                direct.extend([i] for i in ix)
        limit = override_bs or self.batch_size
        # longest first, as lm-eval orders, so memory peaks early; split groups larger than a batch
        batches = [(self._score, b) for b in _batches(shared, requests, limit)]
        batches += [(self._score_direct, b) for b in _batches(direct, requests, limit)]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood") as bar:
            for score_batch, batch in batches:
                scores = score_batch(batch, requests)
                for i, score in scores.items():
                    results[i] = score
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
                bar.update(len(scores))
        return results

    @torch.no_grad()
    def _score(self, batch: list[list[int]], requests) -> dict[int, tuple[float, bool]]:
        """Score a batch of context groups: contexts once, then every continuation from a copy of its state."""
        model = self.model
        contexts = [requests[unit[0]][1] for unit in batch]
        self._count(sum(len(requests[i][1]) + len(requests[i][2]) - 1 for unit in batch for i in unit),
                    sum(len(c) for c in contexts) + sum(len(requests[i][2]) - 1 for unit in batch for i in unit))
        cache, last = prefill(model, contexts, self._pad_id(), self.prefill_tokens)
        return self._continue(batch, requests, cache, last)

    def _continue(self, batch: list[list[int]], requests, cache, last: torch.Tensor) -> dict[int, tuple[float, bool]]:
        """Score every continuation of a batch of context groups, `cache` and `last` holding one row per group
        (the state after its context and the logits of its last token)."""
        model, dev = self.model, self.device
        members = [i for unit in batch for i in unit]
        row_of = torch.tensor([r for r, unit in enumerate(batch) for _ in unit], device=dev)
        cache.batch_select_indices(row_of)  # one independent copy of the context state per continuation
        conts = [list(requests[i][2]) for i in members]
        first = torch.tensor([c[0] for c in conts], device=dev)
        first_lp, greedy = target_scores(last[row_of], first)
        logprob = first_lp.double()
        finite = torch.isfinite(first_lp).all()  # the contexts' last logits, then every chunk's: one check at the end
        inputs, in_mask = pad_batch([c[:-1] for c in conts], side="right", pad=self._pad_id(), device=dev)
        targets, _ = pad_batch([c[1:] for c in conts], side="right", pad=0, device=dev)
        step = max(1, self.chunk_tokens // len(conts))
        for c0 in range(0, inputs.shape[1], step):
            sl = slice(c0, c0 + step)
            m = in_mask[:, sl].bool()
            logits = model(inputs[:, sl], attention_mask=in_mask[:, sl], past_key_values=cache, use_cache=True).logits
            tok_lp, hit = target_scores(logits, targets[:, sl])
            tok_lp = tok_lp.where(m, 0.0)  # a pad's score never enters a sum, whatever its logits
            finite &= torch.isfinite(tok_lp).all()
            logprob += tok_lp.sum(1).double()
            greedy &= (hit | ~m).all(1)
        self._raise_unless(finite, [requests[i] for i in members])
        return {i: (float(logprob[r]), bool(greedy[r])) for r, i in enumerate(members)}

    @torch.no_grad()
    def _score_direct(self, batch: list[list[int]], requests) -> dict[int, tuple[float, bool]]:
        """Score requests one row each: context + continuation right-padded, fed `chunk_tokens` at a time with the
        state carried. No attention mask is needed: a causal model's outputs at real positions never see the pads
        that follow them, and nothing after a row's last real token is used."""
        model, dev = self.model, self.device
        members = [i for unit in batch for i in unit]
        seqs = [list(requests[i][1]) + list(requests[i][2]) for i in members]
        self._count(sum(len(q) - 1 for q in seqs), sum(len(q) - 1 for q in seqs))
        inputs, _ = pad_batch([s[:-1] for s in seqs], side="right", pad=self._pad_id(), device=dev)
        targets, _ = pad_batch([s[1:] for s in seqs], side="right", pad=0, device=dev)
        pos = torch.arange(inputs.shape[1], device=dev)
        first = torch.tensor([len(requests[i][1]) - 1 for i in members], device=dev)
        end = torch.tensor([len(s) - 1 for s in seqs], device=dev)
        scored = (pos >= first[:, None]) & (pos < end[:, None])  # the continuation's predictions
        row = torch.arange(len(members), device=dev)[:, None].expand_as(scored)
        logprob = torch.zeros(len(members), dtype=torch.float64, device=dev)
        wrong = torch.zeros(len(members), dtype=torch.long, device=dev)
        finite = torch.ones((), dtype=torch.bool, device=dev)
        cache = model.new_cache(len(members))
        step = max(1, self.chunk_tokens // len(members))
        for c0 in range(0, inputs.shape[1], step):
            sl = slice(c0, c0 + step)
            m = scored[:, sl]
            keep = 0 if m.any() else 1  # a chunk before every continuation only advances the state
            logits = model(inputs[:, sl], past_key_values=cache, use_cache=True, logits_to_keep=keep).logits
            if keep:
                continue
            tok_lp, hit = target_scores(logits[m], targets[:, sl][m])
            finite &= torch.isfinite(tok_lp).all()
            logprob.index_add_(0, row[:, sl][m], tok_lp.double())
            wrong.index_add_(0, row[:, sl][m], (~hit).long())
        self._raise_unless(finite, [requests[i] for i in members])
        return {i: (float(logprob[r]), bool(wrong[r] == 0)) for r, i in enumerate(members)}

    def _context_walk(self, requests) -> PrefixWalk | None:
        """The prefix tree over a call's distinct contexts, when sharing is on (or, with `auto`, saves enough)."""
        if self.share_prefix is False:
            return None
        contexts = list(dict.fromkeys(tuple(ctx) for _, ctx, _ in requests))
        return self._walk([list(c) for c in contexts], sum(len(ctx) for _, ctx, _ in requests))

    @torch.no_grad()
    def _score_tree(self, walk: PrefixWalk, requests, limit: int, disable_tqdm: bool) -> list[tuple[float, bool]]:
        """Scoring with each shared context prefix run once: continuations of each context start from its row."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, (_, ctx, _) in enumerate(requests):
            groups[tuple(ctx)].append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        ready, waiting = [], 0  # walk results not scored yet, and how many requests they hold

        def flush():
            done, cache, last = join(ready)
            ready.clear()
            scores = self._continue([groups[tuple(walk.prompts[j])] for j in done], requests, cache, last)
            for i, score in scores.items():
                results[i] = score
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
            return len(scores)

        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood") as bar:
            for item in walk:
                ready.append(item)
                waiting += sum(len(groups[tuple(walk.prompts[j])]) for j in item[0])
                if waiting >= limit:
                    bar.update(flush())
                    waiting = 0
            if ready:
                bar.update(flush())
        conts = sum(len(c) - 1 for _, _, c in requests)
        self._count(sum(len(x) for _, x, _ in requests) + conts, walk.tokens_run + conts)
        return results

    def reset_token_stats(self) -> None:
        self.token_stats = {"prompt_tokens": 0, "prefill_tokens": 0}

    def _count(self, prompt: int, run: int) -> None:
        self.token_stats["prompt_tokens"] += prompt
        self.token_stats["prefill_tokens"] += run

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    @staticmethod
    def _raise_unless(finite: torch.Tensor, reqs) -> None:
        """Stop the task, naming the batch's first request, unless `finite` (one flag for a whole batch: one sync)."""
        if not bool(finite):
            first = reqs[0][0]
            text = repr(first[0][-80:]) if first and first[0] else f"{len(reqs[0][1])}-token context"
            raise NonFiniteLogits(f"NaN or inf in the logits while scoring the request with context ...{text}")

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        if self.world_size > 1:
            return self._balanced("loglikelihood", requests)
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    # ---- data-parallel runs --------------------------------------------------------------------------------------
    def _balanced(self, method: str, requests) -> list:
        """One request call of a distributed run, re-balanced across ranks by token count (`gdn2_eval.distributed`)."""

        def run_local(instances):
            with single_process(self):
                return getattr(self._cache_of_rank() or self, method)(instances)

        def token_count(reqs) -> list[int]:
            texts = [r.args[0] + (r.args[1] if method == "loglikelihood" else "") for r in reqs]
            if not texts:
                return []
            counts = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            return [n + self.max_gen_toks for n in counts] if method == "generate_until" else counts

        return balanced_call(requests, run_local, token_count, self.rank, self.world_size, method)

    def _cache_of_rank(self):
        """lm-eval's request cache over this rank's part of balanced calls (the plan is deterministic, so a resumed
        run gives each rank the same requests again)."""
        if self.request_cache is None:
            return None
        if self._rank_cache is None:
            from lm_eval.api.model import CachingLM

            self._rank_cache = CachingLM(self, f"{self.request_cache}_balanced_rank{self.rank}.db")
        return self._rank_cache

    # ---- perplexity ----------------------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents under the recorded protocol:
        * ``rolling`` (default): lm-eval's disjoint windows of ``ppl_window`` tokens, state reset at each window;
        * ``carry``: the whole document in one pass, state carried across chunks (no window, nothing dropped)."""
        if self.world_size > 1:
            return self._balanced("loglikelihood_rolling", requests)
        if not self.recurrent:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        windows, owners = [], []
        for r, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            if self.ppl_protocol == "carry":
                pieces = [([self.prefix_token_id], tokens)]
            else:
                pieces = map(
                    make_disjoint_window,
                    get_rolling_token_windows(
                        token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.ppl_window, context_len=1
                    ),
                )
            for ctx, cont in pieces:
                if cont:
                    windows.append((None, ctx, cont))
                    owners.append(r)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for r, (lp, _) in zip(owners, scores):
            totals[r] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ----------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False):
        """Greedy requests of GDN-2 models go through `gdn2_eval.generation` (chunked prefill, then a decode loop that
        replays a CUDA graph on GPUs); sampling requests and other models through lm-eval's stock path."""
        if self.world_size > 1:
            return self._balanced("generate_until", requests)
        self.check_fits(
            [len(self.tok_encode(r.args[0])) + self.max_gen_toks for r in requests], "prompt plus generation budget"
        )
        if not self.recurrent:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        results: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="generate_until") as bar:
            for ix in groups.values():
                gen_kwargs = dict(requests[ix[0]].args[1])
                if gen_kwargs.get("do_sample") and float(gen_kwargs.get("temperature", 1.0) or 0) > 0:
                    out = super().generate_until([requests[i] for i in ix], disable_tqdm=True)
                    for i, text in zip(ix, out):
                        results[i] = text
                    bar.update(len(ix))
                    continue
                for i, text in self._greedy(requests, ix, gen_kwargs):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(1)
        return results

    def _greedy(self, requests, ix: list[int], gen_kwargs: dict):
        """Yield (request index, text) for greedy requests sharing `gen_kwargs`, longest prompts first."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        eos_text = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        max_new = int(kwargs.pop("max_gen_toks"))
        prompts = {i: self.tok_encode(requests[i].args[0]) for i in ix}
        order = sorted(ix, key=lambda i: -len(prompts[i]))
        eos_ids = {self.eot_token_id, self.tokenizer.eos_token_id} - {None}

        stops = [s for s in until if s != eos_text]  # EOS itself ends a row as a token (eos_ids)

        def finished(_row: int, tokens: list[int]) -> bool:
            text = self.tok_decode(tokens)
            return any(stop in text for stop in stops)

        text = lambda toks: postprocess_generated_text(generation=self.tok_decode(toks), stop=until,  # noqa: E731
                                                       think_end_token=None)
        decode_args = dict(eos_ids=sorted(eos_ids), pad_id=self._pad_id(), finished=finished if stops else None,
                           cuda_graph=None if self._graph_decode() else False)
        total = sum(len(p) for p in prompts.values())
        walk = self._walk([prompts[i] for i in order], total)
        if walk is not None:
            yield from self._greedy_tree(walk, order, max_new, decode_args, text)
            self._count(total, walk.tokens_run)
            return
        self._count(total, total)
        for b in range(0, len(order), self.batch_size):
            batch = order[b : b + self.batch_size]
            outs = greedy_generate(self.model, [prompts[i] for i in batch], max_new, chunk_tokens=self.prefill_tokens,
                                   **decode_args)
            for i, toks in zip(batch, outs):
                yield i, text(toks)

    def _walk(self, prompts: list[list[int]], total: int) -> PrefixWalk | None:
        """The prefix tree over `prompts` (of `total` tokens as requested), when sharing is on (or, with `auto`,
        when it saves enough)."""
        if self.share_prefix is False or not self._tree_applies() or len(prompts) < 2:
            return None
        budget = self.share_budget or default_budget(self.model.device)
        walk = PrefixWalk(self.model, prompts, self._pad_id(), self.prefill_tokens, self.batch_size, budget,
                          check=_finite_prefill)
        if self.share_prefix == "auto" and not tree_pays(total, walk.planned_tokens):
            return None
        return walk

    def _graph_decode(self) -> bool:
        """GDN-2 models, and adapted models whose state has a fixed size, replay a captured step on CUDA."""
        return not self.adapted or self.model.fixed_state

    def _tree_applies(self) -> bool:
        """GDN-2 models, and adapted models whose state has a fixed size, run the prefix tree."""
        return not self.adapted or self.model.fixed_state

    def _greedy_tree(self, walk: PrefixWalk, order: list[int], max_new: int, decode_args: dict, text):
        """Decode batches of prompts as the tree walk finishes their prefill (each from its own cache row)."""
        ready, waiting, rows = [], 0, self.batch_size

        def flush():
            done, cache, last = join(ready)
            ready.clear()
            members = [order[j] for j in done]
            for b in range(0, len(members), rows):
                idx = torch.arange(b, min(b + rows, len(members)), device=last.device)
                part = cache.rows(idx) if len(members) > rows else cache
                for i, toks in zip(members[b : b + rows], generate_from(self.model, part, last[idx], max_new,
                                                                        **decode_args)):
                    yield i, text(toks)

        for item in walk:
            ready.append(item)
            waiting += len(item[0])
            if waiting >= rows:
                yield from flush()
                waiting = 0
        if ready:
            yield from flush()


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token under `logits` [..., vocab], in float32, and whether it is the greedy
    choice. One log-partition per position instead of a whole log-softmax tensor: a NaN or +inf logit anywhere in a
    row, or a -inf at its target, makes that position's score non-finite, which the callers check."""
    x = logits.float()
    lp = x.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(x, -1)
    return lp, x.argmax(-1) == targets


def _finite_prefill(last: torch.Tensor) -> None:
    if not torch.isfinite(last).all():
        raise NonFiniteLogits("NaN or inf in the logits while prefilling prompts that share a prefix")


def _batches(units: list[list[int]], requests, limit: int) -> list[list[list[int]]]:
    """Pack units (request indices that share a context) into batches of at most `limit` rows, longest first."""
    order = sorted(units, key=lambda ix: -(len(requests[ix[0]][1]) + len(requests[ix[0]][2])))
    pieces = [ix[s : s + limit] for ix in order for s in range(0, len(ix), limit)]
    batches, current, rows = [], [], 0
    for unit in pieces:
        if current and rows + len(unit) > limit:
            batches.append(current)
            current, rows = [], 0
        current.append(unit)
        rows += len(unit)
    if current:
        batches.append(current)
    return batches

