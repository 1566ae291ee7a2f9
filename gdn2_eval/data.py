"""Offline datasets: `gdn2-eval data fetch` saves the splits each task reads as JSON lines under a folder with a
manifest; `--data-dir` makes every `datasets.load_dataset(path, name)` call of lm-eval read those files instead."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import datasets

MANIFEST = "manifest.json"


class MissingDataset(LookupError):
    def __init__(self, path: str, name: str | None, data_dir: Path) -> None:
        super().__init__(f"dataset {path}{'/' + name if name else ''} is not in {data_dir}")
        self.path, self.name = path, name


def _key(path: str, name: str | None) -> str:
    return f"{path}::{name or ''}"


def read_manifest(data_dir: Path) -> dict[str, dict[str, str]]:
    file = data_dir / MANIFEST
    return json.loads(file.read_text()) if file.is_file() else {}


@contextlib.contextmanager
def local_datasets(data_dir: Path | None) -> Iterator[None]:
    """Within this context, `datasets.load_dataset(path, name, ...)` reads the local copy under `data_dir`."""
    if data_dir is None:
        yield
        return
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    real = datasets.load_dataset

    def load_local(path=None, name=None, *args, **kwargs):
        if path in ("json", "csv", "parquet", "text", "arrow"):  # a task that already reads files
            return real(path, name, *args, **kwargs)
        splits = manifest.get(_key(path, name))
        if splits is None:
            raise MissingDataset(path, name, data_dir)
        files = {split: str(data_dir / rel) for split, rel in splits.items()}
        return real("json", data_files=files)

    datasets.load_dataset = load_local
    try:
        yield
    finally:
        datasets.load_dataset = real


def save_local_copy(path: str, name: str | None, dataset: datasets.DatasetDict, data_dir: Path) -> list[str]:
    """Write every split as JSON lines and record it in the manifest. Returns the files written."""
    folder = Path(re.sub(r"[^A-Za-z0-9_.-]+", "_", path)) / (name or "default")
    (data_dir / folder).mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(data_dir)
    splits, written = {}, []
    for split, ds in dataset.items():
        rel = folder / f"{split}.jsonl"
        ds.to_json(str(data_dir / rel), lines=True, force_ascii=False)
        splits[split] = str(rel)
        written.append(str(rel))
    manifest[_key(path, name)] = splits
    tmp = data_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(data_dir / MANIFEST)
    return written
