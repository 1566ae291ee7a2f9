"""RULER needle-in-a-haystack samples, sized to the evaluated model's tokenizer.

`generate_samples(task, length, num_samples, tokenizer)` returns RULER's JSON-lines records, each a dict with

* RULER's fields: ``index``, ``input`` (the prompt without the answer prefix), ``outputs`` (expected values),
  ``length`` (prompt tokens + 128, the prompt being ``input + answer_prefix`` tokenised with the tokenizer's special
  tokens), ``length_w_model_temp`` (= ``length``: base-model prompt, no chat template) and ``answer_prefix``;
* ours: ``task``, ``max_length`` (the target length L), ``depth`` (insertion depth in percent of the expected
  value's needle; a list, aligned with ``outputs``, when several values are expected), ``keys`` (every needle key of
  the sample), ``query`` (the key(s) asked, as they appear in the question), ``query_keys``, ``needles`` (every
  needle: key, value, depth) and ``haystack`` (type, name, sha256, ``units``: sentences or lines used, ``passes``:
  times its text was used, > 1 when the essay was repeated; for the noise filler, the number of lines).

The model's prompt is ``input + answer_prefix``; generation (greedy, up to 128 tokens) continues it.

How a sample is built follows RULER (NVIDIA/RULER `scripts/data/synthetic/niah.py`): needles
``One of the special magic {type} for {key} is: {value}.`` are inserted at depths drawn without replacement from 40
evenly spaced percentages (0..100) of the haystack, between sentences (essay, joined with spaces) or between lines
(noise and needle haystacks, joined with newlines); the template is RULER's, rewritten to the singular when one value
is expected. The haystack is sized by search so that prompt tokens + 128 <= L: haystack units (sentences or lines)
are tokenised once, cumulative counts give a first size, and a few full tokenisations of the prompt (usually one or
two) correct it, ending with the prompt that fits and is within one unit of the budget; every sample lands in
[0.9 L, L] unless L leaves room for only a handful of units. Prompt tokens include the special tokens the tokenizer
adds (e.g. BOS), as lm-eval's RULER counts them (NVIDIA's RULER counts without them).

Seeds: each sample draws from its own `random.Random` seeded from (seed, task, L, index), so a sample does not depend
on `num_samples` and the same seed and tokenizer give byte-identical samples. The default seed is 20250406
(`DEFAULT_SEED`), deliberately not RULER's 42 (a common seed in training pipelines that synthesise NIAH-style data,
so evaluation keys stay distinct from training ones); our random streams differ from RULER's anyway, so seed 42 does
not reproduce RULER's own samples. Pass another seed for independent draws.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from pathlib import Path
from typing import Any

from .errors import RulerError
from .haystack import NEEDLE, Haystack, resolve_haystack
from .registry import TOKENS_TO_GENERATE, TaskSpec, get_task
from .tokens import TokenCounter
from .words import draw_unique

DEFAULT_SEED = 20250406

# RULER's prompt template and answer prefix (NVIDIA/RULER scripts/data/synthetic/constants.py, task "niah"; lm-eval's
# tasks/ruler/niah_utils.py TEMPLATE and prepare_niah.py gen_prefix reproduce them).
TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"

# RULER's 40 insertion depths: np.round(np.linspace(0, 100, 40)).astype(int) (no value lies on a .5 tie).
DEPTHS: tuple[int, ...] = tuple(round(i * 100 / 39) for i in range(40))

_MAX_SEARCH_STEPS = 24


def singular_template(template: str) -> str:
    """RULER's rewrite of its template (and answer prefix) to the singular when a single value is expected."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(old, new)
    return template


def join_query(keys: list[str]) -> str:
    """RULER's query: 'a', or 'a, b, and c'."""
    return ", ".join(keys[:-1]) + ", and " + keys[-1] if len(keys) > 1 else keys[0]


def prompt_ids(sample: dict[str, Any], tokenizer: Any) -> list[int]:
    """The token ids a model reads for `sample`: its input then its answer prefix (as the RULER tasks build the
    request), with no special tokens added."""
    return list(tokenizer(sample["input"] + sample["answer_prefix"], add_special_tokens=False)["input_ids"])


def render_prompt(spec: TaskSpec, context: str, query: str) -> tuple[str, str]:
    """(input, answer_prefix) for a context and query, RULER's template made singular when one value is expected."""
    type_v = spec.value_type
    template, prefix = TEMPLATE, ANSWER_PREFIX
    if spec.singular:
        template, prefix = singular_template(template), singular_template(prefix)
        type_v = type_v[:-1]
    return (template.format(type_needle_v=type_v, context=context, query=query),
            prefix.format(type_needle_v=type_v, query=query))


def insertion_positions(num_units: int, depths: list[int]) -> list[int]:
    """Where needles at `depths` (percent) go among `num_units` units: before unit int(n * depth / 100)."""
    return [int(num_units * (d / 100)) for d in depths]


def assemble_context(haystack_type: str, units: list[str], needles: list[str], depths: list[int]) -> str:
    """The haystack `units` with `needles` inserted at `depths` (ascending, one per needle, in order), as RULER does:
    for essays, the runs of sentences between insertion points and the needles joined with spaces; for line
    haystacks, the lines with each needle inserted before line int(n * depth / 100), joined with newlines."""
    n = len(units)
    positions = insertion_positions(n, depths)
    if haystack_type == "essay":
        bounds = [0, *positions, n]
        parts: list[str] = []
        for i in range(1, len(bounds)):
            parts.append(" ".join(units[bounds[i - 1] : bounds[i]]))
            if i - 1 < len(needles):
                parts.append(needles[i - 1])
        return " ".join(parts)
    lines: list[str] = []
    prev = 0
    for pos, needle in zip(positions, needles):
        lines.extend(units[prev:pos])
        lines.append(needle)
        prev = pos
    lines.extend(units[prev:])
    return "\n".join(lines)


class _CyclicUnits:
    """A fixed sequence of units (essay sentences, or the one noise line) repeated without end; cumulative token
    costs come from one pass."""

    def __init__(self, texts: tuple[str, ...], costs: list[int]):
        self.texts, self.m = texts, len(texts)
        self.pre = [0, *itertools.accumulate(costs)]
        self.total = self.pre[-1]
        if self.total <= 0:
            raise RulerError("the haystack encodes to no tokens under this tokenizer")

    def cum(self, n: int) -> int:
        q, r = divmod(n, self.m)
        return q * self.total + self.pre[r]

    def max_within(self, budget: float) -> int:
        """Largest n with cum(n) <= budget (0 if none)."""
        if budget < 0:
            return 0
        q = int(budget // self.total)
        r = bisect.bisect_right(self.pre, budget - q * self.total) - 1
        return q * self.m + min(r, self.m - 1)

    def take(self, n: int) -> list[str]:
        q, r = divmod(n, self.m)
        return list(self.texts) * q + list(self.texts[:r])

    def passes(self, n: int) -> int:
        return max(1, math.ceil(n / self.m))


class _NeedleLines:
    """Distractor needle lines drawn lazily from their own RNG (so line i does not depend on how many are drawn)."""

    def __init__(self, spec: TaskSpec, rng: random.Random, used: set[str], counter: TokenCounter):
        self.spec, self.rng, self.used, self.counter = spec, rng, used, counter
        self.texts: list[str] = []
        self.pre = [0]

    def _extend(self, k: int) -> None:
        new = []
        for _ in range(k):
            key = draw_unique(self.spec.key_type, self.rng, self.used)
            value = draw_unique(self.spec.value_type, self.rng, self.used)
            new.append(NEEDLE.format(type_needle_v=self.spec.value_type, key=key, value=value))
        costs = self.counter.count_many(["\n" + t for t in new])
        self.texts.extend(new)
        running = self.pre[-1]
        for c in costs:
            running += c
            self.pre.append(running)
        if self.pre[-1] <= 0:
            raise RulerError("needle lines encode to no tokens under this tokenizer")

    def _more(self, budget: float | None = None) -> int:
        """How many lines to draw next: enough to pass `budget` tokens at the mean cost so far (plus a margin)."""
        if budget is None or not self.texts:
            return 64
        mean = self.pre[-1] / len(self.texts)
        return max(16, int((budget - self.pre[-1]) / mean * 1.02) + 8)

    def cum(self, n: int) -> int:
        while n >= len(self.pre):
            self._extend(max(16, n + 1 - len(self.texts)))
        return self.pre[n]

    def max_within(self, budget: float) -> int:
        if budget < 0:
            return 0
        while self.pre[-1] <= budget:
            self._extend(self._more(budget))
        return bisect.bisect_right(self.pre, budget) - 1

    def take(self, n: int) -> list[str]:
        self.cum(n)
        return self.texts[:n]

    def passes(self, n: int) -> int:
        return 1


def _sample_rng(seed: int, task: str, length: int, index: int, stream: str = "") -> random.Random:
    return random.Random(f"gdn2-eval/ruler/{seed}/{task}/{length}/{index}{stream}")


class _Generator:
    def __init__(self, spec: TaskSpec, length: int, counter: TokenCounter, haystack: Haystack, seed: int,
                 tokens_to_generate: int):
        self.spec, self.length, self.counter, self.haystack = spec, length, counter, haystack
        self.seed, self.t2g = seed, tokens_to_generate
        self.budget = length - tokens_to_generate
        self.sep = " " if haystack.type == "essay" else "\n"
        self._check_tokenizer()
        if haystack.type == "essay":
            units = haystack.units
            self.shared_units = _CyclicUnits(units, counter.count_many([" " + u for u in units]))
            calibration = list(units[:256])
        elif haystack.type == "noise":
            self.shared_units = _CyclicUnits((haystack.text,), counter.count_many(["\n" + haystack.text]))
            calibration = [haystack.text] * 512
        else:
            self.shared_units = None
            lines = _NeedleLines(spec, random.Random("gdn2-eval/ruler/calibration"), set(), counter)
            calibration = lines.take(256)
        # How the sum of separately counted units compares with the count of the units joined (merges across the
        # separator): the first guess of every sample's haystack size uses it. Fixed per tokenizer and haystack.
        joined = counter.count_many([self.sep + self.sep.join(calibration)])[0]
        pieces = sum(counter.count_many([self.sep + u for u in calibration]))
        self.ratio0 = min(max(joined / pieces, 0.5), 2.0) if pieces > 0 else 1.0

    def _check_tokenizer(self) -> None:
        probe, prefix = render_prompt(self.spec, "The grass is green.", "quiet-river")
        try:
            ids = self.counter.ids(probe + prefix)
        except Exception as e:
            raise RulerError(f"the tokenizer cannot encode the RULER template: {type(e).__name__}: {e}") from None
        unk, special = self.counter.unk_id(), self._special_ids()
        if not ids or (unk is not None and all(i == unk for i in ids if i not in special)):
            raise RulerError("the tokenizer cannot encode the RULER template (it gives no tokens, or only unknown "
                             "tokens); pass the evaluated model's tokenizer")

    def _special_ids(self) -> set[int]:
        return set(getattr(self.counter.tokenizer, "all_special_ids", None) or ())

    def sample(self, index: int) -> dict[str, Any]:
        spec = self.spec
        rng = _sample_rng(self.seed, spec.name, self.length, index)
        used: set[str] = set()
        keys = [draw_unique(spec.key_type, rng, used) for _ in range(spec.num_keys)]
        values = [[draw_unique(spec.value_type, rng, used) for _ in range(spec.num_values)] for _ in keys]
        needles = [(k, v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        depths = sorted(rng.sample(DEPTHS, len(needles)))
        queried = rng.sample(range(spec.num_keys), spec.num_queries)
        query_keys = [keys[i] for i in queried]
        outputs = [v for i in queried for v in values[i]]
        query = join_query(query_keys)
        needle_texts = [NEEDLE.format(type_needle_v=spec.value_type, key=k, value=v) for k, v in needles]

        units = self.shared_units
        if units is None:
            units = _NeedleLines(spec, _sample_rng(self.seed, spec.name, self.length, index, "/lines"), used,
                                 self.counter)
        n, text_input, prefix, tokens = self._fit(units, needle_texts, depths, query)

        depth_of = {v: d for (_, v), d in zip(needles, depths)}
        out_depths = [depth_of[v] for v in outputs]
        return {
            "index": index,
            "input": text_input,
            "outputs": outputs,
            "length": tokens + self.t2g,
            "length_w_model_temp": tokens + self.t2g,
            "answer_prefix": prefix,
            "task": spec.name,
            "max_length": self.length,
            "depth": out_depths[0] if len(out_depths) == 1 else out_depths,
            "keys": keys,
            "query": query,
            "query_keys": query_keys,
            "needles": [{"key": k, "value": v, "depth": d} for (k, v), d in zip(needles, depths)],
            "haystack": {**self.haystack.identity(), "units": n, "passes": units.passes(n)},
        }

    def _fit(self, units, needle_texts: list[str], depths: list[int], query: str) -> tuple[int, str, str, int]:
        """The largest haystack (in units) whose prompt fits the budget, found from cumulative unit costs and
        corrected with full tokenisations of the prompt. Returns (units, input, answer_prefix, prompt tokens)."""
        spec, budget = self.spec, self.budget
        empty_input, prefix = render_prompt(spec, "", query)
        fixed = self.counter.count(empty_input + prefix)
        needle_cost = sum(self.counter.count_many([self.sep + t for t in needle_texts]))

        def build(n: int) -> tuple[str, int]:
            context = assemble_context(self.haystack.type, units.take(n), needle_texts, depths)
            text, _ = render_prompt(spec, context, query)
            return text, self.counter.count(text + prefix)

        def guess(ratio: float) -> int:
            return units.max_within((budget - fixed) / ratio - needle_cost)

        n = max(1, guess(self.ratio0))
        lo: tuple[int, str, int] | None = None
        hi: int | None = None
        for _ in range(_MAX_SEARCH_STEPS):
            text, tokens = build(n)
            if tokens <= budget:
                lo = (n, text, tokens)
                next_unit = units.cum(n + 1) - units.cum(n)
                if budget - tokens <= next_unit:  # one more unit would (very likely) not fit: close enough
                    break
            else:
                hi = n
                if n <= 1:
                    break
            variable = needle_cost + units.cum(n)
            ratio = max((tokens - fixed) / variable, 1e-3) if variable > 0 else 1.0
            m = max(1, guess(ratio))
            if lo is not None:
                m = max(m, lo[0] + 1)
            if hi is not None:
                m = min(m, hi - 1)
            if m == n or (lo is not None and hi is not None and hi - lo[0] <= 1) or m < 1:
                break
            n = m
        if lo is None:  # nothing fitted yet (a tokenizer far from the estimates): bisect below the last size tried
            low, high = 0, hi if hi is not None else n
            while high - low > 1:
                mid = (low + high) // 2
                text, tokens = build(mid)
                if tokens <= budget:
                    lo, low = (mid, text, tokens), mid
                else:
                    high = mid
        if lo is None:
            text, tokens = build(1)
            raise RulerError(
                f"context length {self.length} is below what {spec.name} needs under this tokenizer: the template, "
                f"{len(needle_texts)} needle(s) and one haystack unit take {tokens} tokens, plus {self.t2g} to "
                f"generate; use a length of at least {tokens + self.t2g}"
            )
        return lo[0], lo[1], prefix, lo[2]


def generate_samples(
    task: str | TaskSpec,
    length: int,
    num_samples: int,
    tokenizer: Any,
    seed: int = DEFAULT_SEED,
    haystack: str | Path | Haystack | None = None,
    tokens_to_generate: int = TOKENS_TO_GENERATE,
    start_index: int = 0,
) -> list[dict[str, Any]]:
    """`num_samples` samples of `task` for target length `length` (prompt tokens + `tokens_to_generate` <= length
    under `tokenizer`: a Hugging Face tokenizer, a `tokenizers.Tokenizer`, or a name/path to load). `haystack`: an
    essay file or `Haystack` replacing the built-in essay corpus (ignored by the noise and needle tasks).
    Samples ``start_index .. start_index + num_samples - 1`` (each depends only on seed, task, length and index)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise RulerError(f"context length must be a positive number of tokens, got {length!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise RulerError(f"number of samples must be a non-negative integer, got {num_samples!r}")
    if length <= tokens_to_generate:
        raise RulerError(f"context length {length} leaves no room for a prompt: {tokens_to_generate} tokens are "
                         "kept for the answer")
    counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
    gen = _Generator(spec, length, counter, resolve_haystack(spec.haystack, haystack), int(seed), tokens_to_generate)
    return [gen.sample(i) for i in range(start_index, start_index + num_samples)]
