"""RULER needle-in-a-haystack data for recurrent and linear-attention models (the spec's Table 3).

Public API::

    generate_samples(task, length, num_samples, tokenizer, seed=DEFAULT_SEED, haystack=None) -> list[dict]
    string_match_all(predictions, references) -> float        # fraction in [0, 1]
    sample_score(prediction, outputs) -> float; postprocess_pred(prediction) -> str
    write_jsonl(samples, path) -> Path; read_jsonl(path, task=None, max_length=None) -> list[dict]
    TASKS / get_task(name) -> TaskSpec; task_names(); PAPER_GRID; FULL_LENGTHS; parse_length("4k") -> 4096
    load_haystack(path) -> Haystack; builtin_essay() -> Haystack; load_tokenizer(name_or_path)
    RulerError (a gdn2_eval.errors.UserError)

See `generate.py` for the sample fields and how sizing works, `haystack.py` for the haystacks.

Differences from NVIDIA's RULER (template, answer prefix, needle, filler, 40 depths, singular rewrite and scoring are
RULER's, byte for byte): our own random streams (seed 42 does not give RULER's samples); keys and values are unique
within a sample; needles in the noise and needle haystacks also go at the 40 depths (RULER: uniformly random lines);
the needle order is shuffled per sample (RULER: one fixed permutation); the essay is cut at a sentence boundary and
sized to within one sentence of the budget (RULER: whole 500-word steps); sentences come from our own splitter, not
nltk's punkt; the default essay is the built-in corpus, not Paul Graham's essays; prompt lengths count the
tokenizer's special tokens; `string_match_all` is a fraction (RULER reports x100). S-NIAH-3 uses UUID values as RULER
does (the GDN-2 paper calls it a word-based needle).
"""

from .errors import RulerError
from .generate import ANSWER_PREFIX, DEFAULT_SEED, DEPTHS, TEMPLATE, generate_samples, prompt_ids, render_prompt
from .haystack import NEEDLE, NOISE, Haystack, builtin_essay, load_haystack, resolve_haystack
from .jsonl import read_jsonl, write_jsonl
from .registry import (
    DEFAULT_NUM_SAMPLES,
    FULL_LENGTHS,
    PAPER_GRID,
    TASKS,
    TOKENS_TO_GENERATE,
    TaskSpec,
    get_task,
    parse_length,
    parse_lengths,
    task_names,
)
from .scoring import postprocess_pred, sample_score, string_match_all
from .sentences import split_sentences
from .tokens import TokenCounter, load_tokenizer

__all__ = [
    "ANSWER_PREFIX",
    "DEFAULT_NUM_SAMPLES",
    "DEFAULT_SEED",
    "DEPTHS",
    "FULL_LENGTHS",
    "NEEDLE",
    "NOISE",
    "PAPER_GRID",
    "TASKS",
    "TEMPLATE",
    "TOKENS_TO_GENERATE",
    "Haystack",
    "RulerError",
    "TaskSpec",
    "TokenCounter",
    "builtin_essay",
    "generate_samples",
    "get_task",
    "load_haystack",
    "load_tokenizer",
    "prompt_ids",
    "parse_length",
    "parse_lengths",
    "postprocess_pred",
    "read_jsonl",
    "render_prompt",
    "resolve_haystack",
    "sample_score",
    "split_sentences",
    "string_match_all",
    "task_names",
    "write_jsonl",
]
