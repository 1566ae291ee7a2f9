"""A small rule-based sentence splitter for English prose (no nltk, no downloads).

It splits after `.`, `!` or `?` (and any closing quotes or brackets) followed by whitespace, unless the next word
starts in lower case, the period ends a common abbreviation (Mr., Dr., e.g., ...), an initial (J.) or a dotted
acronym (U.S.) followed by a capitalised word that does not start a sentence. Whitespace runs are collapsed to one
space first, as RULER does before it splits (`re.sub(r"\\s+", " ", essay)`).
"""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")
# end of a sentence candidate: terminal punctuation, closing quotes/brackets, then whitespace
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_OPENERS = "\"'\u201c\u2018([" + "0123456789"

# Abbreviations after which a period never ends a sentence (lower-cased, without the final period).
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st mt ft vs cf e.g i.e viz al approx dept est fig figs no nos vol vols ed eds
    rev hon gen col lt sgt capt cmdr adm gov sen rep pres jan feb mar apr jun jul aug sep sept oct nov dec
    inc ltd co corp bros p pp ch sec para ca c""".split()
)


def normalize_whitespace(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _is_abbreviation(token: str) -> bool:
    word = token.rstrip(".").lstrip("\"'\u201c\u2018([").lower()
    if not word:
        return False
    if word in ABBREVIATIONS:
        return True
    # initials and dotted acronyms: "J", "U.S", "e.g"
    return bool(re.fullmatch(r"(?:[a-z]\.)*[a-z]", word))


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (whitespace collapsed), each stripped; joined with single spaces they give the text back."""
    text = normalize_whitespace(text)
    if not text:
        return []
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        nxt = end + 1  # one space after the boundary (whitespace is normalised)
        if nxt >= len(text):
            break
        first = text[nxt]
        if not (first.isupper() or first in _OPENERS):
            continue
        punct = m.group(0)
        if punct.startswith(".") and not punct.startswith("..."):
            space = text.rfind(" ", start, m.start())
            token = text[(space + 1 if space >= 0 else start) : m.start() + 1]
            if _is_abbreviation(token):
                continue
        out.append(text[start:end])
        start = nxt
    out.append(text[start:])
    return [s for s in out if s]
