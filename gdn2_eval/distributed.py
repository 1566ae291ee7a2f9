"""Data-parallel evaluation over several processes (GPUs or CPU processes), launched by `accelerate launch` (or
`torchrun`; `gdn2-eval run --num-gpus N` starts accelerate for you).

lm-eval shards each task's documents across ranks by index and gathers the results on rank 0. A 128K-token sample
costs a hundred 1K ones, so on top of that the `gdn2` backend re-balances every request call by token count
(`balanced_call`): each rank tokenises its share, the ranks exchange (request, token count), requests that share a
context stay together, and the longest groups go first to the least loaded rank. Each rank computes its part, the
results are exchanged back, and every rank returns exactly the answers for the requests lm-eval gave it, so lm-eval's
own gathering and `summary.csv` are unchanged. A rank that fails makes every rank stop with one message naming it.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch

from .errors import UserError

# A collective waits this long for the slowest rank (one call may hold a whole long-context task).
COLLECTIVE_TIMEOUT = timedelta(hours=12)


def launched_world_size() -> int:
    """How many processes the launcher started (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a distributed launch, or a plain run: the process that writes results and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def make_accelerator():
    """The `Accelerator` of a distributed launch (None for a single process). NVLink multicast is turned off before
    NCCL starts: on shared hosts it can take every GPU of the host out of service."""
    if launched_world_size() <= 1:
        return None
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)])


def close_process_group() -> None:
    """Close a distributed launch's process group before the interpreter exits: a process that exits with gloo's
    worker threads alive aborts ("terminate called without an active exception") and fails the whole launch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def plan(costs: list[int], groups: list[int], world_size: int) -> list[int]:
    """Rank of each request: groups (requests with the same group id) whole, longest group first to the least
    loaded rank (ties to the lowest rank). Deterministic, so every rank computes the same plan."""
    total: dict[int, int] = defaultdict(int)
    for cost, group in zip(costs, groups):
        total[group] += cost
    load = [0] * world_size
    owner: dict[int, int] = {}
    for group in sorted(total, key=lambda g: (-total[g], g)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owner[group] = rank
        load[rank] += total[group]
    return [owner[g] for g in groups]


def _all_gather(obj: Any, world_size: int) -> list[Any]:
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def balanced_call(
    requests: list,
    run_local: Callable[[list], list],
    token_count: Callable[[list], list[int]],
    rank: int,
    world_size: int,
    what: str,
) -> list:
    """Answers for this rank's `requests` (lm-eval `Instance`s), computed wherever the token-balanced plan puts
    them. `run_local(instances)` computes answers on this rank; `token_count(instances)` their costs."""
    from lm_eval.api.instance import Instance

    local = [(r.request_type, r.args, getattr(r, "task_name", None), getattr(r, "doc_id", None)) for r in requests]
    everyone = _all_gather((local, token_count(requests)), world_size)
    flat = [(src, i, item, cost) for src, (items, costs) in enumerate(everyone) for i, (item, cost)
            in enumerate(zip(items, costs))]
    context_ids: dict[str, int] = {}
    groups = [context_ids.setdefault(repr(item[1][0]), len(context_ids)) for _, _, item, _ in flat]
    owners = plan([cost for *_, cost in flat], groups, world_size)
    mine = [k for k, owner in enumerate(owners) if owner == rank]
    instances = [Instance(request_type=flat[k][2][0], doc={}, arguments=flat[k][2][1], idx=0) for k in mine]
    error = None
    try:
        answers = run_local(instances) if instances else []
    except Exception as e:  # every rank must reach the exchange below, or the others wait forever
        longest = max(mine, key=lambda k: flat[k][3])
        task, doc = flat[longest][2][2], flat[longest][2][3]
        error = (f"rank {rank} failed in {what} on its {len(mine)} request(s), the longest being task {task} "
                 f"document {doc} ({flat[longest][3]} tokens): {type(e).__name__}: {e}")
        answers = []
    results = _all_gather((mine, answers, error), world_size)
    errors = [err for _, _, err in results if err]
    if errors:
        raise UserError("; ".join(errors))
    by_index = {k: answer for ks, answers, _ in results for k, answer in zip(ks, answers)}
    return [by_index[k] for k, (src, *_) in enumerate(flat) if src == rank]


@contextlib.contextmanager
def single_process(lm) -> Iterator[None]:
    """Within the block `lm` behaves as one process (its local part of a balanced call): no collectives inside."""
    saved = lm._world_size
    lm._world_size = 1
    try:
        yield
    finally:
        lm._world_size = saved
