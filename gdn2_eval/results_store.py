"""The results store of one run directory.

OUT/results.json     lm-eval's results per task plus provenance (schema_version, model, protocol, versions)
OUT/summary.csv      model,family,suite,task,metric,context_length,value,n_samples (accuracies in percent)
OUT/tasks/T.json     one finished unit (a task), written atomically; `--resume` skips these
OUT/samples/T.jsonl  per-sample logs
OUT/cache/           lm-eval's request cache (a killed task resumes request by request)
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .suites import PERCENT_METRICS

SCHEMA_VERSION = 1
SUMMARY_COLUMNS = ["model", "family", "suite", "task", "metric", "context_length", "value", "n_samples"]


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary sibling, then rename: readers never see half a file, a kill leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, default=str, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def task_file(out: Path, task: str) -> Path:
    return out / "tasks" / f"{task}.json"


def summary_rows(model: str, family: str, suite: str, unit: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of summary.csv for one finished task unit (its lm-eval results, sample counts, metadata)."""
    rows = []
    for task, metrics in unit["results"].items():
        n = unit.get("n_samples", {}).get(task)
        ctx = unit.get("context_length", {}).get(task)
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if metric.endswith("_stderr") or metric in ("alias", "sample_len") or not isinstance(value, (int, float)):
                continue
            value = float(value) * (100.0 if metric in PERCENT_METRICS else 1.0)
            rows.append(
                dict(
                    model=model,
                    family=family,
                    suite=suite,
                    task=task,
                    metric=metric,
                    context_length="" if ctx is None else ctx,
                    value=round(value, 6),
                    n_samples=n,
                )
            )
    return rows


def write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def write_samples(path: Path, samples: list[dict[str, Any]]) -> None:
    atomic_write(path, "".join(json.dumps(s, default=str) + "\n" for s in samples))
