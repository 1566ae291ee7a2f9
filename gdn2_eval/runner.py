"""`gdn2-eval run`: evaluate one model on a suite or task list through lm-eval, one task at a time, into a results
store that survives interruption (see `results_store`)."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .data import MissingDataset, local_datasets
from .errors import UserError
from .provenance import describe_model, file_hash, git_revision, versions
from .results_store import (
    SCHEMA_VERSION,
    read_json,
    summary_rows,
    task_file,
    write_json,
    write_samples,
    write_summary,
)

SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


@dataclass
class RunSpec:
    model: str
    tasks: list[str]
    suite: str = "custom"
    arch: str | None = None
    tokenizer: str | None = None
    tasks_dir: Path | None = None
    limit: int | None = None
    batch_size: str = "16"
    device: str = "auto"
    dtype: str = "auto"
    data_dir: Path | None = None
    out: Path | None = None
    resume: bool = False
    force: bool = False
    name: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)  # backend options: ppl_protocol, chunk_tokens, ...

    @property
    def label(self) -> str:
        return self.name or Path(self.model).stem

    def out_dir(self) -> Path:
        return self.out or Path("results") / "runs" / self.label / self.suite


def builtin_tasks_dir() -> Path:
    from . import tasks

    return Path(tasks.__file__).parent


def task_manager(tasks_dir: Path | None):
    from lm_eval.tasks import TaskManager

    include = [str(builtin_tasks_dir())]
    if tasks_dir is not None:
        if not Path(tasks_dir).is_dir():
            raise UserError(f"--tasks-dir {tasks_dir} is not a directory")
        include.append(str(tasks_dir))
    return TaskManager(include_path=include)


def check_tasks(names: list[str], manager) -> None:
    known = set(manager.all_tasks)
    unknown = [t for t in names if t not in known]
    if unknown:
        ours = sorted(t for t in known if not t.startswith("_"))
        hint = "; see `lm_eval ls tasks` for lm-eval's" if len(ours) > 40 else f"; known: {', '.join(ours)}"
        raise UserError(f"unknown task(s) {', '.join(unknown)}{hint}")


def _check_out_dir(out: Path, model_path: str, force: bool) -> None:
    """Refuse (unless `force`) a directory that holds another model's results; with `force`, clear them."""
    existing = out / "results.json"
    if not existing.is_file():
        return
    old = read_json(existing).get("model", {})
    path = Path(model_path)
    same = old.get("path") == str(path.resolve()) and old.get("hash") == (file_hash(path) if path.exists() else None)
    if not same and not force:
        raise UserError(f"{out} holds results of another model ({old.get('path')}); pass --force to replace them")
    if not same:
        for sub in ("tasks", "samples", "cache"):
            shutil.rmtree(out / sub, ignore_errors=True)
        existing.unlink()
        (out / "summary.csv").unlink(missing_ok=True)


def run(spec: RunSpec, progress=None) -> Path:
    """Evaluate `spec.model` on `spec.tasks`; returns the output directory."""
    import lm_eval

    from .lm_backend import GDN2LM, NonFiniteLogits

    manager = task_manager(spec.tasks_dir)
    check_tasks(spec.tasks, manager)
    out = spec.out_dir()
    _check_out_dir(out, spec.model, spec.force)
    lm = GDN2LM(
        spec.model,
        arch=spec.arch,
        tokenizer=spec.tokenizer,
        dtype=spec.dtype,
        device=spec.device,
        batch_size=spec.batch_size,
        **spec.model_options,
    )
    model_desc = describe_model(lm.model, spec.model)
    protocol = {**lm.protocol(), "limit": spec.limit, "batch_size": lm.batch_size, "suite": spec.suite}
    fingerprint = {"model_hash": model_desc["hash"], **protocol}
    cache = out / "cache" / "requests"
    if not spec.resume:
        shutil.rmtree(out / "cache", ignore_errors=True)
    cache.parent.mkdir(parents=True, exist_ok=True)

    for task in spec.tasks:
        if progress:
            progress(task, "start")
        done = task_file(out, task)
        if spec.resume and done.is_file() and read_json(done).get("fingerprint") == fingerprint:
            if progress:
                progress(task, "skipped (finished earlier)")
            continue
        try:
            with local_datasets(spec.data_dir):
                res = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[task],
                    limit=spec.limit,
                    log_samples=True,
                    task_manager=manager,
                    use_cache=str(cache),
                    bootstrap_iters=0,
                    **SEEDS,
                )
        except MissingDataset as e:
            raise UserError(
                f"task {task}: {e}; make a local copy on a machine with internet: "
                f"gdn2-eval data fetch --tasks {task} --to {spec.data_dir}"
            ) from None
        except NonFiniteLogits as e:
            raise UserError(f"task {task}: {e}") from None
        if res is None:  # non-zero ranks under a distributed launch
            continue
        unit = {
            "task": task,
            "fingerprint": fingerprint,
            "results": res["results"],
            "n_samples": {t: v.get("effective") for t, v in res.get("n-samples", {}).items()},
            "context_length": {t: (c.get("metadata") or {}).get("context_length") for t, c in res["configs"].items()},
            "configs": res["configs"],
            "finished": datetime.now(timezone.utc).isoformat(),
        }
        for t, samples in res.get("samples", {}).items():
            write_samples(out / "samples" / f"{t}.jsonl", samples)
        write_json(done, unit)  # the commit point of this unit
        _write_run_files(out, spec, model_desc, protocol)
        if progress:
            progress(task, "done")
    _write_run_files(out, spec, model_desc, protocol)
    return out


def _write_run_files(out: Path, spec: RunSpec, model_desc: dict, protocol: dict) -> None:
    """results.json and summary.csv from every finished unit in the directory."""
    units = [read_json(f) for f in sorted((out / "tasks").glob("*.json"))]
    results = {t: m for u in units for t, m in u["results"].items()}
    rows = [r for u in units for r in summary_rows(spec.label, model_desc["family"], u["fingerprint"]["suite"], u)]
    write_json(
        out / "results.json",
        {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(),
            "model": model_desc,
            "label": spec.label,
            "suite": spec.suite,
            "protocol": protocol,
            "spec": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()},
            "versions": versions(),
            "git_revision": git_revision(),
            "seeds": SEEDS,
            "results": results,
            "n_samples": {t: n for u in units for t, n in u["n_samples"].items()},
        },
    )
    write_summary(out / "summary.csv", rows)
