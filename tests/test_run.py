"""`gdn2-eval run` end to end on a tiny model: results store, resume after SIGKILL, offline data, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import authors_state_dict, cli, save_authors_checkpoint, summary, tiny_model, write_user_tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def user_tasks(tmp_path):
    return write_user_tasks(tmp_path / "my_tasks")


def test_run_on_tasks_from_a_user_directory_writes_the_store(tiny_model_dir, user_tasks, tmp_path):
    out = tmp_path / "run"
    res = cli("run", "--model", tiny_model_dir, "--tasks", "tiny_mc,tiny_ppl", "--tasks-dir", user_tasks,
              "--device", "cpu", "--out", out, "--name", "tiny")
    assert res.exit_code == 0, res.output
    # the run's own line per task; not lm-eval's momentary bars for building and cache-checking requests
    assert "Checking cached requests" not in res.stderr + res.output
    rows = summary(out / "summary.csv")
    assert list(rows[0]) == ["model", "family", "suite", "task", "metric", "context_length", "value", "n_samples"]
    got = {(r["task"], r["metric"]) for r in rows}
    assert got == {("tiny_mc", "acc"), ("tiny_mc", "acc_norm"), ("tiny_ppl", "word_perplexity")}
    assert all(r["model"] == "tiny" and r["family"] == "hybrid" for r in rows)
    # accuracy in percent, equal to the per-sample logs
    samples = [json.loads(line) for line in (out / "samples" / "tiny_mc.jsonl").read_text().splitlines()]
    assert len(samples) == 12
    acc = next(float(r["value"]) for r in rows if r["metric"] == "acc")
    assert acc == pytest.approx(100 * sum(s["acc"] for s in samples) / 12)
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1 and results["model"]["family"] == "hybrid"
    assert results["model"]["kernel"] == results["model"]["decode_kernel"] == "torch"  # on the CPU, both
    assert len(results["model"]["hash"]) == 64
    assert results["protocol"]["ppl_protocol"] == "rolling" and results["versions"]["lm_eval"]
    assert results["model"]["state_bytes_per_sequence"] > 0 and results["seeds"]["random_seed"] == 0


def _start(args, cwd):
    # the repository root on the path, so the test also runs from a checkout that is not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "gdn2_eval", "run", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_run_killed_with_sigkill_resumes_to_the_same_results(tiny_model_dir, tmp_path):
    tasks = write_user_tasks(tmp_path / "t", n_docs=200, doc_words=400)  # the second task takes a while
    args = ["--model", tiny_model_dir, "--tasks", "tiny_mc,tiny_ppl", "--tasks-dir", tasks, "--device", "cpu",
            "--batch-size", "2"]
    clean = tmp_path / "clean"
    assert _start([*args, "--out", clean], tmp_path).wait(timeout=600) == 0
    killed = tmp_path / "killed"
    proc = _start([*args, "--out", killed], tmp_path)
    first = killed / "tasks" / "tiny_mc.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # inside the second task
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and json.loads(first.read_text())["results"]["tiny_mc"]
    assert still_running, "the run finished before it could be killed; make the second task longer"
    assert not (killed / "tasks" / "tiny_ppl.json").exists()
    mtime = first.stat().st_mtime
    assert _start([*args, "--out", killed, "--resume"], tmp_path).wait(timeout=600) == 0
    assert first.stat().st_mtime == mtime  # the finished task was not redone
    strip = lambda rows: [(r["task"], r["metric"], round(float(r["value"]), 4), r["n_samples"]) for r in rows]  # noqa: E731
    assert strip(summary(killed / "summary.csv")) == strip(summary(clean / "summary.csv"))


def test_offline_data_dir_serves_lm_eval_tasks_and_names_missing_ones(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    (data / "piqa").mkdir(parents=True)
    for split in ("train", "validation"):  # piqa's splits and schema
        with (data / "piqa" / f"{split}.jsonl").open("w") as f:
            for i in range(5):
                f.write(json.dumps({"goal": f"w{i} w{i + 1}", "sol1": "w7 w8", "sol2": "w9", "label": i % 2}) + "\n")
    manifest = {"baber/piqa::": {s: f"piqa/{s}.jsonl" for s in ("train", "validation")}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    res = cli("run", "--model", tiny_model_dir, "--tasks", "piqa", "--data-dir", data, "--device", "cpu",
              "--limit", "4", "--out", out)
    assert res.exit_code == 0, res.output
    rows = summary(out / "summary.csv")
    assert {(r["task"], r["metric"], r["n_samples"]) for r in rows} >= {("piqa", "acc", "4")}
    res = cli("run", "--model", tiny_model_dir, "--tasks", "boolq", "--data-dir", data, "--device", "cpu",
              "--out", tmp_path / "run2")
    assert res.exit_code == 2 and "task boolq" in res.stderr and "gdn2-eval data fetch --tasks boolq" in res.stderr


def test_bad_inputs_each_give_one_line(tiny_model_dir, user_tasks, tmp_path):
    def fails(*args, expect, after_progress=False):
        res = cli("run", *args)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output
        if after_progress:  # an error in the middle of evaluation ends the progress output with one line
            last = res.stderr.strip().splitlines()[-1]
            assert last.startswith("error: ") and expect in last, res.stderr
            return
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and expect in res.stderr, res.stderr

    base = ["--device", "cpu", "--out", tmp_path / "o"]
    fails("--model", tiny_model_dir, "--suite", "everything", *base, expect="unknown suite 'everything'; suites: lm")
    fails("--model", tiny_model_dir, "--tasks", "tiny_nope", "--tasks-dir", user_tasks, *base,
          expect="unknown task(s) tiny_nope")
    fails("--model", tmp_path / "missing", "--tasks", "tiny_mc", "--tasks-dir", user_tasks, *base,
          expect="neither a checkpoint file nor a directory")
    fails("--model", tiny_model_dir, "--tasks", "tiny_mc", "--tasks-dir", user_tasks, "--share-prefix", "always",
          *base, expect="unknown sharing mode 'always' (--share-prefix); choose one of: auto, on, off")
    fails("--model", tiny_model_dir, "--tasks", "tiny_mc", "--tasks-dir", user_tasks, "--share-budget", "0GiB",
          *base, expect="--share-budget must be a positive size")
    assert not (tmp_path / "o").exists()
    ckpt = save_authors_checkpoint(tmp_path / "c.pth", authors_state_dict({
        "n_layer": 1, "n_embd": 32, "n_head": 2, "gdn2_num_heads": 2, "gdn2_head_dim": 16,
        "intermediate_size": 32, "vocab_size": 256}))
    arch = tmp_path / "a.json"
    arch.write_text(json.dumps({"n_layer": 1, "n_embd": 32, "n_head": 2, "gdn2_num_heads": 2, "gdn2_head_dim": 16,
                                "intermediate_size": 32, "vocab_size": 256}))
    fails("--model", ckpt, "--arch", arch, "--tasks", "tiny_mc", "--tasks-dir", user_tasks, *base,
          expect="pass tokenizer=DIR")
    # an output directory holding another model's results
    out = tmp_path / "shared"
    ok = cli("run", "--model", tiny_model_dir, "--tasks", "tiny_mc", "--tasks-dir", user_tasks, "--device", "cpu",
             "--limit", "2", "--out", out)
    assert ok.exit_code == 0, ok.output
    other = tmp_path / "other"
    tiny_model("recurrent", seed=5).save_pretrained(other)
    for f in tiny_model_dir.glob("tokenizer*"):
        (other / f.name).write_bytes(f.read_bytes())
    (other / "special_tokens_map.json").write_bytes((tiny_model_dir / "special_tokens_map.json").read_bytes()) \
        if (tiny_model_dir / "special_tokens_map.json").exists() else None
    fails("--model", other, "--tasks", "tiny_mc", "--tasks-dir", user_tasks, "--device", "cpu", "--out", out,
          expect="holds results of another model")
    assert cli("run", "--model", other, "--tasks", "tiny_mc", "--tasks-dir", user_tasks, "--device", "cpu",
               "--limit", "2", "--out", out, "--force").exit_code == 0
    # NaN in the logits stops the task and names the request
    nan_dir = tmp_path / "nan"
    broken = tiny_model("hybrid", seed=3)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    broken.save_pretrained(nan_dir)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special")):
            (nan_dir / f.name).write_bytes(f.read_bytes())
    fails("--model", nan_dir, "--tasks", "tiny_mc", "--tasks-dir", user_tasks, *base, after_progress=True,
          expect="task tiny_mc: NaN or inf in the logits while scoring the request with context")


def test_backend_is_usable_from_lm_eval_simple_evaluate(tiny_model_dir, user_tasks):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import gdn2_eval  # noqa: F401  (registers `gdn2`)

    res = lm_eval.simple_evaluate(
        model="gdn2", model_args=f"pretrained={tiny_model_dir},device=cpu,dtype=fp32", tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(user_tasks)), limit=4,
    )
    assert 0.0 <= res["results"]["tiny_mc"]["acc,none"] <= 1.0
    assert os.environ.get("HF_DATASETS_OFFLINE") != "1" or True


def test_table2_suite_runs_the_real_lm_eval_tasks_on_local_data(tiny_model_dir, tmp_path):
    """Every task of the paper's Table 2, through lm-eval's own task definitions, reading stand-in data offline."""
    from gdn2_eval.standins import write_standins
    from gdn2_eval.suites import TABLE2_COLUMNS

    data = tmp_path / "data"
    write_standins(data, n_docs=4)
    out = tmp_path / "run"
    res = cli("run", "--model", tiny_model_dir, "--suite", "table2", "--data-dir", data, "--limit", "3",
              "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    rows = {(r["task"], r["metric"]): r for r in summary(out / "summary.csv")}
    for _column, task, metric in TABLE2_COLUMNS:  # every column of the table has its number
        assert (task, metric) in rows, (task, metric)
        assert rows[(task, metric)]["suite"] == "table2" and rows[(task, metric)]["n_samples"] == "3"
    assert 0 <= float(rows[("hellaswag", "acc_norm")]["value"]) <= 100
    assert float(rows[("wikitext", "word_perplexity")]["value"]) > 1


def test_only_a_users_shadowing_of_lm_eval_tasks_is_warned(tmp_path, caplog):
    """The project's RULER and recall tasks replace lm-eval's of the same names silently (documented); a user's task
    folder that shadows an lm-eval task still gets lm-eval's warning."""
    import logging

    from gdn2_eval.runner import task_manager

    user = tmp_path / "mine"
    user.mkdir()
    (user / "piqa.yaml").write_text("task: piqa\ndataset_path: json\noutput_type: multiple_choice\n"
                                    "doc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: ['a', 'b']\n")
    with caplog.at_level(logging.WARNING, logger="lm_eval.tasks._index"):
        task_manager(user)
    shadowed = [r.getMessage() for r in caplog.records if "overrides existing task" in r.getMessage()]
    assert any("'piqa'" in m for m in shadowed)
    assert not any("niah_single_1" in m or "'swde'" in m for m in shadowed)
