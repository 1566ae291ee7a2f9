"""RULER's JSON-lines format: writing our samples, reading files made by NVIDIA's RULER scripts.

RULER (`scripts/data/prepare.py`) writes one JSON object a line with ``index``, ``input`` (the prompt without the
answer prefix), ``outputs`` (expected values), ``length`` (prompt tokens + tokens to generate),
``length_w_model_temp`` and ``answer_prefix``; the model's prompt is ``input + answer_prefix``. Our samples add
``task``, ``max_length``, ``depth``, ``keys``, ``query``, ``needles`` and ``haystack``; RULER's own tools ignore them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import RulerError
from .registry import TASKS

REQUIRED_FIELDS = ("index", "input", "outputs", "length", "answer_prefix")


def _check(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise RulerError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise RulerError(f"{where}: missing field {name!r} (RULER's records have {', '.join(REQUIRED_FIELDS)})")
    if isinstance(record["index"], bool) or not isinstance(record["index"], int):
        raise RulerError(f"{where}: field 'index' must be an integer")
    for name in ("input", "answer_prefix"):
        if not isinstance(record[name], str):
            raise RulerError(f"{where}: field {name!r} must be a string")
    outputs = record["outputs"]
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o for o in outputs):
        raise RulerError(f"{where}: field 'outputs' must be a non-empty list of non-empty strings")
    length = record["length"]
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise RulerError(f"{where}: field 'length' must be a positive integer")
    max_length = record.get("max_length")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0):
        raise RulerError(f"{where}: field 'max_length' must be a positive integer")


def write_jsonl(samples: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write samples as RULER JSON lines (UTF-8, one object a line). The samples are checked first and the file is
    replaced atomically, so a bad sample writes nothing."""
    path = Path(path)
    lines = []
    for i, record in enumerate(samples):
        _check(record, f"sample {i}")
        lines.append(json.dumps(record, ensure_ascii=False))
    from ..results_store import atomic_write  # (results_store -> suites -> ruler: imported here, not on top)

    atomic_write(path, "".join(line + "\n" for line in lines))
    return path


def _infer_from_path(path: Path) -> tuple[str | None, int | None]:
    """RULER writes `<root>/<L>/data/<task>/validation.jsonl`: the task and target length from the path, if there."""
    task = next((p for p in (path.parent.name, path.stem) if p in TASKS), None)
    length = next((int(p) for p in reversed(path.parent.parts) if p.isdigit() and int(p) > 0), None)
    return task, length


def read_jsonl(path: str | Path, task: str | None = None, max_length: int | None = None) -> list[dict[str, Any]]:
    """Read a RULER jsonl file (ours or one made by NVIDIA's RULER scripts), checking every line: a missing or
    malformed field is one `RulerError` naming the line and the field.

    Every record gets ``task`` and ``max_length`` when it lacks them: from the arguments, else from RULER's
    directory layout (``.../<L>/data/<task>/validation.jsonl``), else None."""
    path = Path(path)
    if not path.is_file():
        raise RulerError(f"RULER jsonl {path} does not exist")
    path_task, path_length = _infer_from_path(path)
    task = task or path_task
    max_length = max_length or path_length
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RulerError(f"RULER jsonl {path} is not UTF-8 text") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RulerError(f"{where}: not valid JSON ({e.msg})") from None
        _check(record, where)
        record.setdefault("task", task)
        if record.get("max_length") is None:
            record["max_length"] = max_length
        records.append(record)
    if not records:
        raise RulerError(f"RULER jsonl {path} holds no samples")
    return records
