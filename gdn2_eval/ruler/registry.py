"""The eight RULER needle-in-a-haystack tasks, as data, and the context-length grids of the paper.

Each task is RULER's (NVIDIA/RULER `synthetic.yaml`, reproduced by lm-eval's `ruler` tasks): which haystack the needles
hide in, what the keys and values are, how many keys, values per key and queried keys a sample has. A new retrieval
task of this family is one more `TaskSpec` (and one three-line YAML in `tasks/ruler/`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .errors import RulerError

K = 1024
TOKENS_TO_GENERATE = 128  # RULER's `tokens_to_generate` for NIAH: the budget left for the answer
DEFAULT_NUM_SAMPLES = 500  # RULER's default number of samples per task and length
HAYSTACK_TYPES = ("noise", "essay", "needle")
VALUE_TYPES = ("words", "numbers", "uuids")


@dataclass(frozen=True)
class TaskSpec:
    """One NIAH task. `num_keys` needles' keys (one is the real key, the others distractors, unless all are queried),
    `num_values` values per key (one needle each), `num_queries` keys asked about (RULER's num_needle_k,
    num_needle_v, num_needle_q; like RULER, num_keys is raised to num_queries)."""

    name: str
    haystack: str  # "noise": RULER's repeated fixed filler; "essay": prose; "needle": every line another needle
    key_type: str  # "words" (adjective-noun) | "numbers" (7 digits) | "uuids"
    value_type: str
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    paper_name: str = ""
    description: str = ""

    def __post_init__(self):
        if self.haystack not in HAYSTACK_TYPES:
            raise RulerError(f"task {self.name}: haystack must be one of {', '.join(HAYSTACK_TYPES)}")
        for kind in (self.key_type, self.value_type):
            if kind not in VALUE_TYPES:
                raise RulerError(f"task {self.name}: key/value type must be one of {', '.join(VALUE_TYPES)}")
        if min(self.num_keys, self.num_values, self.num_queries) < 1:
            raise RulerError(f"task {self.name}: needle counts must be >= 1")
        object.__setattr__(self, "num_keys", max(self.num_keys, self.num_queries))

    @property
    def num_needles(self) -> int:
        return self.num_keys * self.num_values

    @property
    def singular(self) -> bool:
        """RULER rewrites the template to the singular when one value is expected."""
        return self.num_queries * self.num_values == 1

    def as_dict(self) -> dict:
        return asdict(self)


_SPECS = [
    TaskSpec("niah_single_1", "noise", "words", "numbers", paper_name="S-NIAH-1",
             description="one word key -> 7-digit number, in a repeated filler (passkey retrieval)"),
    TaskSpec("niah_single_2", "essay", "words", "numbers", paper_name="S-NIAH-2",
             description="one word key -> 7-digit number, in essays (vanilla needle in a haystack)"),
    TaskSpec("niah_single_3", "essay", "words", "uuids", paper_name="S-NIAH-3",
             description="one word key -> UUID, in essays"),
    TaskSpec("niah_multikey_1", "essay", "words", "numbers", num_keys=4, paper_name="MK-NIAH-1",
             description="4 word keys -> numbers in essays (3 distractor needles); one key is asked"),
    TaskSpec("niah_multikey_2", "needle", "words", "numbers", paper_name="MK-NIAH-2",
             description="one word key -> number among lines that are all other word-key needles (line retrieval)"),
    TaskSpec("niah_multikey_3", "needle", "uuids", "uuids", paper_name="MK-NIAH-3",
             description="one UUID key -> UUID among lines that are all other UUID needles (key-value retrieval)"),
    TaskSpec("niah_multivalue", "essay", "words", "numbers", num_values=4, paper_name="MV-NIAH",
             description="one word key with 4 numbers in essays; all 4 are expected"),
    TaskSpec("niah_multiquery", "essay", "words", "numbers", num_queries=4, paper_name="MQ-NIAH",
             description="4 word keys -> numbers in essays; all 4 keys are asked"),
]
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}

# The GDN-2 paper's Table 3 grid (spec: S-NIAH-1/-2 at 1K-8K, S-NIAH-3 and MK-NIAH-1 at 1K-4K) and RULER's full grid.
PAPER_GRID: dict[str, list[int]] = {
    "niah_single_1": [1 * K, 2 * K, 4 * K, 8 * K],
    "niah_single_2": [1 * K, 2 * K, 4 * K, 8 * K],
    "niah_single_3": [1 * K, 2 * K, 4 * K],
    "niah_multikey_1": [1 * K, 2 * K, 4 * K],
}
FULL_LENGTHS: list[int] = [4 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K]


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise RulerError(f"unknown RULER task {name!r}; tasks: {', '.join(TASKS)}") from None


def task_names() -> list[str]:
    return list(TASKS)


_LENGTH_RE = re.compile(r"^\s*(\d+)\s*([kK]?)\s*$")


def parse_length(text: str | int) -> int:
    """'4k' / '4K' -> 4096 (K = 1024 tokens, as RULER and the paper), '4096' -> 4096."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _LENGTH_RE.match(str(text))
        if not m:
            raise RulerError(f"bad context length {text!r}: use a number of tokens or e.g. 4k (= 4096)")
        value = int(m.group(1)) * (K if m.group(2) else 1)
    if value <= 0:
        raise RulerError(f"bad context length {text!r}: must be positive")
    return value


def parse_lengths(text: str) -> list[int]:
    """'1k,2k,4k' -> [1024, 2048, 4096]."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise RulerError(f"bad context lengths {text!r}: e.g. 1k,2k,4k")
    return [parse_length(p) for p in parts]
