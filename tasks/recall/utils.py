"""lm-eval glue for the real-world recall suite (the paper's Table 4): SWDE, SQuAD, FDA, TriviaQA, NQ and DROP with
their contexts truncated to 2K tokens, following "Just read twice" (Arora et al. 2024; HazyResearch/
prefix-linear-attention, ``lm-eval-harness``: ``launch_jrt.py --cutting_context --context_length 2048
--answer_length 50``, ``Task.truncate_context`` and the ``based_*`` tasks).

What a task does, per document (``custom_dataset`` runs it once when lm-eval loads the task):

1. Reads the task's dataset with ``datasets.load_dataset(dataset_path, dataset_name)`` (so ``gdn2-eval run
   --data-dir`` and ``gdn2-eval data fetch`` work as for any task), split ``validation``. Schemas, as the Based/JRT
   tasks read them: SWDE and FDA ``text``, ``key``, ``value``; SQuAD ``text``, ``value``; TriviaQA, NQ and DROP
   ``context``, ``question``, ``answers`` (a list; NQ may carry ``tok_pos``).
2. Truncates the context (``text``, resp. ``context``; stripped) under the evaluated model's tokenizer to
   ``CONTEXT_TOKENS - ANSWER_TOKENS`` = 2048 - 50 = 1998 tokens, keeping the part with the answer's evidence as
   ``truncate_context`` does: find the earliest case-insensitive occurrence in the context of the answer fields
   (SWDE/FDA: ``key`` and ``value``; SQuAD: ``value``; TriviaQA/NQ/DROP: the first gold answer, then the others),
   take its token position p (the length of the tokenised text before it) and keep tokens
   ``[max(0, p - 999), that start + 1998)`` clipped to the document, i.e. a window centred on the answer that is
   shifted right at the head and shortened at the tail. Without a match the window starts at NQ's ``tok_pos`` when
   the dataset gives one, else at the document's head. The kept tokens are decoded (special tokens skipped); if the
   decoded text re-encodes to more than 1998 tokens (BPE merges across the cut) tokens are dropped from its far
   side until it fits.
3. Builds the completion-style prompt of the Based/JRT task from the truncated context: SWDE: the text before
   "Summary of information above...", a trailing "key:" removed, stripped of newlines and dots, then ". Key:";
   FDA: a trailing "key:" removed, stripped, "." and " Key:"; SQuAD: the (already completion-style) text as is;
   TriviaQA (with [PAR]/[DOC]/[TLE] removed), NQ and DROP: the context without a trailing copy of the question,
   ". ", the question.
4. Generates greedily until a newline, at most 48 tokens, no chat template, and scores ``contains``: 1 when any
   gold answer (SWDE/FDA/SQuAD: ``value``; the others: every entry of ``answers``) occurs in the prediction as a
   case-insensitive substring (the prediction is not stripped or normalised), else 0; lm-eval averages it and
   `gdn2-eval` reports it in percent.

Differences from the original protocol (also in the README, "Real-world recall (Table 4)"):

* The tokenizer is the evaluated model's (``tokenizer`` metadata, which ``gdn2-eval run`` passes; with lm-eval's
  CLI ``pretrained=DIR`` or ``tokenizer=DIR`` in the model args). JRT used the tokenizer of its own models
  (GPT-2) for every model it compared; the GDN-2 paper does not say which tokenizer cut its inputs.
* Tokens are counted without special tokens (JRT's ``batch_encode_plus`` adds a BOS where the tokenizer has one,
  shifting the window by one token), and the decoded window is re-checked to fit 1998 tokens (JRT does not).
* JRT's launcher passes ``--context_key text --answer_key key value`` to every task (``value`` alone for SQuAD);
  TriviaQA, NQ and DROP documents have ``context`` and ``answers``, so they are cut on those fields here.
* Without any answer match JRT's code centres the window on the document's last character (``context[:-1]``),
  keeping only its last ~999 tokens; here the window keeps the head (or starts at NQ's ``tok_pos``).
* JRT drops documents whose answer field is empty or one character long; here that holds for SWDE, FDA and SQuAD
  (their ``key``/``value``); TriviaQA, NQ and DROP keep every document (a one-character answer such as a DROP
  count is only not used to place the window). ``--limit N`` counts documents after that filter.
* The whole prompt (truncated context plus the question suffix) can exceed 2048 tokens by the question's length,
  as in JRT; ``answer_tokens`` (50) is the budget JRT keeps free for the question and the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gdn2_eval.errors import UserError
from gdn2_eval.loading import tokenizer_from_metadata

CONTEXT_TOKENS = 2048  # "inputs truncated to 2K tokens"
ANSWER_TOKENS = 50  # JRT's --answer_length: tokens kept free for the question and the answer
SUMMARY_MARK = "Summary of information above..."


class RecallError(UserError):
    pass


# --- tokenizer ---------------------------------------------------------------------------------------------------


def resolve_tokenizer(metadata: dict[str, Any]) -> Any | None:
    """The tokenizer named by `metadata` (``tokenizer``, else ``pretrained``, else ``model``), or None."""
    return tokenizer_from_metadata(metadata, RecallError)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- truncation ----------------------------------------------------------------------------------------------------


def find_answer(context: str, answers: list[str]) -> int:
    """Character position of the earliest case-insensitive occurrence of any of `answers` in `context`, or -1."""
    best = -1
    for answer in answers:
        if not answer:
            continue
        m = re.search(re.escape(answer), context, re.IGNORECASE)
        if m and (best == -1 or m.start() < best):
            best = m.start()
    return best


def truncate(context: str, answer_pos: int, tokenizer: Any, budget: int, tok_pos: int | None = None) -> dict[str, Any]:
    """The part of `context` (at most `budget` tokens) around the character `answer_pos` (-1: none; then around
    token `tok_pos` if given, else from the head). Returns the text and its token bookkeeping."""
    tokens = _encode(tokenizer, context)
    if answer_pos >= 0:
        anchor = len(_encode(tokenizer, context[:answer_pos]))
    else:
        anchor = int(tok_pos) if tok_pos is not None and len(tokens) > budget else 0
    start = max(0, anchor - budget // 2)
    end = min(len(tokens), start + budget)
    if start == 0 and end == len(tokens):
        text = context  # short enough: unchanged
    else:
        text = tokenizer.decode(tokens[start:end], skip_special_tokens=True)
        # BPE may merge differently across the cut: drop tokens from the side farther from the answer until it fits.
        while len(_encode(tokenizer, text)) > budget and end > start + 1:
            if anchor - start > end - anchor:
                start += 1
            else:
                end -= 1
            text = tokenizer.decode(tokens[start:end], skip_special_tokens=True)
    return {
        "text": text,
        "doc_tokens": len(tokens),
        "context_tokens": len(_encode(tokenizer, text)),
        "window": [start, end],
        "answer_found": answer_pos >= 0,
        "truncated": text is not context,
    }


# --- prompts (the Based / JRT tasks' doc_to_text, applied to the truncated context) --------------------------------


def _strip_suffix_ci(text: str, suffix: str) -> str:
    while suffix and text.lower().endswith(suffix.lower()):
        text = text[: -len(suffix)]
    return text


def _key_question(key: str) -> str:
    return key[:1].upper() + key[1:] + ":"


def prompt_swde(doc: dict[str, Any], context: str) -> str:
    text = _strip_suffix_ci(context.split(SUMMARY_MARK, 1)[0], doc["key"] + ":")
    return text.strip().strip(".") + ". " + _key_question(doc["key"])


def prompt_fda(doc: dict[str, Any], context: str) -> str:
    text = _strip_suffix_ci(context, doc["key"] + ":").strip("\n").strip(".")
    if not text.endswith("."):
        text += "."
    return text + " " + _key_question(doc["key"])


def prompt_squad(doc: dict[str, Any], context: str) -> str:
    return context.strip()


def _qa_prompt(context: str, question: str) -> str:
    return context.strip().strip(".") + ". " + question


def prompt_triviaqa(doc: dict[str, Any], context: str) -> str:
    context = re.sub(r"\[PAR\]|\[DOC\]|\[TLE\]", "", context.strip())
    question = doc["question"].strip()
    return _qa_prompt(_strip_suffix_ci(context, question), question)


def prompt_nq(doc: dict[str, Any], context: str) -> str:
    context, question = context.strip(), doc["question"].strip()
    if question and context.endswith(question):  # JRT's NQ task: once, case-sensitive
        context = context[: -len(question)]
    return _qa_prompt(context, question)


def prompt_drop(doc: dict[str, Any], context: str) -> str:
    context, question = context.strip(), doc["question"].strip()
    return _qa_prompt(_strip_suffix_ci(context, question), question)


# task -> (context field, answer fields used to place the window, drop docs with a short answer field, prompt)
TASKS: dict[str, tuple[str, tuple[str, ...], bool, Callable[[dict[str, Any], str], str]]] = {
    "swde": ("text", ("key", "value"), True, prompt_swde),
    "fda": ("text", ("key", "value"), True, prompt_fda),
    "squad_completion": ("text", ("value",), True, prompt_squad),
    "triviaqa": ("context", ("answers",), False, prompt_triviaqa),
    "nq_open": ("context", ("answers",), False, prompt_nq),
    "drop": ("context", ("answers",), False, prompt_drop),
}


def labels(task: str, doc: dict[str, Any]) -> list[str]:
    """The gold answers `contains` accepts: SWDE/FDA/SQuAD ``value``; TriviaQA/NQ/DROP every entry of ``answers``."""
    if TASKS[task][0] == "context":
        return [str(a) for a in doc.get("answers") or []]
    return [str(doc["value"])]


def _answer_candidates(doc: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    """Answers that place the window, in JRT's order (the answer fields, a list field expanded)."""
    out: list[str] = []
    for field in fields:
        value = doc.get(field)
        values = [str(v) for v in value] if isinstance(value, list) else [str(value or "")]
        out.extend(values)
    return out


def prepare(task: str, doc: dict[str, Any], tokenizer: Any, context_tokens: int = CONTEXT_TOKENS,
            answer_tokens: int = ANSWER_TOKENS) -> dict[str, Any] | None:
    """`doc` with its truncated ``prompt`` and bookkeeping (``recall_*`` fields); None if JRT drops it."""
    context_key, answer_fields, drop_short, make_prompt = TASKS[task]
    candidates = _answer_candidates(doc, answer_fields)
    if drop_short and any(len(c) <= 1 for c in candidates[: len(answer_fields)]):
        return None
    context = str(doc[context_key]).strip()
    if drop_short:  # JRT: the earliest match of any answer field
        pos = find_answer(context, candidates)
    else:  # JRT: the first answer, then the alternatives
        pos = find_answer(context, candidates[:1])
        if pos < 0:
            pos = find_answer(context, [c for c in candidates[1:] if len(c) > 1])
    cut = truncate(context, pos, tokenizer, context_tokens - answer_tokens, doc.get("tok_pos"))
    prompt = make_prompt(doc, cut["text"])
    return {
        **doc,
        "prompt": prompt,
        "recall_labels": labels(task, doc),
        "recall_context_tokens": cut["context_tokens"],
        "recall_doc_tokens": cut["doc_tokens"],
        "recall_prompt_tokens": len(_encode(tokenizer, prompt)),
        "recall_window": cut["window"],
        "recall_answer_found": cut["answer_found"],
        "recall_truncated": cut["truncated"],
    }


def build_dataset(task: str, **metadata: Any) -> Any:
    """lm-eval's ``custom_dataset`` hook: the task's validation split with truncated prompts. Without a tokenizer
    in the metadata (``gdn2-eval data fetch`` loading the task) the raw dataset, which cannot be evaluated."""
    import datasets

    path, name = _DATASETS[task]
    raw = datasets.load_dataset(path, name)  # the module attribute: `--data-dir` replaces it
    tokenizer = resolve_tokenizer(metadata)
    if tokenizer is None:
        return raw
    context_tokens = int(metadata.get("recall_context_tokens") or CONTEXT_TOKENS)
    answer_tokens = int(metadata.get("recall_answer_tokens") or ANSWER_TOKENS)
    docs = [prepare(task, dict(doc), tokenizer, context_tokens, answer_tokens) for doc in raw["validation"]]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list([d for d in docs if d is not None])})


# (dataset path, config name) as the task YAMLs name them (data fetch saves the local copy under these)
_DATASETS: dict[str, tuple[str, str | None]] = {
    "swde": ("hazyresearch/based-swde-v2", "default"),
    "fda": ("hazyresearch/based-fda", "default"),
    "squad_completion": ("hazyresearch/based-squad", "default"),
    "triviaqa": ("hazyresearch/based_triviaqa", None),
    "nq_open": ("hazyresearch/based_nq_2048", None),
    "drop": ("hazyresearch/based_drop", None),
}


def doc_to_text(doc: dict[str, Any]) -> str:
    if "prompt" not in doc:
        raise RecallError(
            "recall tasks truncate their contexts under the model's tokenizer: pass tokenizer=DIR (or pretrained=DIR) "
            "in the model args or the task metadata"
        )
    return doc["prompt"]


def doc_to_target(doc: dict[str, Any]) -> str:
    answers = doc.get("recall_labels") or [""]
    return answers[0]


def contains_score(prediction: str, answers: list[str]) -> int:
    """1 if any non-empty answer occurs in `prediction` (case-insensitive substring), else 0."""
    return int(any(re.search(re.escape(a), prediction, re.IGNORECASE) for a in answers if a))


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, int]:
    return {"contains": contains_score(results[0], doc["recall_labels"])}


def swde(**metadata: Any) -> Any:
    return build_dataset("swde", **metadata)


def fda(**metadata: Any) -> Any:
    return build_dataset("fda", **metadata)


def squad_completion(**metadata: Any) -> Any:
    return build_dataset("squad_completion", **metadata)


def triviaqa(**metadata: Any) -> Any:
    return build_dataset("triviaqa", **metadata)


def nq_open(**metadata: Any) -> Any:
    return build_dataset("nq_open", **metadata)


def drop(**metadata: Any) -> Any:
    return build_dataset("drop", **metadata)
