"""How the tokens of one forward call are laid out: a dense [B, T] block, or variable-length sequences packed
into [1, total] (`cu_seqlens`), which is how padded batches run so that pad tokens never touch any state."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenLayout:
    positions: torch.Tensor  # [B, T] (dense) or [1, total] (packed): RoPE position of each token
    backend: str  # resolved GDN-2 kernel backend
    batch: int  # rows of the padded batch (and of the cache)
    cu_seqlens: torch.Tensor | None = None  # [N + 1] int64 in packed mode
    rows: torch.Tensor | None = None  # [N] batch row (cache row) of each packed sequence
    seq_index: torch.Tensor | None = None  # [total] packed sequence of each token
    pos_in_call: torch.Tensor | None = None  # [total] rank of each token within its sequence in this call
    valid: torch.Tensor | None = None  # [B, T] bool, which padded slots are real tokens

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def lengths(self) -> torch.Tensor:
        assert self.cu_seqlens is not None
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    @staticmethod
    def build(
        batch: int,
        length: int,
        mask: torch.Tensor | None,
        past_lengths: torch.Tensor | None,
        backend: str,
        device: torch.device,
        packed: bool = False,
    ) -> TokenLayout:
        """`mask` is the attention mask of this call's tokens ([B, T], 1 = real token) or None for all real;
        `past_lengths` [B] counts real tokens already consumed by each row (from the cache). `packed` packs the rows
        even when none is padded (so that every chunk of a prefill runs the same kernel variants)."""
        base = past_lengths if past_lengths is not None else torch.zeros(batch, dtype=torch.long, device=device)
        if not packed and (mask is None or bool(mask.all())):
            positions = base[:, None] + torch.arange(length, device=device)[None, :]
            return TokenLayout(positions=positions, backend=backend, batch=batch)
        valid = torch.ones(batch, length, dtype=torch.bool, device=device) if mask is None else mask.bool()
        lengths = valid.sum(1)
        rows = torch.nonzero(lengths > 0).squeeze(1)
        cu = torch.zeros(rows.numel() + 1, dtype=torch.long, device=device)
        cu[1:] = lengths[rows].cumsum(0)
        rank = valid.long().cumsum(1) - 1  # rank of each real token within its row
        row_of_token, col_of_token = torch.nonzero(valid, as_tuple=True)  # row-major = packed order
        seq_of_row = torch.full((batch,), -1, dtype=torch.long, device=device)
        seq_of_row[rows] = torch.arange(rows.numel(), device=device)
        pos_in_call = rank[row_of_token, col_of_token]
        positions = (base[row_of_token] + pos_in_call)[None, :]
        return TokenLayout(
            positions=positions,
            backend=backend,
            batch=batch,
            cu_seqlens=cu,
            rows=rows,
            seq_index=seq_of_row[row_of_token],
            pos_in_call=pos_in_call,
            valid=valid,
        )

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [1, total, ...] (real tokens only)."""
        return x if self.valid is None else x[self.valid][None]

    def unpack(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """[1, total, ...] -> [B, T, ...] with `fill` at pad slots."""
        if self.valid is None:
            return x
        out = x.new_full((*self.valid.shape, *x.shape[2:]), fill)
        out[self.valid] = x[0]
        return out
