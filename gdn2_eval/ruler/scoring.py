"""RULER's scoring for the NIAH tasks: prediction post-processing and `string_match_all`.

A prediction is stripped, its control characters (\\x00-\\x1f) turned into newlines and stripped again; a sample scores
the fraction of its expected values that occur in the prediction as case-insensitive substrings. `string_match_all`
averages over samples and returns a fraction in [0, 1] (RULER reports it times 100, rounded to two decimals).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """RULER's `postprocess_pred` for one prediction."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def sample_score(prediction: str, outputs: Sequence[str]) -> float:
    """Fraction of `outputs` found (case-insensitively) in the post-processed prediction."""
    if isinstance(outputs, str):
        outputs = [outputs]
    if not outputs:
        raise ValueError("a sample needs at least one expected value")
    pred = postprocess_pred(prediction).lower()
    return sum(1.0 for ref in outputs if ref.lower() in pred) / len(outputs)


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's `string_match_all` as a fraction: the mean over samples of the fraction of expected values found."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} samples")
    if not predictions:
        raise ValueError("no predictions to score")
    return sum(sample_score(p, r) for p, r in zip(predictions, references)) / len(predictions)
