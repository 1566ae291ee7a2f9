"""Counting tokens with the evaluated model's tokenizer (a Hugging Face tokenizer, a `tokenizers.Tokenizer`, or a
name/path loaded with `transformers.AutoTokenizer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import RulerError


def load_tokenizer(name_or_path: str | Path) -> Any:
    """`gdn2_eval.loading.load_tokenizer`, failing with a `RulerError`."""
    from ..errors import UserError
    from ..loading import load_tokenizer as load

    try:
        return load(name_or_path)
    except UserError as e:
        raise RulerError(str(e)) from None


class TokenCounter:
    """Token counts under one tokenizer. `count` counts a whole prompt as the model sees it (with the special tokens
    the tokenizer adds, e.g. BOS); `count_many` counts pieces without special tokens, in one batch."""

    def __init__(self, tokenizer: Any):
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None and hasattr(tokenizer, "encode_batch") and hasattr(tokenizer, "encode"):
            backend = tokenizer  # a bare `tokenizers.Tokenizer`
        self._fast = backend
        if backend is None and not callable(tokenizer):
            raise RulerError(f"{type(tokenizer).__name__} is not a tokenizer (neither a Hugging Face tokenizer nor a "
                             "tokenizers.Tokenizer)")
        # Whole prompts are counted as the tokenizer's own __call__ counts them. A fast tokenizer's Rust backend gives
        # the same ids without the Python wrapper's overhead; it is used only where it agrees with the wrapper.
        self.backend_exact = backend is not None and (backend is tokenizer or self._backend_agrees())

    def _backend_agrees(self) -> bool:
        probes = [
            "Some special magic numbers are hidden within the following text.\nOne of the special magic uuids for "
            "a1b2c3d4-0e5f-4a6b-8c7d-9e0f1a2b3c4d is: 1234567.\n The grass is green.  Here we go.",
            " What is the special magic number for quiet-river mentioned in the provided text? The special magic",
        ]
        try:
            return all(
                self._fast.encode(p, add_special_tokens=True).ids
                == list(self.tokenizer(p, add_special_tokens=True, verbose=False)["input_ids"])
                for p in probes
            )
        except Exception:
            return False

    def ids(self, text: str) -> list[int]:
        if self.backend_exact:
            return self._fast.encode(text, add_special_tokens=True).ids
        return self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]

    def count(self, text: str) -> int:
        return len(self.ids(text))

    def count_many(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self._fast is not None:
            encode = getattr(self._fast, "encode_batch_fast", None) or self._fast.encode_batch  # fast: no offsets
            return [len(e.ids) for e in encode(texts, add_special_tokens=False)]
        return [len(x) for x in self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def unk_id(self) -> int | None:
        tok = self.tokenizer
        unk = getattr(tok, "unk_token_id", None)
        if unk is None and hasattr(tok, "token_to_id") and hasattr(tok, "get_vocab"):
            for name in ("<unk>", "[UNK]", "<UNK>"):
                if (i := tok.token_to_id(name)) is not None:
                    return i
        return unk
