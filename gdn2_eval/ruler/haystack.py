"""Haystacks: the text the needles hide in, each with an identity (type, name, sha256) recorded in every sample.

* ``noise``: RULER's S-NIAH-1 filler, one fixed line of five sentences repeated (lines joined with newlines).
* ``essay``: prose. RULER uses Paul Graham's essays, which it downloads and which cannot be redistributed; here the
  essay comes from a file (``--haystack FILE``: RULER's essay JSON ``{"text": ...}``, or plain UTF-8 text) or, by
  default, from the built-in corpus shipped with the package (``corpus/essays.txt``: original prose written for this
  project, MIT; see ``corpus/README.md``). When a prompt needs more text than the essay has, the essay is repeated
  (RULER does the same); the number of passes is recorded in the sample.
* ``needle``: every line is another needle of the same form with fresh random keys and values (multikey_2/3).

The sha256 of a file haystack is that of the file's bytes (what ``sha256sum FILE`` prints); of the noise and needle
haystacks, that of their fixed UTF-8 text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .errors import RulerError
from .sentences import normalize_whitespace, split_sentences

# RULER's needle and S-NIAH-1 filler (NVIDIA/RULER scripts/data/synthetic/niah.py).
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

BUILTIN_ESSAYS = Path(__file__).parent / "corpus" / "essays.txt"
BUILTIN_NAME = "builtin:gdn2-eval-essays"
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".json",)
# An essay unit (a sentence) longer than this many words is cut into pieces, so that the haystack can be sized finely
# even for text without sentence punctuation.
MAX_UNIT_WORDS = 80


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Haystack:
    """A haystack source. For ``essay``, `text` is the essay (whitespace collapsed) and `units` its sentences; for
    ``noise`` the filler line; for ``needle`` the needle template."""

    type: str
    name: str
    sha256: str
    text: str
    units: tuple[str, ...] = field(default=(), repr=False)

    def identity(self) -> dict:
        return {"type": self.type, "name": self.name, "sha256": self.sha256}


def _essay_units(text: str) -> tuple[str, ...]:
    units: list[str] = []
    for sentence in split_sentences(text):
        words = sentence.split(" ")
        for i in range(0, len(words), MAX_UNIT_WORDS):
            units.append(" ".join(words[i : i + MAX_UNIT_WORDS]))
    return tuple(units)


def essay_from_text(text: str, name: str, sha256: str | None = None) -> Haystack:
    """An essay haystack from a string (sha256 of its UTF-8 bytes unless given)."""
    norm = normalize_whitespace(text)
    if not norm:
        raise RulerError(f"haystack {name}: the text is empty")
    digest = sha256 or _sha256(text.encode("utf-8"))
    return Haystack("essay", name, digest, norm, _essay_units(norm))


@cache
def noise_haystack() -> Haystack:
    return Haystack("noise", "ruler:noise", _sha256(NOISE.encode()), NOISE)


@cache
def needle_haystack() -> Haystack:
    return Haystack("needle", "ruler:needle", _sha256(NEEDLE.encode()), NEEDLE)


@cache
def builtin_essay() -> Haystack:
    data = BUILTIN_ESSAYS.read_bytes()
    return essay_from_text(data.decode("utf-8"), BUILTIN_NAME, _sha256(data))


def _load_haystack_file(path: Path) -> Haystack:
    if not path.is_file():
        raise RulerError(f"haystack file {path} does not exist")
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RulerError(f"haystack file {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RulerError(f"haystack file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise RulerError(
                f'haystack file {path}: expected RULER\'s essay JSON, an object {{"text": "..."}} '
                "(e.g. PaulGrahamEssays.json), or a plain-text file"
            )
        text = obj["text"]
    elif suffix in TEXT_SUFFIXES or suffix == "":
        text = raw
    else:
        raise RulerError(
            f"haystack file {path}: unknown format {suffix!r}; use RULER's essay JSON (.json with a \"text\" field) "
            f"or plain UTF-8 text ({', '.join(TEXT_SUFFIXES)} or no suffix)"
        )
    return essay_from_text(text, f"file:{path.name}", _sha256(data))


_FILE_CACHE: dict[tuple[str, int, int], Haystack] = {}


def load_haystack(path: str | Path) -> Haystack:
    """An essay haystack from a file: RULER's essay JSON ``{"text": ...}`` (``.json``) or plain UTF-8 text (``.txt``,
    ``.text``, ``.md`` or no suffix). Anything else is a `RulerError`."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        raise RulerError(f"haystack file {path} does not exist") from None
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = _load_haystack_file(path)
    return _FILE_CACHE[key]


def resolve_haystack(haystack_type: str, haystack: str | Path | Haystack | None = None) -> Haystack:
    """The haystack a task of `haystack_type` uses. `haystack` (a file or a `Haystack`; None or "builtin": the built-in
    corpus) replaces the built-in essay;
    it does not apply to the noise and needle haystacks (their text is fixed by RULER), which ignore it."""
    if haystack_type == "noise":
        return noise_haystack()
    if haystack_type == "needle":
        return needle_haystack()
    if haystack_type != "essay":
        raise RulerError(f"unknown haystack type {haystack_type!r}")
    if haystack is None or haystack == "" or haystack == "builtin":
        return builtin_essay()
    if isinstance(haystack, Haystack):
        if haystack.type != "essay":
            raise RulerError(f"haystack {haystack.name} is a {haystack.type} haystack, not an essay")
        return haystack
    return load_haystack(haystack)
