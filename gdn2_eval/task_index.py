"""A task index built from what a run needs.

lm-eval's `TaskManager` reads every YAML file of its task folders (over 14,000 loads, about 13 s on two cores)
before it can load one task. A run needs only a few: `task_manager(tasks_dir, tasks=[...])` indexes the project's
own task folders and the user's `--tasks-dir` (both small), and of lm-eval's folders only the files that define the
requested tasks and what they depend on (a group's members, a tag's tasks). Which files those are comes from a map
of lm-eval's task index (name -> kind, file, tags, group members, files that mention the name), built once and
cached on disk in ``$GDN2_EVAL_CACHE`` (default ``~/.cache/gdn2-eval``), keyed by lm-eval's version and the location
of its tasks. A run of the project's own tasks (RULER, recall) reads no lm-eval task file at all.

The entries are made by lm-eval's own `TaskIndex.process_cfg` from the same files in the same order as its full
index, and they are checked against the map; on any difference (or an lm-eval without this layout) the full
`TaskManager` is used, so the tasks found and their configs are those of the full index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CACHE_ENV = "GDN2_EVAL_CACHE"
FORMAT = 1


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gdn2-eval")


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def lm_eval_version() -> str:
    try:
        return importlib_metadata.version("lm_eval")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - lm-eval installed without metadata
        import lm_eval

        return str(getattr(lm_eval, "__version__", "unknown"))


def cache_file() -> Path:
    root = lm_eval_tasks_dir()
    key = hashlib.sha256(f"{FORMAT}|{lm_eval_version()}|{root.resolve()}".encode()).hexdigest()[:16]
    return cache_dir() / f"lm_eval_task_index-{lm_eval_version()}-{key}.json"


def _yaml_files(root: Path) -> list[Path]:
    from lm_eval.tasks._index import TaskIndex

    return list(TaskIndex._iter_yaml_files(root))


def _load_cfg(path: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=False, recursive=True)


def group_members(task_field: Any) -> list[str]:
    """Names a group's `task:` list refers to (strings, and the task/group names of dict items, recursively)."""
    out: list[str] = []
    items = task_field if isinstance(task_field, list) else [task_field]
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for key in ("task", "group"):
                value = item.get(key)
                if isinstance(value, str):
                    out.append(value)
                elif isinstance(value, list):
                    out += group_members(value)
    return out


def _mentions(cfg: dict[str, Any]) -> set[str]:
    names = set()
    for key in ("task", "group"):
        if isinstance(cfg.get(key), str):
            names.add(cfg[key])
    tags = cfg.get("tag")
    names.update([tags] if isinstance(tags, str) else (tags or []))
    return names


def _describe(entry, members: list[str]) -> dict[str, Any]:
    return {"kind": entry.kind.name, "path": None if entry.yaml_path is None else str(entry.yaml_path),
            "tags": sorted(entry.tags), "members": members}


def build_map(root: Path) -> dict[str, Any]:
    """lm-eval's full index of `root`, as its `TaskIndex.build` makes it, plus the files that mention each name."""
    from lm_eval.tasks._index import TaskIndex

    index: dict = {}
    files: dict[str, list[str]] = {}
    for path in _yaml_files(root):
        try:
            cfg = _load_cfg(path)
            TaskIndex.process_cfg(cfg, path, index)
        except Exception:  # lm-eval skips a file it cannot read the same way
            continue
        for name in _mentions(cfg):
            files.setdefault(name, []).append(str(path))
    entries = {}
    for name, entry in index.items():
        members = group_members((entry.cfg or {}).get("task")) if entry.kind.name == "GROUP" else []
        entries[name] = {**_describe(entry, members), "files": files.get(name, [])}
    return {"format": FORMAT, "lm_eval": lm_eval_version(), "root": str(root), "entries": entries}


def lm_eval_map(rebuild: bool = False) -> dict[str, dict[str, Any]]:
    """The map of lm-eval's task index, from the disk cache (built and written when missing or stale)."""
    file = cache_file()
    root = lm_eval_tasks_dir()
    if not rebuild and file.is_file():
        try:
            data = json.loads(file.read_text())
            if data.get("format") == FORMAT and data.get("lm_eval") == lm_eval_version() and data["root"] == str(root):
                return data["entries"]
        except (OSError, ValueError, KeyError):
            pass
    data = build_map(root)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data))
        tmp.replace(file)
    except OSError as e:  # a read-only home: the map is still used for this process
        log.debug("cannot write the task index cache %s: %s", file, e)
    return data["entries"]


def _deps(kind: str, tags, cfg_task) -> list[str]:
    if kind == "TAG":
        return sorted(tags)
    if kind == "GROUP":
        return group_members(cfg_task)
    return []


def _set_index(manager, index: dict) -> None:
    from lm_eval.tasks._index import Kind

    manager._index = index
    kinds: dict = {}
    for name, entry in index.items():
        kinds.setdefault(entry.kind, []).append(name)
    manager._all_tasks = sorted(index)
    manager._all_subtasks = sorted(kinds.get(Kind.TASK, []) + kinds.get(Kind.PY_TASK, []))
    manager._all_groups = sorted(kinds.get(Kind.GROUP, []))
    manager._all_tags = sorted(kinds.get(Kind.TAG, []))


def restricted_manager(include: list[str], tasks: list[str], metadata: dict[str, Any] | None = None):
    """A `TaskManager` whose index holds the tasks of `include` (all of them) and, of lm-eval's, those that
    `tasks` need; None when this lm-eval's manager does not have the expected layout (use the full one)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex

    manager = TaskManager(include_path=include, include_defaults=False, metadata=metadata)
    if not all(hasattr(manager, a) for a in ("_index", "_all_tasks", "_all_subtasks", "_all_groups", "_all_tags")):
        return None
    local = manager._index
    lm_map: dict[str, dict[str, Any]] | None = None
    needed, todo, files = set(), list(tasks), set()
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in local:
            entry = local[name]
            todo += _deps(entry.kind.name, entry.tags, (entry.cfg or {}).get("task"))
            continue
        if lm_map is None:
            lm_map = lm_eval_map()
        info = lm_map.get(name)
        if info is None:
            continue  # unknown: `check_tasks` names it
        files.update(info["files"])
        todo += info["tags"] if info["kind"] == "TAG" else info["members"]
    known = set(local) | set(lm_map or {})
    if lm_map is None:
        manager.known_names = None  # nothing outside the local folders was needed
        return manager
    part: dict = {}
    for path in sorted(map(Path, files), key=lambda p: p.as_posix()):
        try:
            TaskIndex.process_cfg(_load_cfg(path), path, part)
        except Exception:
            continue
    for name in needed:  # the same entries as lm-eval's full index, or the full index is used
        info = lm_map.get(name)
        if name in local or info is None:
            continue
        entry = part.get(name)
        if entry is None or entry.kind.name != info["kind"] or sorted(entry.tags) != info["tags"] or (
                (None if entry.yaml_path is None else str(entry.yaml_path)) != info["path"]):
            log.debug("restricted task index differs from lm-eval's for %s; using the full index", name)
            return None
    index = dict(part)
    index.update(local)  # the project's and the user's folders override lm-eval's, as in the full index
    _set_index(manager, index)
    manager.known_names = known
    return manager


def known_names(manager) -> set[str] | None:
    """Every name the full index would know, where the manager was restricted and found out (else None)."""
    return getattr(manager, "known_names", None)
