"""lm-eval glue for the RULER needle-in-a-haystack tasks: each task's `custom_dataset` generates its samples with
`gdn2_eval.ruler` for the evaluated model's tokenizer.

lm-eval calls ``custom_dataset(**metadata)``, where metadata is the task YAML's ``metadata`` merged with
``TaskManager(metadata=...)``; `lm_eval.simple_evaluate` and lm-eval's CLI merge ``model_args`` into it, so the
tokenizer comes from the model arguments. Keys read here (all others are ignored):

* ``tokenizer``, else ``pretrained``, else ``model``: a tokenizer directory or hub name (loaded with
  `transformers.AutoTokenizer`), or a tokenizer object. For the ``gdn2`` backend with an authors' ``.pth``
  checkpoint, pass ``tokenizer=DIR`` in the model args.
* ``max_seq_lengths``: target context lengths L (a list of ints, or "1k,2k" style strings; default [4096]).
  Samples of several lengths go into one dataset and one ``string_match_all``; run one length at a time to get one
  score per length (``gdn2-eval run --suite ruler`` does), or look at ``max_length`` in the per-sample log.
* ``num_samples`` (default 500), ``seed`` (default `gdn2_eval.ruler.DEFAULT_SEED`), ``haystack`` (an essay file:
  RULER's essay JSON or plain text; default the built-in corpus).

With lm-eval's own CLI::

    lm_eval --model hf --model_args pretrained=DIR,max_length=2048 --tasks niah_single_1 \\
        --include_path <repo>/tasks/ruler --metadata '{"max_seq_lengths": [1024], "num_samples": 50}'
    lm_eval --model gdn2 --model_args pretrained=ckpt.pth,arch=gdn2_1.3B,tokenizer=TOKDIR ...

(set the backend's ``max_length`` to at least L, or lm-eval cuts the prompt from the left). These task names
shadow lm-eval's own ``niah_*`` tasks when this directory is included (lm-eval logs a warning per task); the tag
``ruler_niah`` selects all eight. No chat template: the prompts are RULER's base-model prompts.
"""

from __future__ import annotations

from typing import Any

from gdn2_eval.loading import tokenizer_from_metadata
from gdn2_eval.ruler import (
    DEFAULT_NUM_SAMPLES,
    DEFAULT_SEED,
    RulerError,
    TaskSpec,
    generate_samples,
    parse_length,
    parse_lengths,
    sample_score,
)

DEFAULT_SEQ_LENGTHS = [4096]


def resolve_tokenizer(metadata: dict[str, Any]) -> Any:
    """The tokenizer named by `metadata` (``tokenizer``, else ``pretrained``, else ``model``)."""
    tokenizer = tokenizer_from_metadata(metadata, RulerError)
    if tokenizer is None:
        raise RulerError(
            "RULER tasks size their prompts with the model's tokenizer: pass tokenizer=DIR (or pretrained=DIR) in the "
            "model args or the task metadata"
        )
    return tokenizer


def resolve_lengths(value: Any) -> list[int]:
    if value is None:
        return list(DEFAULT_SEQ_LENGTHS)
    if isinstance(value, (list, tuple)):
        lengths = [parse_length(v) for v in value]
        if not lengths:
            raise RulerError("max_seq_lengths is empty")
        return lengths
    return parse_lengths(str(value)) if isinstance(value, str) else [parse_length(value)]


def _int(metadata: dict[str, Any], key: str, default: int) -> int:
    value = metadata.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RulerError(f"task metadata {key}={value!r} is not an integer") from None


def build_samples(task: str | TaskSpec, **metadata: Any) -> list[dict[str, Any]]:
    """The samples of `task` for every length in the metadata (see the module docstring)."""
    tokenizer = resolve_tokenizer(metadata)
    num_samples = _int(metadata, "num_samples", DEFAULT_NUM_SAMPLES)
    seed = _int(metadata, "seed", DEFAULT_SEED)
    haystack = metadata.get("haystack") or None
    samples: list[dict[str, Any]] = []
    for length in resolve_lengths(metadata.get("max_seq_lengths")):
        samples.extend(generate_samples(task, length, num_samples, tokenizer, seed=seed, haystack=haystack))
    return samples


def build_dataset(task: str | TaskSpec, **metadata: Any) -> dict[str, Any]:
    import datasets

    return {"test": datasets.Dataset.from_list(build_samples(task, **metadata), split=datasets.Split.TEST)}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """RULER's string_match_all for one sample: the fraction of expected values in the (post-processed) prediction."""
    return {"string_match_all": sample_score(results[0], doc["outputs"])}


def _task_dataset(task: str):
    """The `custom_dataset` hook of one built-in task (the YAML names it: `!function utils.<task>`)."""

    def dataset(**metadata: Any) -> dict[str, Any]:
        return build_dataset(task, **metadata)

    dataset.__name__ = dataset.__qualname__ = task
    return dataset


niah_single_1 = _task_dataset("niah_single_1")
niah_single_2 = _task_dataset("niah_single_2")
niah_single_3 = _task_dataset("niah_single_3")
niah_multikey_1 = _task_dataset("niah_multikey_1")
niah_multikey_2 = _task_dataset("niah_multikey_2")
niah_multikey_3 = _task_dataset("niah_multikey_3")
niah_multivalue = _task_dataset("niah_multivalue")
niah_multiquery = _task_dataset("niah_multiquery")


# Fields kept from a RULER .jsonl file (NVIDIA's scripts write more; these are what prompting and scoring need).
JSONL_FIELDS = ("index", "input", "outputs", "length", "answer_prefix", "max_length", "task")


def ruler_jsonl(**metadata: Any) -> dict[str, Any]:
    """Samples read from a RULER .jsonl file (metadata key ``jsonl``), e.g. one made by NVIDIA's RULER scripts."""
    import datasets

    from gdn2_eval.ruler import read_jsonl

    path = metadata.get("jsonl")
    if not path:
        raise RulerError("the ruler_jsonl task needs the file in its metadata: jsonl=PATH")
    docs = [{key: doc.get(key) for key in JSONL_FIELDS} for doc in read_jsonl(path)]
    return {"test": datasets.Dataset.from_list(docs, split=datasets.Split.TEST)}
