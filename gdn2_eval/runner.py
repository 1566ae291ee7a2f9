"""`gdn2-eval run`: evaluate one model on a suite or task list through lm-eval, one task at a time, into a results
store that survives interruption (see `results_store`)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import quiet
from .data import MissingDataset, local_datasets
from .distributed import close_process_group, is_main_process
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
    # RULER tasks: context lengths (default: the suite's grid, else 4K), samples per length, seed, essay haystack
    lengths: list[int] | None = None
    samples: int | None = None
    seed: int | None = None
    haystack: Path | None = None
    ruler_jsonl: Path | None = None  # evaluate a file made by NVIDIA's RULER scripts instead of generating

    @property
    def label(self) -> str:
        return self.name or Path(self.model).stem

    def out_dir(self) -> Path:
        return self.out or Path("results") / "runs" / self.label / self.suite


@dataclass
class Unit:
    """One resumable piece of a run: an lm-eval task, and for RULER tasks one context length."""

    name: str  # file stem under tasks/ and samples/
    task: str  # lm-eval task name
    label: str  # task name in summary.csv
    context_length: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # passed to the task (RULER generation options)
    kind: str = "task"  # "task", "ruler" (generated or read from a RULER .jsonl) or "recall" (needs the tokenizer)


RULER_TAG = "ruler_niah"  # a task with this tag (built-in or in --tasks-dir) takes the RULER generation options


def plan_units(spec: RunSpec, manager=None) -> list[Unit]:
    """The units of a run, in order: RULER tasks (the built-in ones and any task tagged `ruler_niah`) expand to one
    unit per context length and receive the generation options."""
    from .ruler import DEFAULT_NUM_SAMPLES, DEFAULT_SEED, TASKS, read_jsonl
    from .suites import RECALL_TASKS, RULER_GRIDS

    ruler_meta = {
        "tokenizer": str(spec.tokenizer or spec.model),
        "num_samples": spec.samples or DEFAULT_NUM_SAMPLES,
        "seed": DEFAULT_SEED if spec.seed is None else spec.seed,
        "haystack": None if spec.haystack is None else str(spec.haystack),
    }
    if spec.ruler_jsonl is not None:
        docs = read_jsonl(spec.ruler_jsonl)
        task, length = docs[0].get("task") or "ruler_jsonl", docs[0].get("max_length")
        return [Unit(f"{task}@{length}", "ruler_jsonl", task, length, {"jsonl": str(spec.ruler_jsonl)}, "ruler")]
    grid = RULER_GRIDS.get(spec.suite, {})
    units = []
    for task in spec.tasks:
        entry = manager.task_index.get(task) if manager is not None else None
        if task not in TASKS and RULER_TAG not in (getattr(entry, "tags", None) or ()):
            if task in RECALL_TASKS:  # recall tasks truncate their contexts under the model's tokenizer
                units.append(Unit(task, task, task, None, {"tokenizer": ruler_meta["tokenizer"]}, "recall"))
            else:
                units.append(Unit(task, task, task))
            continue
        for length in spec.lengths or grid.get(task) or [4096]:
            meta = {**ruler_meta, "max_seq_lengths": [length]}
            units.append(Unit(f"{task}@{length}", task, task, length, meta, "ruler"))
    return units


def check_ruler_inputs(units: list[Unit], tokenizer) -> None:
    """Generate one sample per RULER unit before anything is written: a length too short for the template, a
    tokenizer that cannot encode it or a haystack file of unknown format fails here, with its own message."""
    from .ruler import TASKS, generate_samples

    for unit in units:
        meta = unit.metadata
        if unit.kind == "ruler" and unit.task in TASKS:
            generate_samples(unit.task, unit.context_length, 1, tokenizer, seed=meta["seed"], haystack=meta["haystack"])


def builtin_tasks_dir() -> Path:
    from . import tasks

    return Path(tasks.__file__).parent


class _BuiltinShadowing(logging.Filter):
    """Drops lm-eval's warning that a task of ours overrides its task of the same name: the project's RULER and
    recall tasks replace lm-eval's on purpose (README). A user's `--tasks-dir` shadowing a task still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = str(builtin_tasks_dir())
        args = record.args if isinstance(record.args, tuple) else ()
        return not ("overrides existing task" in str(record.msg) and len(args) > 1 and str(args[1]).startswith(ours))


_SHADOWING_FILTER = _BuiltinShadowing()


def task_manager(tasks_dir: Path | None, metadata: dict[str, Any] | None = None, tasks: list[str] | None = None):
    """lm-eval's task manager over its tasks, the project's (`tasks/`) and `tasks_dir`. With `tasks`, its index
    holds only what those tasks need (`gdn2_eval.task_index`: seconds less per run); None: the full index."""
    from lm_eval.tasks import TaskManager

    from .task_index import restricted_manager

    if _SHADOWING_FILTER not in logging.getLogger("lm_eval.tasks._index").filters:
        logging.getLogger("lm_eval.tasks._index").addFilter(_SHADOWING_FILTER)
    include = [str(builtin_tasks_dir())]
    if tasks_dir is not None:
        if not Path(tasks_dir).is_dir():
            raise UserError(f"--tasks-dir {tasks_dir} is not a directory")
        include.append(str(tasks_dir))
    if tasks is not None:
        manager = restricted_manager(include, tasks, metadata)
        if manager is not None:
            return manager
    return TaskManager(include_path=include, metadata=metadata)


def with_metadata(manager, metadata: dict[str, Any]):
    """`manager` with other metadata for the tasks it loads, sharing its task index: building an index reads every
    lm-eval task YAML (over 10 s), and a RULER grid needs one set of metadata per length."""
    derived = copy.copy(manager)
    derived.metadata = metadata
    if hasattr(manager, "_factory"):  # lm-eval >= 0.4.10 hands metadata to tasks through its factory
        derived._factory = type(manager._factory)(meta=metadata)
    return derived


def check_tasks(names: list[str], manager) -> None:
    from .task_index import known_names

    found = set(manager.all_tasks)
    unknown = [t for t in names if t not in found]
    if unknown:
        known = found | (known_names(manager) or set())
        ours = sorted(t for t in known if not t.startswith("_"))
        hint = "; see `lm_eval ls tasks` for lm-eval's" if len(ours) > 40 else f"; known: {', '.join(ours)}"
        raise UserError(f"unknown task(s) {', '.join(unknown)}{hint}")


def _check_out_dir(out: Path, model_path: str, force: bool, clear: bool = True) -> None:
    """Refuse (unless `force`) a directory that holds another model's results; with `force`, clear them (when
    `clear`: the other ranks of a distributed run only check)."""
    existing = out / "results.json"
    if not existing.is_file():
        return
    old = read_json(existing).get("model", {})
    path = Path(model_path)
    same = old.get("path") == str(path.resolve()) and old.get("hash") == (file_hash(path) if path.exists() else None)
    if not same and not force:
        raise UserError(f"{out} holds results of another model ({old.get('path')}); pass --force to replace them")
    if not same and clear:
        for sub in ("tasks", "samples", "cache"):
            shutil.rmtree(out / sub, ignore_errors=True)
        existing.unlink()
        (out / "summary.csv").unlink(missing_ok=True)


def run(spec: RunSpec, progress=None) -> Path:
    """Evaluate `spec.model` on `spec.tasks`; returns the output directory."""
    try:
        return _evaluate(spec, progress)
    finally:
        close_process_group()


def _evaluate(spec: RunSpec, progress) -> Path:
    import lm_eval
    import lm_eval.evaluator

    from .lm_backend import GDN2LM, NonFiniteLogits

    # lm-eval records `git describe` of the working directory (printing git's error outside a checkout); the
    # revision that identifies the harness is gdn2-eval's own
    revision = git_revision()  # once per run (two git processes)
    if hasattr(lm_eval.evaluator, "get_git_commit_hash"):
        lm_eval.evaluator.get_git_commit_hash = lambda: revision
    # lm-eval collects torch's environment report (about a dozen subprocesses, over a second) on every call; the run
    # records its own provenance (`versions()`) once, in results.json
    if hasattr(lm_eval.evaluator, "add_env_info"):
        lm_eval.evaluator.add_env_info = _env_info
    quiet.lm_eval_bars()

    manager = task_manager(spec.tasks_dir, tasks=spec.tasks)
    check_tasks(spec.tasks, manager)
    units = plan_units(spec, manager)
    out = spec.out_dir()
    main = is_main_process()  # in a distributed run only rank 0 writes
    _check_out_dir(out, spec.model, spec.force, clear=main)
    lm = GDN2LM(
        spec.model,
        arch=spec.arch,
        tokenizer=spec.tokenizer,
        dtype=spec.dtype,
        device=spec.device,
        batch_size=spec.batch_size,
        **spec.model_options,
    )
    check_ruler_inputs(units, lm.tokenizer)
    # a RULER length past an attention model's positional limit fails before anything runs (nothing is truncated)
    lm.check_fits([u.context_length for u in units if u.kind == "ruler"], "RULER prompt",
                  advice=f"choose --lengths up to {lm.position_limit}")
    model_desc = describe_model(lm.model, spec.model)
    model_desc["backend_path"] = lm.path_record()  # which path the model takes through the backend, and why
    protocol = {**lm.protocol(), "limit": spec.limit, "batch_size": lm.batch_size, "suite": spec.suite}
    ruler = [u for u in units if u.kind == "ruler"]
    if ruler:
        protocol["ruler"] = _ruler_protocol(spec, ruler[0].metadata)
    if any(u.kind == "recall" for u in units):
        from .tasks.recall.utils import ANSWER_TOKENS, CONTEXT_TOKENS

        protocol["recall"] = {"tokenizer": str(spec.tokenizer or spec.model), "context_tokens": CONTEXT_TOKENS,
                              "answer_tokens": ANSWER_TOKENS}
    fingerprint = {"model_hash": model_desc["hash"], **protocol}
    cache = out / "cache" / "requests"
    if main and not spec.resume:
        shutil.rmtree(out / "cache", ignore_errors=True)
    if main:
        cache.parent.mkdir(parents=True, exist_ok=True)
    if lm.world_size > 1:
        lm.request_cache = str(cache)  # the backend caches each rank's part of its balanced calls
        lm.barrier()

    managers: dict[str, Any] = {}
    for n, unit in enumerate(units):
        task = unit.task
        if progress:
            progress(unit.name, "start", n, len(units))
        done = task_file(out, unit.name)
        if spec.resume and done.is_file() and read_json(done).get("fingerprint") == fingerprint:
            if progress:
                progress(unit.name, "skipped (finished earlier)", n, len(units))
            continue
        if unit.metadata:  # a task manager per set of generation options (lm-eval passes them to the task)
            key = json.dumps(unit.metadata, sort_keys=True)
            if key not in managers:
                managers[key] = with_metadata(manager, unit.metadata)
            unit_manager = managers[key]
        else:
            unit_manager = manager
        lm.reset_token_stats()
        try:
            with local_datasets(spec.data_dir):
                res = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[task],
                    limit=spec.limit,
                    log_samples=True,
                    task_manager=unit_manager,
                    use_cache=None if lm.world_size > 1 else str(cache),
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
        rename = {task: unit.label}  # e.g. ruler_jsonl -> the RULER task the file holds
        record = {
            "task": unit.label,
            "unit": unit.name,
            "fingerprint": fingerprint,
            "results": {rename.get(t, t): m for t, m in res["results"].items()},
            "n_samples": {rename.get(t, t): v.get("effective") for t, v in res.get("n-samples", {}).items()},
            "context_length": {
                rename.get(t, t): unit.context_length or (c.get("metadata") or {}).get("context_length")
                for t, c in res["configs"].items()
            },
            "configs": res["configs"],
            "tokens": dict(lm.token_stats),  # prompt tokens, and what prefix sharing left to run (prefill_tokens)
            "finished": datetime.now(timezone.utc).isoformat(),
        }
        for t, samples in res.get("samples", {}).items():
            write_samples(out / "samples" / f"{unit.name if t == task else t}.jsonl", samples)
        write_json(done, record)  # the commit point of this unit
        _write_run_files(out, spec, model_desc, protocol, revision)
        if progress:
            progress(unit.name, "done", n, len(units))
    if main:
        _write_run_files(out, spec, model_desc, protocol, revision)
    return out


def _env_info(storage: dict[str, Any]) -> None:
    """What lm-eval's `add_env_info` adds to its results, without torch's environment report (see results.json)."""
    v = versions()
    storage.update({"pretty_env_info": "see versions in gdn2-eval's results.json", "upper_git_hash": None,
                    "transformers_version": v.get("transformers"), "lm_eval_version": v.get("lm_eval")})


def _write_run_files(out: Path, spec: RunSpec, model_desc: dict, protocol: dict, revision: str | None) -> None:
    """results.json and summary.csv from every finished unit in the directory."""
    units = [read_json(f) for f in sorted((out / "tasks").glob("*.json"))]
    results = {_result_key(u, t): m for u in units for t, m in u["results"].items()}
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
            "git_revision": revision,
            "seeds": SEEDS,
            "results": results,
            "n_samples": {_result_key(u, t): n for u in units for t, n in u["n_samples"].items()},
            # per task: tokens of its prompts, and tokens run through the model (fewer where prefixes are shared)
            "tokens": {_result_key(u, t): u["tokens"] for u in units if u.get("tokens") for t in u["results"]},
        },
    )
    write_summary(out / "summary.csv", rows)


def _result_key(unit: dict, task: str) -> str:
    """Key of a task's results in results.json: the task, with its context length for RULER units."""
    length = unit.get("context_length", {}).get(task)
    return f"{task}@{length}" if "@" in unit.get("unit", "") and length else task


def _ruler_protocol(spec: RunSpec, meta: dict[str, Any]) -> dict[str, Any]:
    """The RULER generation options of a run, with the identity of the essay haystack used."""
    from .ruler import resolve_haystack

    if spec.ruler_jsonl is not None:
        return {"jsonl": str(spec.ruler_jsonl), "sha256": file_hash(spec.ruler_jsonl)}
    haystack = resolve_haystack("essay", meta["haystack"])
    return {
        "samples": meta["num_samples"],
        "seed": meta["seed"],
        "tokenizer": meta["tokenizer"],
        "essay_haystack": haystack.identity(),
        "tokens_to_generate": 128,
    }
