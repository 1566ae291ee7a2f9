"""A byte-level BPE tokenizer trained here, offline, for tests, benchmarks and demo models (no hub download)."""

from __future__ import annotations

from collections.abc import Iterable


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...] = ("<s>", "</s>", "<pad>")):
    """A `PreTrainedTokenizerFast` (byte-level BPE, so any text encodes) trained on `texts`. The special tokens come
    first in the vocabulary; `<s>`, `</s>`, `<pad>` and `<unk>` become bos/eos/pad/unk when present."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    unk = "<unk>" if "<unk>" in special_tokens else None
    bpe = Tokenizer(models.BPE(unk_token=unk))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    roles = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return PreTrainedTokenizerFast(tokenizer_object=bpe,
                                   **{role: tok for role, tok in roles.items() if tok in special_tokens})
