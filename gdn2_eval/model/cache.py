"""Generation cache: per GDN-2 layer the recurrent state and the short-conv states, per SWA layer the last
`local_window - 1` keys and values. Its size is bounded whatever the length of the context."""

from __future__ import annotations

from typing import Any

import torch


class GDN2Cache:
    """State carried between forward calls, one row per batch row.

    * ``seq_lens[b]``: real (non-pad) tokens row b has consumed; RoPE positions continue from there.
    * ``seen_columns``: columns of the padded input consumed (what `generate` slices new tokens by).
    * ``layers[i]``: for GDN-2 ``{"recurrent": [B, Hv, K, V] fp32, "conv": (q, k, v) each [B, 3, C]}``;
      for SWA ``{"k": [B, P, Hkv, d], "v": ...}``, right-aligned: the last ``min(seq_lens[b], P)`` slots are real.
    """

    is_compileable = False

    def __init__(self, num_layers: int, batch_size: int, device: torch.device | str) -> None:
        self.layers: list[dict[str, Any]] = [{} for _ in range(num_layers)]
        self.seq_lens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.seen_columns = 0

    @property
    def batch_size(self) -> int:
        return self.seq_lens.numel()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_columns

    def __len__(self) -> int:
        return len(self.layers)

    def _map(self, fn) -> None:
        def apply(v):
            if isinstance(v, torch.Tensor):
                return fn(v)
            if isinstance(v, tuple):
                return tuple(apply(x) for x in v)
            return v

        for layer in self.layers:
            for key in list(layer):
                layer[key] = apply(layer[key])
        self.seq_lens = fn(self.seq_lens)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the given rows (e.g. drop finished sequences from a batch)."""
        self._map(lambda t: t.index_select(0, indices.to(t.device)))

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def copy(self) -> GDN2Cache:
        """An independent copy (to score several continuations of one shared prefix)."""
        new = GDN2Cache(len(self.layers), 0, self.seq_lens.device)
        new.layers = [dict(layer) for layer in self.layers]
        new.seq_lens = self.seq_lens
        new.seen_columns = self.seen_columns
        new._map(lambda t: t.clone())
        return new

    def rows(self, indices: torch.Tensor) -> GDN2Cache:
        """A new cache holding copies of the given rows (this one unchanged): a snapshot of a shared prefix."""
        new = self.view()
        new.batch_select_indices(indices)
        return new

    @staticmethod
    def cat(caches: list[GDN2Cache]) -> GDN2Cache:
        """The rows of several caches (same model) as one batch. Window caches of different widths are padded on
        the left first, where each row's attention masks them anyway (`widen_windows`)."""
        first = caches[0]
        width = max((layer["k"].shape[1] for c in caches for layer in c.layers
                     if isinstance(layer.get("k"), torch.Tensor)), default=0)
        for c in caches:  # (in place: the parts are consumed)
            c.widen_windows(width)
        new = GDN2Cache(len(first.layers), 0, first.seq_lens.device)
        for i, layer in enumerate(new.layers):
            for key, value in first.layers[i].items():
                parts = [_flat(c.layers[i][key]) for c in caches]
                joined = tuple(torch.cat(ts) for ts in zip(*parts))
                layer[key] = joined if isinstance(value, tuple) else joined[0]
        new.seq_lens = torch.cat([c.seq_lens for c in caches])
        new.seen_columns = max(c.seen_columns for c in caches)
        return new

    def view(self) -> GDN2Cache:
        """A cache over the same tensors (a forward through it replaces its entries, not these tensors)."""
        new = GDN2Cache(len(self.layers), 0, self.seq_lens.device)
        new.layers = [dict(layer) for layer in self.layers]
        new.seq_lens, new.seen_columns = self.seq_lens, self.seen_columns
        return new

    def copy_from(self, other: GDN2Cache) -> None:
        """Copy `other`'s state into this cache's tensors in place (same shapes): their addresses do not change.
        Tensors that a forward updated in place (the inference model's states) are the same objects: no copy."""
        for mine, theirs in zip(self.layers, other.layers):
            for key, value in mine.items():
                for dst, src in zip(_flat(value), _flat(theirs[key])):
                    if dst is not src:
                        dst.copy_(src)
        self.seq_lens.copy_(other.seq_lens)

    def widen_windows(self, width: int) -> None:
        """Pad each sliding-window cache on the left to `width` slots, so its shape stays fixed while decoding. The
        padding lies before each row's first real key, where attention masks it anyway (`seq_lens`)."""
        for layer in self.layers:
            for key in ("k", "v"):
                t = layer.get(key)
                if t is not None and t.shape[1] < width:
                    wide = t.new_zeros(t.shape[0], width, *t.shape[2:])
                    wide[:, width - t.shape[1] :] = t
                    layer[key] = wide

    def nbytes(self) -> int:
        total = 0
        for layer in self.layers:
            for v in layer.values():
                for t in v if isinstance(v, tuple) else (v,):
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
        return total


def _flat(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)
