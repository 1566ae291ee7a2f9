"""Synthetic stand-ins for the datasets of the `table2` and `recall` suites, in each lm-eval task's own schema.

They let the suite's real lm-eval task definitions run where the datasets cannot be fetched (tests, benchmarks on a
machine without internet): `write_standins(DIR)` writes a data directory that `gdn2-eval run --data-dir DIR` reads
like the one `gdn2-eval data fetch` makes. The text is random words, so the scores mean nothing; the request mix
(number of choices, context and continuation lengths, rolling documents) is the real one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from .data import save_local_copy

Doc = dict[str, Any]


def _text(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))


def _choices(rng, vocab, n, lo, hi) -> list[str]:
    return [_text(rng, vocab, lo, hi) for _ in range(n)]


# One maker per (dataset path, config name): a document in that dataset's schema.
def _wikitext(rng, vocab) -> Doc:
    return {"page": "\n".join(f" = {_text(rng, vocab, 2, 4)} = \n\n {_text(rng, vocab, 80, 300)} \n" for _ in range(3))}


def _lambada(rng, vocab) -> Doc:
    return {"text": _text(rng, vocab, 40, 90)}


def _piqa(rng, vocab) -> Doc:
    return {"goal": _text(rng, vocab, 5, 20), "sol1": _text(rng, vocab, 5, 25), "sol2": _text(rng, vocab, 5, 25),
            "label": rng.randint(0, 1)}


def _hellaswag(rng, vocab) -> Doc:
    return {"ind": 0, "activity_label": _text(rng, vocab, 1, 3), "ctx_a": _text(rng, vocab, 15, 40),
            "ctx_b": _text(rng, vocab, 2, 6), "ctx": "", "endings": _choices(rng, vocab, 4, 10, 30),
            "source_id": "x", "split": "val", "split_type": "indomain", "label": str(rng.randint(0, 3))}


def _winogrande(rng, vocab) -> Doc:
    return {"sentence": f"{_text(rng, vocab, 5, 12)} _ {_text(rng, vocab, 4, 10)}",
            "option1": _text(rng, vocab, 1, 2), "option2": _text(rng, vocab, 1, 2), "answer": str(rng.randint(1, 2))}


def _arc(rng, vocab) -> Doc:
    labels = ["A", "B", "C", "D"]
    return {"id": "x", "question": _text(rng, vocab, 8, 30),
            "choices": {"text": _choices(rng, vocab, 4, 1, 6), "label": labels}, "answerKey": rng.choice(labels)}


def _openbookqa(rng, vocab) -> Doc:
    labels = ["A", "B", "C", "D"]
    return {"id": "x", "question_stem": _text(rng, vocab, 5, 20),
            "choices": {"text": _choices(rng, vocab, 4, 1, 8), "label": labels}, "answerKey": rng.choice(labels)}


def _siqa(rng, vocab) -> Doc:
    return {"context": _text(rng, vocab, 10, 30), "question": _text(rng, vocab, 4, 10),
            "answerA": _text(rng, vocab, 1, 6), "answerB": _text(rng, vocab, 1, 6),
            "answerC": _text(rng, vocab, 1, 6), "label": str(rng.randint(1, 3))}


def _boolq(rng, vocab) -> Doc:
    return {"question": _text(rng, vocab, 5, 12), "passage": _text(rng, vocab, 50, 150), "idx": 0,
            "label": rng.randint(0, 1)}


# (dataset path, config name, splits) as the installed lm-eval task files read them.
STANDINS: dict[str, tuple[str, str | None, tuple[str, ...], Callable[[random.Random, list[str]], Doc]]] = {
    "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", ("train", "validation", "test"), _wikitext),
    "lambada_openai": ("EleutherAI/lambada_openai", "default", ("test",), _lambada),
    "piqa": ("baber/piqa", None, ("train", "validation"), _piqa),
    "hellaswag": ("Rowan/hellaswag", None, ("train", "validation"), _hellaswag),
    "winogrande": ("allenai/winogrande", "winogrande_xl", ("train", "validation"), _winogrande),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", ("train", "validation", "test"), _arc),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", ("train", "validation", "test"), _arc),
    "openbookqa": ("allenai/openbookqa", "main", ("train", "validation", "test"), _openbookqa),
    "social_iqa": ("lighteval/siqa", None, ("train", "validation"), _siqa),
    "boolq": ("aps/super_glue", "boolq", ("train", "validation"), _boolq),
}


# The `recall` suite (Table 4; tasks/recall/): documents in the schema of the Based / "Just read twice" datasets, with
# the gold answer placed once in a context long enough (up to ~3K words) that the 2K-token truncation must choose.
def _needle(rng, vocab, lo, hi, needle: str) -> str:
    words = _text(rng, vocab, lo, hi).split()
    words.insert(rng.randint(0, len(words)), needle)
    return " ".join(words)


def _swde(rng, vocab) -> Doc:
    key, value = _text(rng, vocab, 1, 2), _text(rng, vocab, 1, 3)
    text = _needle(rng, vocab, 200, 2600, f"{key}: {value}.")
    return {"doc_id": rng.randint(0, 10**6), "file_name": "x.htm", "key": key, "value": value,
            "text": f"{text}\nSummary of information above...\n{key}:"}


def _fda(rng, vocab) -> Doc:
    key, value = _text(rng, vocab, 1, 2), _text(rng, vocab, 1, 3)
    return {"doc_id": rng.randint(0, 10**6), "file_name": "x.pdf", "key": key, "value": value,
            "text": _needle(rng, vocab, 200, 2600, f"{key}: {value}.") + f" {key}:"}


def _squad(rng, vocab) -> Doc:
    value = _text(rng, vocab, 1, 3)
    context = _needle(rng, vocab, 60, 200, value)
    question = _text(rng, vocab, 4, 10)
    return {"doc_id": str(rng.randint(0, 10**6)), "title": _text(rng, vocab, 1, 3), "context": context,
            "question": question, "value": value, "text": f"{context} {question}"}


def _qa(lo: int, hi: int):
    def make(rng, vocab) -> Doc:
        answers = [_text(rng, vocab, 1, 3) for _ in range(rng.randint(1, 3))]
        question = _text(rng, vocab, 4, 10) + "?"
        return {"doc_id": str(rng.randint(0, 10**6)), "context": _needle(rng, vocab, lo, hi, answers[0]),
                "question": question, "answers": answers, "orig_question": question}

    return make


RECALL_STANDINS: dict[str, tuple[str, str | None, tuple[str, ...], Callable[[random.Random, list[str]], Doc]]] = {
    "swde": ("hazyresearch/based-swde-v2", "default", ("validation",), _swde),
    "squad_completion": ("hazyresearch/based-squad", "default", ("validation",), _squad),
    "fda": ("hazyresearch/based-fda", "default", ("validation",), _fda),
    "triviaqa": ("hazyresearch/based_triviaqa", None, ("validation",), _qa(300, 3000)),
    "nq_open": ("hazyresearch/based_nq_2048", None, ("validation",), _qa(200, 2500)),
    "drop": ("hazyresearch/based_drop", None, ("validation",), _qa(100, 400)),
}


def write_standins(
    data_dir: Path, tasks: list[str] | None = None, n_docs: int = 20, vocab: list[str] | None = None, seed: int = 0
) -> list[str]:
    """Write `n_docs` synthetic documents per split for each task (default: all of `STANDINS`; the recall tasks of
    `RECALL_STANDINS` when named) under `data_dir`, with the manifest `--data-dir` reads. `vocab` defaults to
    `w0 .. w199`. Returns the tasks written."""
    vocab = vocab or [f"w{i}" for i in range(200)]
    known = {**STANDINS, **RECALL_STANDINS}
    tasks = tasks or list(STANDINS)
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        raise ValueError(f"no stand-in for {', '.join(unknown)}; stand-ins exist for {', '.join(known)}")
    for task in tasks:
        path, name, splits, make = known[task]
        rng = random.Random(f"{seed}:{task}")
        ds = datasets.DatasetDict(
            {split: datasets.Dataset.from_list([make(rng, vocab) for _ in range(n_docs)]) for split in splits}
        )
        save_local_copy(path, name, ds, Path(data_dir))
    return tasks
