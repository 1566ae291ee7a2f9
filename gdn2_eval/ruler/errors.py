"""The error RULER data generation raises for bad input (a `UserError`: one line, exit code 2 in the CLI)."""

from __future__ import annotations

from ..errors import UserError


class RulerError(UserError):
    """Bad input to the RULER generators: a length below what the template needs, a tokenizer that cannot encode the
    template, an unknown task, a haystack file in an unknown format, a RULER jsonl with missing or malformed fields."""
