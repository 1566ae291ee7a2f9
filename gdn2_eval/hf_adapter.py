"""Any Hugging Face causal LM behind the interface the `gdn2` backend's own path uses (`new_cache`, chunked forwards
with the state carried, row selection), so that fla's and transformers' baselines (Gated DeltaNet, KDA, Mamba-2,
Qwen3-Next, KimiLinear, Llama, ...) are scored and generated the way GDN-2 models are.

How rows of one batch stay exactly what they would be alone: prompts are left-padded, and every forward gets the
0/1 mask of all columns so far and each row's own positions (`position_ids` counted over its real tokens only), as
Hugging Face's `generate` does. Recurrent layers zero their padded inputs (a zero state stays zero through them) and
attention layers mask the padded keys; the tests check both against one row alone, per model family.

What differs from GDN-2's own model (each recorded with a run, `path_record`):
* the cache is the model's own (``DynamicCache`` and its linear-attention layers, fla's ``Cache``); when it has a
  fixed size the decode step is captured as a CUDA graph, its new state copied back into fixed buffers each step
  (as GDN-2's reference model does); models with attention keys, which grow, decode eagerly;
* the prefix tree applies when the state has a fixed size (no attention keys, e.g. Mamba-2, fla's Gated DeltaNet):
  an edge continuing a snapshot is left-padded. fla's layers skip masked pads (they unpad into variable-length
  sequences), so such a chunk is one masked forward; where pads would pass through a recurrent layer's decay
  (transformers' Mamba-2), it runs in column segments over the rows whose tokens have begun (`_staggered`). A probe
  at load tells the two apart (`_pads_leave_state`). Models with attention keys share whole contexts across
  continuations only;
* a model with no recurrent layer keeps its positional limit (`position_limit`): a longer prompt is an error.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

# Where the models take their cache in `forward` and return it (`cache` in newer transformers, `past_key_values`
# before, `cache_params` in older Mamba ports).
CACHE_ARGS = ("cache", "past_key_values", "cache_params")


class AdaptedCache:
    """A batch's state: the model's own cache object (None before the first forward), the 0/1 mask of every column
    consumed and each row's count of real tokens. Rows are dimension 0 of every tensor in the model's cache."""

    def __init__(self, batch_size: int, device: torch.device | str) -> None:
        self.inner: Any = None
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        self.seq_lens = torch.zeros(batch_size, dtype=torch.long, device=device)
        # whether any column so far was a pad: until one is, attention layers need no mask (none is built)
        self.padded = False

    @property
    def batch_size(self) -> int:
        return self.seq_lens.numel()

    @property
    def seen_columns(self) -> int:
        return self.mask.shape[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_columns

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) the given rows."""
        idx = indices.to(self.mask.device)
        _map_tensors(self.inner, lambda t: t.index_select(0, idx.to(t.device)))
        self.mask, self.seq_lens = self.mask[idx], self.seq_lens[idx]

    def copy(self) -> AdaptedCache:
        new = AdaptedCache(0, self.mask.device)
        new.inner = copy.deepcopy(self.inner)
        new.mask, new.seq_lens, new.padded = self.mask.clone(), self.seq_lens.clone(), self.padded
        return new

    def view(self) -> AdaptedCache:
        """A cache over the same tensors (a forward through it replaces its entries, not these tensors): the cache
        objects are copied, the tensors in them are not."""
        new = AdaptedCache(0, self.mask.device)
        new.inner = copy.deepcopy(self.inner, memo={id(t): t for _, t in _named_tensors(self.inner)})
        new.mask, new.seq_lens, new.padded = self.mask, self.seq_lens, self.padded
        return new

    def copy_from(self, other: AdaptedCache) -> None:
        """Copy `other`'s state into this cache's tensors in place (a fixed-size state: same shapes), so that their
        addresses do not change (what a captured decode step reads and writes)."""
        def put(ts):
            if ts[0] is not ts[1]:
                ts[0].copy_(ts[1])
            return ts[0]

        _zip_tensors(self.inner, [self.inner, other.inner], put)

    def widen_windows(self, width: int) -> None:
        """Nothing to widen: an adapted model's cache has no sliding window of its own here."""

    def rows(self, indices: torch.Tensor) -> AdaptedCache:
        """A new cache holding copies of the given rows only (a snapshot does not copy the whole batch first)."""
        new = self.view()
        new.batch_select_indices(indices)  # new tensors in the view's own structure: this cache's are unchanged
        return new

    @staticmethod
    def cat(caches: list[AdaptedCache]) -> AdaptedCache:
        """The rows of several caches as one batch. Caches that consumed different numbers of columns (prefix-tree
        snapshots at different depths) join only when their state has a fixed size: their masks are then padded on
        the left, where no layer reads them."""
        widths = {c.seen_columns for c in caches}
        new = caches[0].copy()
        if len(widths) > 1 and _attention_keys(new.inner):
            raise ValueError(f"cannot join caches holding attention keys of {sorted(widths)} columns")
        _zip_tensors(new.inner, [c.inner for c in caches], lambda ts: torch.cat(ts))
        width = max(widths)
        new.mask = torch.cat([torch.nn.functional.pad(c.mask, (width - c.seen_columns, 0)) for c in caches])
        new.seq_lens = torch.cat([c.seq_lens for c in caches])
        new.padded = len(widths) > 1 or any(c.padded for c in caches)
        return new

    def put_rows(self, rows: torch.Tensor, part: AdaptedCache) -> None:
        """Write `part`'s state (one row per index of `rows`) into those rows of this cache."""
        self.inner = _zip_tensors(self.inner, [self.inner, part.inner], lambda ts: ts[0].index_copy(0, rows, ts[1]))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in _named_tensors(self.inner))


class AdaptedLM(nn.Module):
    """`model` (a Hugging Face causal LM) with `new_cache(batch)` and a forward that takes the backend's chunk masks;
    every other attribute is the model's own."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        params = inspect.signature(model.forward).parameters
        self.cache_arg = next((a for a in CACHE_ARGS if a in params), "past_key_values")
        # only what the signature names: fla's models hand unknown keywords on to their kernels
        self.takes_positions = "position_ids" in params
        self.takes_cache_position = "cache_position" in params
        self.takes_logits_to_keep = "logits_to_keep" in params
        self.fixed_state_bytes: int | None = None  # bytes per row when the cache does not grow with length
        self.has_attention = True
        self.pads_skip_state = False  # whether left pads leave a carried state untouched (see `_pads_leave_state`)
        # attention layers read the mask of every column so far; recurrent-only models take this chunk's (Mamba)
        self.cumulative_mask = True
        self._probe()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    @property
    def device(self) -> torch.device:
        return next(self.inner.parameters()).device

    @property
    def recurrent(self) -> bool:
        """Whether the model carries a recurrent state (so no positional limit applies to it)."""
        return self._recurrent

    @property
    def fixed_state(self) -> bool:
        """Whether the cache has a fixed size (no attention keys): the prefix tree and a captured step apply."""
        return self.fixed_state_bytes is not None

    @property
    def position_limit(self) -> int | None:
        """The longest input a model with no recurrent layer takes (its position table); None for recurrent ones."""
        if self._recurrent:
            return None
        limit = getattr(self.inner.config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def new_cache(self, batch_size: int) -> AdaptedCache:
        return AdaptedCache(batch_size, self.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: AdaptedCache | None = None, use_cache: bool = True, logits_to_keep: int = 0,
                packed: bool | None = None, **kwargs: Any):
        """One chunk of columns: `attention_mask` covers this chunk only (None: all real), the cache carries the rest.
        `packed` is GDN-2's layout switch and means nothing here."""
        cache = past_key_values if past_key_values is not None else self.new_cache(input_ids.shape[0])
        if attention_mask is None:  # every column real (a decode step): nothing here may wait for the GPU
            return self._call(input_ids, torch.ones_like(input_ids), cache, logits_to_keep, all_real=True)
        step = attention_mask.to(input_ids.device).long()
        if self.fixed_state and not self.pads_skip_state and cache.inner is not None and _pads_after_state(step, cache):
            return self._staggered(input_ids, step, cache, logits_to_keep)
        return self._call(input_ids, step, cache, logits_to_keep)

    def _call(self, input_ids: torch.Tensor, step: torch.Tensor, cache: AdaptedCache, logits_to_keep: int,
              all_real: bool = False):
        """The model's forward on one chunk, `step` its 0/1 mask; the cache's mask and counts move on. A chunk of
        real tokens only reaches a recurrent-only model without a mask (fla's layers would unpad it, a sync that
        a captured step cannot hold)."""
        start, before = cache.seen_columns, cache.seq_lens
        cache.mask = torch.cat([cache.mask, step], 1)
        cache.seq_lens = cache.seq_lens + step.sum(1)
        if not all_real:
            cache.padded = cache.padded or bool((step == 0).any())
        if self.cumulative_mask:  # attention layers: every column's mask, once there is a pad to mask
            mask = cache.mask if cache.padded else None
        else:
            mask = None if all_real else step
        args: dict[str, Any] = {self.cache_arg: cache.inner, "use_cache": True, "attention_mask": mask}
        if self.takes_cache_position:
            args["cache_position"] = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        if self.takes_positions:  # each row's own positions, counted over its real tokens
            args["position_ids"] = (before[:, None] + step.cumsum(1) - 1).clamp(min=0)
        if self.takes_logits_to_keep:
            args["logits_to_keep"] = logits_to_keep
        out = self.inner(input_ids, **args)
        cache.inner = next(getattr(out, a) for a in CACHE_ARGS if getattr(out, a, None) is not None)
        if not self.takes_logits_to_keep and logits_to_keep:
            out.logits = out.logits[:, -logits_to_keep:]
        return out

    def _staggered(self, input_ids: torch.Tensor, step: torch.Tensor, cache: AdaptedCache, logits_to_keep: int):
        """A left-padded chunk over rows that already hold a state (prefix-tree edges continuing snapshots): a
        recurrent layer would decay that state through the pads, so the columns run in segments, each over the rows
        whose real tokens have begun, and no pad reaches a state. Only for caches of fixed size (no attention keys)."""
        n, width = input_ids.shape
        lead = (step.cumsum(1) == 0).sum(1)  # pad columns before each row's first token
        keep_from = width - logits_to_keep if logits_to_keep else 0  # the columns whose logits are returned
        logits, out = None, None
        bounds = sorted(set(lead.tolist()) | {width})
        for a, b in zip(bounds, bounds[1:]):
            rows = (lead <= a).nonzero()[:, 0]
            part = cache.rows(rows)
            need = b - max(a, keep_from)  # columns of this segment whose logits are returned
            keep = max(1, need) if logits_to_keep else 0
            out = self._call(input_ids[rows, a:b], torch.ones_like(input_ids[rows, a:b]), part, keep, all_real=True)
            cache.put_rows(rows, part)
            if need > 0:
                if logits is None:
                    logits = out.logits.new_zeros(n, width - keep_from, out.logits.shape[-1])
                logits[rows, b - need - keep_from : b - keep_from] = out.logits[:, -need:]
        cache.mask = torch.cat([cache.mask, step], 1)
        cache.seq_lens = cache.seq_lens + step.sum(1)
        cache.padded = True
        if out is None:  # no row has a token in this chunk: nothing ran
            vocab = self.inner.get_output_embeddings().weight.shape[0]
            return CausalLMOutputWithPast(logits=input_ids.new_zeros(n, width - keep_from, vocab, dtype=self.dtype))
        out.logits = logits
        return out

    @torch.no_grad()
    def _probe(self) -> None:
        """From three short forwards: whether the cache carries the state across multi-token chunks (8 tokens at
        once against 4 + 4; some models' PyTorch paths drop it), and whether it grows with length (attention keys)
        or not (recurrent state only)."""
        vocab = self.inner.get_output_embeddings().weight.shape[0]
        ids = ((torch.arange(8, device=self.device) * 37 + 5) % vocab)[None]
        whole = self(ids, past_key_values=self.new_cache(1), logits_to_keep=1).logits[0, -1].float()
        cache = self.new_cache(1)
        self(ids[:, :4], past_key_values=cache, logits_to_keep=1)
        first = cache.nbytes()
        self.cumulative_mask = _attention_keys(cache.inner)
        # known from the first chunk's cache, and kept by the stock path when the second chunk fails: a recurrent
        # model has no positional limit even when it runs whole sequences
        self._recurrent = _has_recurrent_state(cache.inner)
        name = type(self.inner).__name__
        try:
            last = self(ids[:, 4:], past_key_values=cache, logits_to_keep=1).logits[0, -1].float()
        except ADAPT_ERRORS as e:
            raise not_chunked(name, e, recurrent=self._recurrent) from None
        err = float((last - whole).norm() / whole.norm().clamp(min=1e-12))
        # float32 agrees to rounding; in bf16 two summation orders of a deep model differ by a few percent, so
        # there the check only catches a state that was plainly dropped
        self.chunk_check_error = err
        if not err <= (1e-4 if next(self.inner.parameters()).dtype == torch.float32 else 0.25):
            raise NotAdaptable(f"{name}'s cache does not carry its state across multi-token chunks (8 tokens at "
                               f"once against 4 + 4: relative error {err:.1e})", recurrent=self._recurrent)
        grows = cache.nbytes() - first
        self.has_attention = grows > 0
        self.fixed_state_bytes = first if grows == 0 else None
        if self.fixed_state:
            self.pads_skip_state = self._pads_leave_state(ids)
        self.state_bytes_per_layer = _state_bytes_per_layer(cache.inner) if self._recurrent else None

    @torch.no_grad()
    def _pads_leave_state(self, ids: torch.Tensor) -> bool:
        """Whether the model's own masking keeps left pads away from a carried state (fla's layers unpad a masked
        chunk into variable-length sequences, each starting from its row's state): then a left-padded chunk over
        rows holding a state is one forward, not one per segment (`_staggered`). Compared on the first layer's
        state after 4 tokens, continued by 4 more with and without 32 pads before them: that layer sees the same
        arithmetic either way when pads are skipped (so bf16 agrees to rounding), and a state decayed through 32
        pads (transformers' Mamba-2 zeroes the pads' inputs, not their decay) is plainly off."""
        states = {}
        for pads in (0, 32):
            cache = self.new_cache(1)
            self(ids[:, :4], past_key_values=cache, logits_to_keep=1)
            chunk = torch.cat([ids.new_zeros(1, pads), ids[:, 4:]], 1)
            step = torch.cat([ids.new_zeros(1, pads), torch.ones_like(ids[:, 4:])], 1)
            try:
                self._call(chunk, step, cache, 1)
            except ADAPT_ERRORS:
                return False
            named = [(name, t) for name, t in _named_tensors(cache.inner) if _is_state(name)]
            states[pads] = [t.float() for name, t in named if _layer_of(name) == _layer_of(named[0][0])]
        tol = 1e-5 if next(self.inner.parameters()).dtype == torch.float32 else 1e-2
        return bool(states[0]) and all(float((a - b).norm() / b.norm().clamp(min=1e-12)) <= tol
                                       for a, b in zip(states[32], states[0]))

    def path_record(self) -> dict[str, Any]:
        """Which path this model takes through the backend, and why (recorded with each run)."""
        kind = ("recurrent" if not self.has_attention else "hybrid") if self._recurrent else "attention"
        return {
            "path": "recurrent-aware" if self._recurrent else "kv-cache",
            "layers": kind,
            "why": {
                "recurrent": "fixed-size state per layer: chunked prefill with the state carried, no length limit",
                "hybrid": "recurrent layers with attention layers: chunked prefill with state and keys carried, "
                          "no length limit",
                "attention": f"attention only: chunked prefill with the KV cache, limited to {self.position_limit} "
                             "positions",
            }[kind],
            "decode": ("captured step on CUDA (the fixed-size state copied back into fixed buffers each step)"
                       if self.fixed_state else
                       "eager (the attention keys grow each step: no fixed buffers for a CUDA graph)"),
            "cuda_graph": self.fixed_state,
            "prefix_tree": self.fixed_state,
            # how a tree edge continuing a snapshot runs: one masked forward, or in column segments (pads decay)
            "left_pads": ("masked (the model skips them)" if self.pads_skip_state else "column segments")
                         if self.fixed_state else None,
            "state_bytes_per_row": self.fixed_state_bytes,
            "chunk_check_rel_err": self.chunk_check_error,  # 8 tokens at once against 4 + 4, at load
            "state_bytes_per_layer": self.state_bytes_per_layer,
        }


class NotAdaptable(Exception):
    """Why a model cannot take the backend's own path (lm-eval's stock path runs it; the run records the reason).
    `recurrent`: whether its cache was seen to hold a recurrent state (None: not known)."""

    def __init__(self, message: str, recurrent: bool | None = None) -> None:
        super().__init__(message)
        self.recurrent = recurrent


# what a model's forward raises when its cache cannot continue a chunk (fla's, transformers' own messages)
ADAPT_ERRORS = (TypeError, ValueError, AttributeError, NotImplementedError, StopIteration, RuntimeError)


def not_chunked(name: str, error: Exception, recurrent: bool | None = None) -> NotAdaptable:
    """The reason recorded when a model's forward fails on the backend's chunks: the error's first line."""
    first = (str(error).splitlines() or [type(error).__name__])[0]
    return NotAdaptable(f"{name} does not run chunked with its cache ({first[:160]})", recurrent=recurrent)


def adapt(model: nn.Module) -> AdaptedLM:
    """`model` behind the backend's interface; `NotAdaptable` when it is not a causal LM whose cache carries its
    state across chunks."""
    try:
        return AdaptedLM(model)
    except NotAdaptable:
        raise
    except ADAPT_ERRORS as e:
        raise not_chunked(type(model).__name__, e) from None


# ---- walking a model's cache -----------------------------------------------------------------------------------
def _children(obj: Any) -> list[tuple[Any, Any]]:
    """(key, value) pairs of a container or of a cache object's attributes."""
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    if _is_cache_object(obj):
        return list(vars(obj).items())
    return []


def _is_cache_object(obj: Any) -> bool:
    """transformers' and fla's cache and cache-layer objects (whose attributes hold the state), nothing else."""
    if isinstance(obj, (nn.Module, torch.Tensor)) or not hasattr(obj, "__dict__"):
        return False
    cls = type(obj)
    return cls.__module__.startswith(("transformers.cache_utils", "fla.")) or "Cache" in cls.__name__ \
        or "Layer" in cls.__name__


def _set(obj: Any, key: Any, value: Any) -> Any:
    """`obj` with `key` set to `value` (tuples are rebuilt; returns the object to store in the parent)."""
    if isinstance(obj, tuple):
        return tuple(value if i == key else v for i, v in enumerate(obj))
    if isinstance(obj, (list, dict)):
        obj[key] = value
    else:
        setattr(obj, key, value)
    return obj


def _map_tensors(obj: Any, fn) -> Any:
    """Replace every tensor (of at least one dimension) in a cache object by `fn(tensor)`, in place where it can."""
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.dim() > 0 else obj
    for key, value in _children(obj):
        new = _map_tensors(value, fn)
        if new is not value:
            obj = _set(obj, key, new)
    return obj


def _zip_tensors(target: Any, parts: list[Any], fn) -> Any:
    """Set every tensor of `target` to `fn` of the tensors at the same place in `parts` (same structure)."""
    if isinstance(target, torch.Tensor):
        return fn(parts) if target.dim() > 0 else target
    children = [dict(_children(p)) for p in parts]
    for key, value in _children(target):
        new = _zip_tensors(value, [c[key] for c in children], fn)
        if new is not value:
            target = _set(target, key, new)
    return target


def _pads_after_state(step: torch.Tensor, cache: AdaptedCache) -> bool:
    """Whether a left-padded chunk puts pads in rows that already hold a state (right padding after a row's last
    token, as scoring continuations does, reaches nothing that is used afterwards)."""
    lead = (step.cumsum(1) == 0).sum(1)
    left_padded = bool((step.sum(1) == step.shape[1] - lead).all())
    return left_padded and bool(((lead > 0) & (cache.seq_lens > 0)).any())


def _attention_keys(inner: Any) -> bool:
    return any(name.endswith(("keys", "values")) or "attn" in name.lower() for name, _ in _named_tensors(inner))


def _named_tensors(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)] if obj.dim() > 0 else []
    out = []
    for key, value in _children(obj):
        out += _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return out


_RECURRENT_NAMES = ("recurrent", "conv", "ssm", "state")


def _is_state(name: str) -> bool:
    """A recurrent or conv state's tensor, by its place in the cache (fla's `attn_state` holds attention keys)."""
    low = name.lower()
    return any(w in low for w in _RECURRENT_NAMES) and "attn" not in low


def _has_recurrent_state(inner: Any) -> bool:
    return any(_is_state(name) for name, _ in _named_tensors(inner))


def _layer_of(name: str) -> str:
    """The layer a cache tensor belongs to, from its place in the cache (`layers.3...` or `3...`)."""
    return name.split(".")[1] if name.startswith("layers.") else name.split(".")[0]


def _state_bytes_per_layer(inner: Any) -> dict[str, int]:
    """Bytes of one row's recurrent and conv state per layer (attention keys are not a fixed-size state)."""
    out: dict[str, int] = {}
    for name, t in _named_tensors(inner):
        if _is_state(name):
            layer = _layer_of(name)
            out[layer] = out.get(layer, 0) + t[0].numel() * t.element_size()
    return out
