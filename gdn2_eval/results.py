"""Results as one tidy pandas DataFrame: your run directories next to the paper's reported numbers.

    from gdn2_eval import results
    df = results.load("results/runs/my-model/table2", "results/runs/my-model/ruler")   # + the paper's baselines
    df = results.load("results/runs/my-model", baselines="none")                      # a folder of run directories

Columns (`COLUMNS`): run, model, family, suite, task, metric, context_length, value, n_samples, source.

* Runs (`source == "run"`) come from a run directory of `gdn2-eval run`: `results.json` (schema_version 1: model
  name/family/gate_ablation, ...) and `summary.csv` (accuracies in percent, perplexities raw). `run` is the directory
  as given, `model` its label (with ` [scalar_erase]` / ` [scalar_write]` appended for a Table 5 gate ablation, and the
  hash prefix when two different checkpoints share a label). Tolerated: a RULER metric named by its length (lm-eval's
  RULER tasks report `"4096": score`) becomes `string_match_all` at that context length, in percent; lm-eval's `-1`
  placeholders for lengths not evaluated are dropped.
* Reported baselines (`source == "reported"`) come from `results/paper/gdn2_paper_results.json`, one run per table
  (`run == "paper:table2"`, ...), with the paper's metric names mapped to task/metric/context length by the table
  layouts of `gdn2_eval.tables`; Avg. columns are tasks `commonsense_avg` (metric acc) and `recall_avg` (contains).

`df.attrs["runs"]` maps each run to what its results.json says about the model (label, family, layout,
gate_ablation, hash, path). `niah_samples(...)` reads the per-sample RULER logs for the depth x length heatmap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError
from .results_store import SCHEMA_VERSION, SUMMARY_COLUMNS

COLUMNS = ["run", *SUMMARY_COLUMNS, "source"]
PAPER_JSON_NAME = "gdn2_paper_results.json"
BASELINES = ("paper", "none")
REPO_ROOT = Path(__file__).resolve().parent.parent


def paper_json_path() -> Path:
    """The reported numbers: $GDN2_PAPER_RESULTS, else `results/paper/` of the checkout, else the installed copy
    (`gdn2_eval.paper_results`, which pyproject.toml maps to results/paper/)."""
    import os

    env = os.environ.get("GDN2_PAPER_RESULTS")
    path = Path(env) if env else REPO_ROOT / "results" / "paper" / PAPER_JSON_NAME
    if not env and not path.is_file():
        from importlib.resources import files

        try:
            path = Path(str(files("gdn2_eval.paper_results") / PAPER_JSON_NAME))
        except ModuleNotFoundError:
            pass
    if not path.is_file():
        raise UserError(f"reported numbers not found at {path}; set GDN2_PAPER_RESULTS to a copy of {PAPER_JSON_NAME}")
    return path


def read_paper(path: Path | None = None) -> dict[str, Any]:
    return json.loads(Path(path or paper_json_path()).read_text())


def reported(path: Path | None = None) -> pd.DataFrame:
    """The paper's rows in the tidy layout (source "reported"); metric names mapped through the table layouts."""
    from .tables import paper_metric_map

    mapping = paper_metric_map()
    rows = []
    for r in read_paper(path)["rows"]:
        key = r["metric"] if r.get("context_length") is None else f"{r['metric']}@{int(r['context_length'])}"
        if (r["table"], key) not in mapping:
            raise UserError(f"{r['table']} metric {key!r} of the reported numbers has no column in gdn2_eval.tables")
        task, metric, ctx = mapping[(r["table"], key)]
        rows.append(dict(run=f"paper:{r['table']}", model=r["model"], family=r["family"], suite=r["table"],
                         task=task, metric=metric, context_length=ctx, value=float(r["value"]), n_samples=None,
                         source="reported"))
    return _typed(pd.DataFrame(rows, columns=COLUMNS))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df["context_length"] = pd.array([None if _missing(x) else int(float(x)) for x in df["context_length"]],
                                    dtype="Int64")
    df["n_samples"] = pd.array([None if _missing(x) else int(float(x)) for x in df["n_samples"]], dtype="Int64")
    df["value"] = df["value"].astype(float)
    for col in ("run", "model", "family", "suite", "task", "metric", "source"):
        df[col] = df[col].astype(object)
    return df


def _missing(x: Any) -> bool:
    return x is None or x == "" or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path is a run directory (it has results.json) or a folder holding run directories (searched 3 deep)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such run directory")
        if p.is_file():
            raise UserError(f"{p} is a file; give a run directory (the --out of `gdn2-eval run`)")
        if (p / "results.json").is_file() or (p / "summary.csv").is_file():
            found.append(p)
            continue
        nested = sorted({f.parent for pattern in ("*/results.json", "*/*/results.json", "*/*/*/results.json")
                         for f in p.glob(pattern)})
        if not nested:
            raise UserError(f"{p} holds no results (no results.json); is it the --out of a finished `gdn2-eval run`?")
        found.extend(nested)
    return found


def _run_meta(run: Path) -> dict[str, Any]:
    res_path, csv_path = run / "results.json", run / "summary.csv"
    if not res_path.is_file():
        raise UserError(f"{run} has a summary.csv but no results.json; the run did not finish writing its results")
    try:
        res = json.loads(res_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{res_path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    version = res.get("schema_version") if isinstance(res, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(f"{res_path} has schema_version {version!r}; this gdn2-eval reads version {SCHEMA_VERSION}")
    if not csv_path.is_file():
        raise UserError(f"{run} has results.json but no summary.csv; rerun `gdn2-eval run --resume --out {run}`")
    model = res.get("model") or {}
    label = res.get("label") or model.get("name") or run.name
    ablation = model.get("gate_ablation")
    if ablation not in (None, "none") and ablation not in label:
        label = f"{label} [{ablation}]"
    return {
        "label": label,
        "family": model.get("family") or "other",
        "layout": model.get("layout"),
        "gate_ablation": model.get("gate_ablation"),
        "hash": model.get("hash"),
        "path": model.get("path"),
        "suite": res.get("suite"),
    }


def read_run(run: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One run directory's summary rows (tidy, source "run") and its model metadata."""
    run = Path(run)
    meta = _run_meta(run)
    try:
        summary = pd.read_csv(run / "summary.csv", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    missing = {"task", "metric", "value"} - set(summary.columns)
    if missing:
        raise UserError(f"{run / 'summary.csv'} lacks column(s) {', '.join(sorted(missing))}")
    rows = []
    for r in summary.to_dict("records"):
        try:
            value = float(r["value"])
        except ValueError:
            continue
        metric, ctx = r["metric"], r.get("context_length", "")
        if metric.isdigit():  # lm-eval's RULER: the metric is the length, the score a fraction (-1: not evaluated)
            if value < 0:
                continue
            metric, ctx, value = "string_match_all", metric, value * 100.0
        rows.append(dict(run=str(run), model=meta["label"], family=r.get("family") or meta["family"],
                         suite=r.get("suite") or meta["suite"] or "", task=r["task"], metric=metric,
                         context_length=ctx, value=value, n_samples=r.get("n_samples", ""), source="run"))
    return _typed(pd.DataFrame(rows, columns=COLUMNS)), meta


def load(*paths: str | Path, baselines: str = "paper") -> pd.DataFrame:
    """Runs (run directories or folders of them) and, with baselines="paper", the reported numbers."""
    if baselines not in BASELINES:
        raise UserError(f"unknown baselines {baselines!r}; choose from {', '.join(BASELINES)}")
    frames, runs = [], {}
    labels: dict[str, set] = {}
    for run in find_runs(paths):
        df, meta = read_run(run)
        labels.setdefault(meta["label"], set()).add(meta["hash"])
        frames.append(df)
        runs[str(run)] = meta
    for df in frames:  # two different checkpoints with one label: tell them apart by their hash
        if not df.empty and len(labels[df["model"].iloc[0]]) > 1:
            meta = runs[df["run"].iloc[0]]
            meta["label"] = f"{meta['label']} ({(meta['hash'] or 'no-hash')[:8]})"
            df["model"] = meta["label"]
    if baselines == "paper":
        frames.insert(0, reported())
    frames = [f for f in frames if not f.empty]
    out = pd.concat(frames, ignore_index=True) if frames else _typed(pd.DataFrame(columns=COLUMNS))
    out.attrs["runs"] = runs
    return out


# --- per-sample RULER logs ----------------------------------------------------------------------------------------

NIAH_SAMPLE_COLUMNS = ["run", "model", "family", "task", "context_length", "depth", "score"]


def _sample_score(rec: dict[str, Any], length: int) -> float | None:
    """string_match_all of one sample, in percent: key `string_match_all`, else lm-eval RULER's str(max_length)."""
    for key in ("string_match_all", str(length)):
        v = rec.get(key)
        if isinstance(v, list):
            v = sum(v) / len(v) if v else None
        if isinstance(v, (int, float)) and v >= 0:
            return float(v) * (100.0 if v <= 1.0 else 1.0)
    return None


def niah_samples(*paths: str | Path) -> pd.DataFrame:
    """Per-sample RULER scores from samples/<task>.jsonl of the runs: one row per sample and needle depth.

    Read from each line: `doc.max_length` (tokens; else `doc.length` or the record's `max_length`), `doc.depth`
    (needle insertion depth in percent; a list for several needles: the sample counts once at each of its depths)
    and the score (see `_sample_score`).
    Lines without a length, depth or score are skipped; the task is the sample's, else the file name's.
    """
    rows = []
    for run in find_runs(paths):
        meta = _run_meta(run)
        for f in sorted((run / "samples").glob("*.jsonl")):
            for line in f.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                doc = rec.get("doc") if isinstance(rec.get("doc"), dict) else {}
                length = doc.get("max_length") or doc.get("length") or rec.get("max_length")
                depth = doc.get("depth", rec.get("depth"))
                if not isinstance(length, (int, float)) or depth is None:
                    continue
                score = _sample_score(rec, int(length))
                if score is None:
                    continue
                depths = depth if isinstance(depth, list) else [depth]
                for d in dict.fromkeys(float(x) for x in depths if isinstance(x, (int, float))):
                    # the RULER task from the sample (file stems are units such as niah_single_2@4096)
                    task = doc.get("task") or f.stem.partition("@")[0]
                    rows.append(dict(run=str(run), model=meta["label"], family=meta["family"], task=task,
                                     context_length=int(length), depth=d, score=score))
    return pd.DataFrame(rows, columns=NIAH_SAMPLE_COLUMNS)
