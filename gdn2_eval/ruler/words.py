"""Keys and values of the needles: adjective-noun word pairs, 7-digit numbers and version-4 UUIDs.

Word keys are `adjective-noun` pairs over the `wonderwords` package's bundled adjective and noun lists (RULER uses
the same lists through `wonderwords.RandomWord()._categories`); they are read offline from the package's files.
Every draw comes from a `random.Random` the caller seeds, so samples are reproducible.
"""

from __future__ import annotations

import random
import uuid
from functools import cache

from .errors import RulerError

NUM_DIGITS = 7


def _read_word_list(filename: str) -> tuple[str, ...]:
    try:
        from importlib.resources import files

        text = files("wonderwords.assets").joinpath(filename).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RulerError(f"word keys need the wonderwords word lists ({e}): pip install wonderwords") from None
    return tuple(sorted({line.strip() for line in text.splitlines() if line.strip()}))


@cache
def word_lists() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adjectives, nouns): wonderwords' lists, deduplicated and sorted (so the draws do not depend on file order)."""
    return _read_word_list("adjectivelist.txt"), _read_word_list("nounlist.txt")


def random_word(rng: random.Random) -> str:
    """An `adjective-noun` key, uniform over all pairs (as RULER's choice from the sorted list of all pairs)."""
    adjectives, nouns = word_lists()
    return f"{adjectives[rng.randrange(len(adjectives))]}-{nouns[rng.randrange(len(nouns))]}"


def random_number(rng: random.Random, num_digits: int = NUM_DIGITS) -> str:
    return str(rng.randint(10 ** (num_digits - 1), 10**num_digits - 1))


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


_DRAW = {"words": random_word, "numbers": random_number, "uuids": random_uuid}


def random_value(kind: str, rng: random.Random) -> str:
    try:
        draw = _DRAW[kind]
    except KeyError:
        raise RulerError(f"unknown needle key/value type {kind!r}; types: {', '.join(_DRAW)}") from None
    return draw(rng)


def draw_unique(kind: str, rng: random.Random, used: set[str]) -> str:
    """A value of `kind` not in `used` (added to it): keys and values of one sample never repeat, so an expected
    value never appears in the prompt other than in its needle, and a distractor never shares the queried key."""
    for _ in range(1000):
        value = random_value(kind, rng)
        if value not in used:
            used.add(value)
            return value
    raise RulerError(f"could not draw a fresh {kind} value after 1000 tries")
