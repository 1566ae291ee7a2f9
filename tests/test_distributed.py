"""Data-parallel runs: the token-balanced plan, a rank's failure, and two CPU processes (gloo) against one."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdn2_eval.distributed import plan

from conftest import cli

REPO = Path(__file__).resolve().parents[1]


def test_plan_balances_tokens_and_keeps_shared_contexts_together():
    costs = [1000] + [10] * 100  # one long request, a hundred short ones
    owners = plan(costs, list(range(101)), 2)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(2)]
    assert owners[0] == 0 and loads == [1000, 1000]  # by count it would be 51 against 50 requests
    owners = plan([5, 5, 5, 1], [7, 7, 7, 3], 2)  # three continuations of one context stay on one rank
    assert owners[:3] == [owners[0]] * 3 and owners[3] != owners[0]
    assert plan([3, 3, 2, 2], [0, 1, 2, 3], 2) == plan([3, 3, 2, 2], [0, 1, 2, 3], 2)  # same plan on every rank


def _failing_rank(rank: int, init: str, out: str) -> None:
    from lm_eval.api.instance import Instance

    from gdn2_eval.distributed import balanced_call
    from gdn2_eval.errors import UserError

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    reqs = [Instance("loglikelihood", {}, (f"context {rank} {i}", " x"), i) for i in range(3)]
    for r in reqs:
        r.task_name, r.doc_id = "tiny_task", 10 * rank + r.idx

    def run_local(instances):
        if rank == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return [(0.0, True)] * len(instances)

    try:
        balanced_call(reqs, run_local, lambda rs: [len(r.args[0]) for r in rs], rank, 2, "loglikelihood")
        message = "no error"
    except UserError as e:
        message = str(e)
    Path(out, f"rank{rank}.txt").write_text(message)
    torch.distributed.destroy_process_group()


def test_a_failing_rank_stops_every_rank_with_its_name(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_failing_rank, args=(init, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("rank 1 failed in loglikelihood") and "CUDA out of memory" in message
        assert "task tiny_task document" in message


def _run(args: list[str], procs: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    cmd = (launcher if procs > 1 else [sys.executable]) + ["-m", "gdn2_eval", "run", *args]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def _same_summary(got: Path, want: Path) -> None:
    """Every cell equal, numbers to float32 rounding: the ranks batch different documents together, and a float32
    GEMM's last bit depends on the rows beside it (seen: a perplexity of 253.919633 against 253.919634)."""
    got_rows, want_rows = (list(csv.reader(f.read_text().splitlines())) for f in (got, want))
    assert len(got_rows) == len(want_rows) and got_rows[0] == want_rows[0]
    for g, w in zip(got_rows, want_rows):
        for a, b in zip(g, w, strict=True):
            try:
                fa, fb = float(a), float(b)
            except ValueError:
                assert a == b, (g, w)
            else:
                assert math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-9), (g, w)


@pytest.mark.slow
def test_two_cpu_processes_write_the_same_summary_as_one(tiny_model_dir, tmp_path):
    """Log-likelihood (piqa), rolling perplexity (wikitext) and generation (RULER) requests, balanced across two
    gloo processes: summary.csv that of one process (its numbers to float32 rounding); the per-sample logs hold the
    same samples."""
    from gdn2_eval.standins import write_standins

    data = tmp_path / "data"
    write_standins(data, n_docs=5)
    common = ["--model", str(tiny_model_dir), "--tasks", "piqa,wikitext,niah_single_1", "--data-dir", str(data),
              "--lengths", "1k", "--samples", "5", "--limit", "5", "--device", "cpu", "--dtype", "fp32",
              "--batch-size", "2"]
    one = _run([*common, "--out", str(tmp_path / "one")], 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run([*common, "--out", str(tmp_path / "two")], 2)
    assert two.returncode == 0, two.stderr[-3000:]
    _same_summary(tmp_path / "two" / "summary.csv", tmp_path / "one" / "summary.csv")
    rows = (tmp_path / "one" / "summary.csv").read_text().splitlines()
    assert any(r.startswith("tiny-gdn2,") and ",niah_single_1," in r for r in rows) and len(rows) >= 4
    def docs(run: str, name: str) -> list[int]:
        lines = (tmp_path / run / "samples" / f"{name}.jsonl").read_text().splitlines()
        return sorted(json.loads(line)["doc_id"] for line in lines)

    for name in ("piqa", "niah_single_1@1024"):
        assert docs("two", name) == docs("one", name)
    # both ranks computed part of every call (each keeps a request cache of its part)
    # a resumed two-process run skips every finished task and rewrites the same summary
    finished = {f.name: f.stat().st_mtime for f in (tmp_path / "two" / "tasks").glob("*.json")}
    again = _run([*common, "--out", str(tmp_path / "two"), "--resume"], 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {f.name: f.stat().st_mtime for f in (tmp_path / "two" / "tasks").glob("*.json")} == finished
    _same_summary(tmp_path / "two" / "summary.csv", tmp_path / "one" / "summary.csv")
    from sqlitedict import SqliteDict

    for rank in (0, 1):
        with SqliteDict(str(tmp_path / "two" / "cache" / f"requests_balanced_rank{rank}.db")) as cached:
            assert len(cached) > 0, f"rank {rank} computed nothing"


def test_num_gpus_asks_for_the_gpus_it_needs(tiny_model_dir, tmp_path):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    res = cli("run", "--model", tiny_model_dir, "--suite", "ruler", "--num-gpus", "2", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "--num-gpus 2: this machine has" in res.stderr and "torchrun" in res.stderr
    assert not (tmp_path / "r").exists()
