"""Offline-first start-up: names resolve without the hub, an unresolvable name fails fast in one line, every bad
option is one line (exit 2, nothing written), the run's task index equals lm-eval's full one, and the package starts
without torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: a connection is refused at once


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


def _gdn2_eval(*args, cwd, **env) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gdn2_eval", *map(str, args)], cwd=cwd, env=_env(**env),
                         capture_output=True, text=True, timeout=300)
    return res, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- resolving names


def test_hub_probe_honours_offline_flag_proxy_and_endpoint(monkeypatch):
    from gdn2_eval import names

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert not names.hub_reachable()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", UNREACHABLE)
    assert names.probe_target() == ("127.0.0.1", 9)
    assert not names.hub_reachable()
    assert time.perf_counter() - t0 < 2
    # a proxy that answers: the hub counts as reachable (the probe connects to the proxy, as requests would)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert names.hub_reachable()
    finally:
        server.close()
    monkeypatch.setenv("NO_PROXY", "my-hub.internal")
    monkeypatch.setenv("HF_ENDPOINT", "https://my-hub.internal:8443")
    assert names.probe_target() == ("my-hub.internal", 8443)


def test_builtin_local_and_cached_names_resolve_without_the_hub(tmp_path, monkeypatch):
    from gdn2_eval import names
    from gdn2_eval.demo import WEIGHTS_DIR

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert names.resolve_name("demo") == str(WEIGHTS_DIR / "demo")
    assert names.resolve_name("demo-kda", "tokenizer") == str(WEIGHTS_DIR / "demo-kda")
    assert names.resolve_name(tmp_path) == str(tmp_path)
    # a repository in the local Hugging Face cache: its snapshot, with no network
    hub = tmp_path / "hub"
    repo = hub / "models--someone--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    assert Path(names.resolve_name("someone/tiny")) == snap


def test_unresolvable_name_offline_fails_fast_in_one_line(tmp_path):
    """An unreachable proxy, as on a machine without internet: no retries, one line, exit 2, under 2 s past
    start-up."""
    out = tmp_path / "s.jsonl"
    res, took = _gdn2_eval("tasks", "generate", "niah_single_2", "--length", "1k", "--samples", "1", "--tokenizer",
                           "nosuch/tokenizer", "--out", out, cwd=tmp_path, HTTPS_PROXY=UNREACHABLE)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    for words in ("nosuch/tokenizer", "Hugging Face cache", "cannot be reached", "gdn2-eval data fetch"):
        assert words in res.stderr
    assert not out.exists() and "Traceback" not in res.stderr
    assert took < 10, took  # the whole process, start-up included (about 1 s on two cores)
    from gdn2_eval import names

    t0 = time.perf_counter()
    with pytest.raises(names.NameNotFound, match="cannot be reached"):
        names.resolve_name("nosuch/model")
    assert time.perf_counter() - t0 < 2


def test_tokenizer_demo_works_in_tasks_generate_and_run(tmp_path):
    out = tmp_path / "s.jsonl"
    res = cli("tasks", "generate", "niah_single_2", "--length", "1k", "--samples", "2", "--tokenizer", "demo",
              "--out", out)
    assert res.exit_code == 0, res.output
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(docs) == 2 and all(d["length"] <= 1024 for d in docs)
    run = tmp_path / "run"
    res = cli("run", "--model", "demo", "--tokenizer", "demo", "--tasks", "niah_single_1", "--lengths", "1k",
              "--samples", "1", "--device", "cpu", "--out", run)
    assert res.exit_code == 0, res.output
    results = json.loads((run / "results.json").read_text())
    assert results["label"] == "demo" and Path(results["protocol"]["ruler"]["tokenizer"]).name == "demo"


# ------------------------------------------------------------------------------------ every option, one line

NO_CUDA = not torch.cuda.is_available()


def _bad_cases(tmp: Path) -> list[tuple[list[str], str]]:
    """(arguments, words the one-line error must hold) for bad values of every option of the commands."""
    a_file = tmp / "a_file.txt"
    a_dir = tmp / "a_dir"
    missing = tmp / "missing"
    out = tmp / "out"
    run = ["run", "--model", "demo", "--tasks", "niah_single_1", "--lengths", "1k", "--samples", "1", "--device",
           "cpu", "--out", out]
    gen = ["tasks", "generate", "niah_single_1", "--length", "1k", "--tokenizer", "demo", "--out", tmp / "s.jsonl"]
    cases = [
        (["run", "--model", "nosuch/model", *run[3:]], "cannot be reached"),
        (["run", "--model", missing, *run[3:]], "neither a checkpoint file nor a directory"),
        (["run", "--model", "demo", "--suite", "everything", "--out", out], "unknown suite"),
        (["run", "--model", "demo", "--tasks", ",", "--out", out], "names no task"),
        (["run", "--model", "demo", "--suite", "ruler", "--tasks", "niah_single_1"], "exactly one of"),
        ([*run, "--arch", "gdn2_7B"], "unknown preset"),
        ([*run, "--tokenizer", "nosuch/tokenizer"], "cannot be reached"),
        ([*run, "--tasks-dir", missing], "--tasks-dir"),
        ([*run, "--limit", "0"], "--limit"),
        ([*run, "--limit", "x"], "--limit"),
        ([*run, "--batch-size", "zero"], "--batch-size"),
        ([*run, "--batch-size", "0"], "--batch-size"),
        ([*run, "--device", "gpu"], "not a device"),
        ([*run, "--dtype", "fp8"], "--dtype"),
        ([*run, "--data-dir", missing], "--data-dir"),
        ([*run[:-1], a_file], "is a file"),
        ([*run, "--name", " "], "--name"),
        ([*run, "--ppl-protocol", "sliding"], "--ppl-protocol"),
        ([*run, "--ppl-window", "0"], "--ppl-window"),
        ([*run, "--chunk-tokens", "0"], "--chunk-tokens"),
        ([*run, "--prefill-tokens", "-1"], "--prefill-tokens"),
        ([*run, "--gate-ablation", "nosuch"], "--gate-ablation"),
        ([*run, "--kernel", "nosuch"], "--kernel"),
        ([*run, "--impl", "fast"], "--impl"),
        ([*run[:-6], "--lengths", "1q", *run[-4:]], "--lengths"),
        ([*run[:-4], "--samples", "0", *run[-4:]], "--samples"),
        ([*run, "--seed", "-1"], "--seed"),
        ([*run, "--haystack", missing], "--haystack"),
        (["run", "--model", "demo", "--ruler-jsonl", missing], "--ruler-jsonl"),
        ([*run, "--num-gpus", "0"], "--num-gpus"),
        ([*run, "--share-prefix", "always"], "--share-prefix"),
        ([*run, "--share-budget", "0"], "--share-budget"),
        ([*run, "--share-budget", "lots"], "--share-budget"),
        ([*run, "--no-such-option"], "no-such-option"),
        (["convert", missing, "--arch", "gdn2_12h_100M", "--out", out], "CHECKPOINT"),
        (["convert", a_file, "--arch", "gdn2_7B", "--out", out], "unknown preset"),
        (["convert", a_file, "--arch", "gdn2_12h_100M", "--out", a_dir], "exists; pass --force"),
        (["convert", a_file, "--arch", "gdn2_12h_100M", "--out", a_file, "--force"], "is a file"),
        (["convert", a_file, "--arch", "gdn2_12h_100M", "--out", out, "--tokenizer", "nosuch/t"], "cannot be reached"),
        (["convert", a_file, "--arch", "gdn2_12h_100M", "--out", out, "--dtype", "int8"], "--dtype"),
        (["convert", a_file, "--out", out], "--arch"),
        (["tasks", "generate", "niah_nosuch", *gen[3:]], "unknown RULER task"),
        ([*gen[:3], "--length", "0", *gen[5:]], "--length"),
        ([*gen[:5], "--tokenizer", "nosuch/t", *gen[7:]], "cannot be reached"),
        ([*gen[:-1], a_dir], "is a directory"),
        ([*gen, "--samples", "0"], "--samples"),
        ([*gen, "--seed", "-2"], "--seed"),
        ([*gen, "--haystack", missing], "--haystack"),
        (["tasks", "list", "--tasks-dir", missing], "--tasks-dir"),
        (["table", "--table", "9"], "there is no table 9"),
        (["table", "--baselines", "all"], "--baselines"),
        (["table", "--format", "docx"], "--format"),
        (["table", missing], "no such run directory"),
        (["table", "--out", a_dir], "is a directory"),
        (["plot", "--kind", "pie"], "--kind"),
        (["plot", "--baselines", "all"], "--baselines"),
        (["plot", "--family", "transformer"], "--family"),
        (["plot", missing], "no such run directory"),
        (["plot", "--kind", "throughput", "--bench", missing], "--bench"),
        (["plot", "--out", a_dir], "is a directory"),
        (["plot", "--kind", "niah-depth", "--out", out], "give run directories"),
        (["paper", missing, "--out", out], "no such run directory"),
        (["paper", "--out", a_file], "is a file"),
        (["info", "nosuch/model"], "cannot be reached"),
        (["info", missing], "neither a checkpoint file nor a directory"),
        (["info", "gdn2_1.3B", "--device", "gpu"], "not a device"),
        (["info", a_file, "--arch", "gdn2_7B"], "unknown preset"),
        (["bench", "kernels", "--shapes", "1x", "--out", out], "--shapes"),
        (["bench", "kernels", "--repeats", "0", "--out", out], "--repeats"),
        (["bench", "model", "--preset", "gdn2_7B", "--out", out], "--preset"),
        (["bench", "model", "--kernel", "torch", "--out", out], "--kernel"),
        (["bench", "model", "--repeats", "0", "--out", out], "--repeats"),
        (["bench", "model", "--parts", "prefill,nosuch", "--out", out], "--parts"),
        (["bench", "model", "--shapes", "8x", "--out", out], "--shapes"),
        (["bench", "model", "--batches", "16,0", "--out", out], "--batches"),
        (["bench", "model", "--compare-kernels", "cuda", "--out", out], "--compare-kernels"),
        (["bench", "model", "--cold-kernels", "fast", "--out", out], "--cold-kernels"),
        (["bench", "model", "--dump-fla-configs", a_file, "--out", out], "--dump-fla-configs"),
        (["bench", "ruler", "--dump-fla-configs", a_file, "--out", out], "--dump-fla-configs"),
        (["bench", "gemv", "--rows", "2", "--out", out], "--rows"),
        (["bench", "gemv", "--rows", "16,x", "--out", out], "--rows"),
        (["bench", "gemv", "--preset", "gdn2_7B", "--out", out], "--preset"),
        (["bench", "gemv", "--out", a_file / "x.json"], "--out"),
        (["bench", "ruler", "--profile-cells", "niah_single_3@8k", "--out", out], "--profile-cells"),
        (["bench", "ruler", "--profile-cells", "niah_single_1@2k", "--lengths", "1k", "--out", out],
         "--profile-cells"),
        (["bench", "ruler", "--profile-cells", "niah_single_1@1k", "--no-share-compare", "--out", out],
         "--no-share-compare"),
        (["bench", "ruler", "--preset", "gpt9", "--out", out], "--preset"),
        (["bench", "ruler", "--samples", "-1", "--out", out], "--samples"),
        (["bench", "ruler", "--lengths", "1k,x", "--out", out], "--lengths"),
        (["bench", "ruler", "--model", "nosuch/model", "--out", out], "cannot be reached"),
        (["bench", "ruler", "--impl", "fast", "--out", out], "--impl"),
        (["bench", "ruler", "--long-length", "-1", "--out", out], "--long-length"),
        (["bench", "ruler", "--resume", "--out", a_file], "not a bench report to resume"),
        (["bench", "backend", "--models", "gdn2_7B", "--out", out], "--models"),
        (["bench", "backend", "--limit", "0", "--out", out], "--limit"),
        (["bench", "backend", "--impl", "fast", "--out", out], "--impl"),
        (["bench", "nosuch"], "nosuch"),
        (["data", "fetch", "--suite", "everything", "--to", out], "unknown suite"),
        (["data", "fetch", "--suite", "lm", "--to", a_file], "is a file"),
        (["data", "fetch", "--suite", "lm", "--to", out, "--tasks-dir", missing], "--tasks-dir"),
        (["train-demo", "--out", out, "--gates", "lstm"], "--gates"),
        (["train-demo", "--out", out, "--steps", "0"], "--steps"),
        (["train-demo", "--out", out, "--lengths", "1q"], "--lengths"),
        (["train-demo", "--out", out, "--max-minutes", "0"], "--max-minutes"),
        (["train-demo", "--out", out, "--device", "gpu"], "not a device"),
        (["train-demo", "--out", out, "--evaluate"], "holds no finished demo training"),
    ]
    if NO_CUDA:
        cases += [
            ([*run[:-4], "--device", "cuda", *run[-2:]], "no CUDA device"),
            ([*run, "--kernel", "fla"], "needs a CUDA device"),
            (["info", "gdn2_1.3B", "--device", "cuda"], "no CUDA device"),
            (["bench", "model", "--out", out], "needs a CUDA device"),
        ]
    return cases


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_every_bad_option_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "a_file.txt").write_text("x")
    (work / "a_dir").mkdir()
    monkeypatch.chdir(work)  # default outputs (results/...) would land here
    before = _tree(work)
    failures = []
    for args, words in _bad_cases(work):
        res = cli(*args)
        err = res.stderr
        if not (res.exit_code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err
                and "Traceback" not in res.output and _tree(work) == before):
            failures.append(f"{' '.join(map(str, args))}: exit {res.exit_code}, {err!r}, wrote "
                            f"{sorted(_tree(work) - before)}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------- the task index


def _config(manager, name: str) -> str:
    cfg = manager._factory._load_full_config(manager.task_index[name])
    return json.dumps(cfg, sort_keys=True, default=lambda o: getattr(o, "__qualname__", repr(o)))


def test_run_task_configs_equal_the_full_index_for_table2_ruler_recall():
    from lm_eval.tasks import TaskManager

    from gdn2_eval.runner import builtin_tasks_dir, task_manager
    from gdn2_eval.suites import suite_tasks

    full = TaskManager(include_path=[str(builtin_tasks_dir())])
    for suite in ("table2", "ruler", "recall"):
        tasks = suite_tasks(suite)
        small = task_manager(None, tasks=tasks)
        assert len(small.all_tasks) < len(full.all_tasks) / 10
        for name in tasks:
            a, b = small.task_index[name], full.task_index[name]
            assert (a.kind, a.yaml_path, a.tags) == (b.kind, b.yaml_path, b.tags), name
            assert _config(small, name) == _config(full, name), name
    # the project's own tasks read no lm-eval task file
    ruler = task_manager(None, tasks=suite_tasks("ruler"))
    assert all(str(builtin_tasks_dir()) in str(e.yaml_path or builtin_tasks_dir()) for e in ruler.task_index.values())


def test_task_index_map_is_cached_and_keyed_by_lm_eval_version(tmp_path, monkeypatch):
    from gdn2_eval import task_index

    monkeypatch.setenv("GDN2_EVAL_CACHE", str(tmp_path))
    first = task_index.cache_file()
    assert first.parent == tmp_path and task_index.lm_eval_version() in first.name
    monkeypatch.setattr(task_index, "lm_eval_version", lambda: "0.0.0-other")
    assert task_index.cache_file() != first


def test_unknown_task_still_points_at_lm_evals_list():
    from gdn2_eval.errors import UserError
    from gdn2_eval.runner import check_tasks, task_manager

    manager = task_manager(None, tasks=["piqa", "no_such_task_here"])
    with pytest.raises(UserError, match=r"unknown task\(s\) no_such_task_here; see `lm_eval ls tasks`"):
        check_tasks(["piqa", "no_such_task_here"], manager)


# -------------------------------------------------------------------------------------------------- start-up

LIGHT = "import sys; from gdn2_eval.cli import app; sys.argv = ['gdn2-eval', *sys.argv[1:]]\n" \
        "try:\n    app()\nexcept SystemExit:\n    pass\n" \
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'lm_eval') if m in sys.modules))"


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["tasks", "list"], ["table", "--table", "3"],
                                  ["plot", "--kind", "throughput", "--out", "fig"], ["paper", "--out", "paper"]])
def test_light_commands_import_neither_torch_nor_transformers(args, tmp_path):
    res = subprocess.run([sys.executable, "-c", LIGHT, *args], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout[-500:]


def test_import_registers_with_transformers_and_lm_eval_lazily(tmp_path):
    code = ("import sys, gdn2_eval\nassert 'torch' not in sys.modules\n"
            "from transformers import AutoModelForCausalLM\nfrom gdn2_eval.demo import demo_dir\n"
            "m = AutoModelForCausalLM.from_pretrained(str(demo_dir('demo')))\nprint(type(m).__name__)\n"
            "from lm_eval.api.registry import get_model\nprint(get_model('gdn2').__name__, get_model('hf').__name__)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "GDN2ForCausalLM" in res.stdout and "GDN2LM HFLM" in res.stdout


def test_startup_timings(tmp_path):
    """Measured, with generous bounds for a shared CI machine: `--help` (target under 1 s) and a one-sample run."""
    res, help_s = _gdn2_eval("--help", cwd=tmp_path)
    assert res.returncode == 0 and help_s < 5, help_s
    res, run_s = _gdn2_eval("run", "--model", "demo", "--tasks", "niah_single_1", "--lengths", "1k", "--samples", "1",
                            "--device", "cpu", "--out", tmp_path / "r", cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert res.returncode == 0, res.stderr
    print(f"gdn2-eval --help: {help_s:.2f} s; one-sample run: {run_s:.2f} s")
    assert run_s < 60, run_s


def test_data_dir_run_makes_no_network_request(tiny_model_dir, tmp_path, monkeypatch):
    """With --data-dir the Hugging Face libraries are offline for the run: not one connection is attempted."""
    from conftest import write_user_tasks

    attempts = []
    blocked = socket.socket.connect  # the autouse fixture's blocker

    def record(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            attempts.append(address)
        return blocked(self, address)

    monkeypatch.setattr(socket.socket, "connect", record)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    tasks = write_user_tasks(tmp_path / "t", n_mc=4)
    res = cli("run", "--model", tiny_model_dir, "--tasks", "tiny_mc", "--tasks-dir", tasks, "--data-dir", data,
              "--device", "cpu", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert attempts == []
    assert os.environ.get("HF_HUB_OFFLINE") is None  # restored after the run
