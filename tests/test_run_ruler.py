"""`gdn2-eval run --suite ruler` end to end on a tiny model, `tasks generate` / `--ruler-jsonl`, `tasks list`."""

from __future__ import annotations

import json

import pytest

from gdn2_eval.ruler import TASKS, read_jsonl

from conftest import bpe_tokenizer, cli, summary, tiny_model


@pytest.fixture(scope="module")
def ruler_model(tmp_path_factory):
    """A tiny hybrid GDN-2 with a byte-level BPE (600 entries) that can spell RULER's prompts."""
    out = tmp_path_factory.mktemp("ruler") / "tiny"
    tiny_model("hybrid", seed=5, vocab_size=640).save_pretrained(out)
    bpe_tokenizer(600).save_pretrained(out)
    return out


def test_ruler_suite_writes_one_row_per_task_and_length(ruler_model, tmp_path, caplog):
    out = tmp_path / "run"
    caplog.set_level("INFO")
    res = cli("run", "--model", ruler_model, "--suite", "ruler", "--lengths", "1k", "--samples", "5",
              "--device", "cpu", "--batch-size", "4", "--out", out)
    assert res.exit_code == 0, res.output
    rows = summary(out / "summary.csv")
    assert {(r["task"], r["context_length"]) for r in rows} == {
        (t, "1024") for t in ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1")
    }
    assert all(r["metric"] == "string_match_all" and r["n_samples"] == "5" for r in rows)
    assert all(0 <= float(r["value"]) <= 100 for r in rows)
    logs = [json.loads(line) for line in (out / "samples" / "niah_single_2@1024.jsonl").read_text().splitlines()]
    assert len(logs) == 5
    doc = logs[0]["doc"]
    assert doc["max_length"] == 1024 and isinstance(doc["depth"], int) and doc["outputs"] and doc["keys"]
    assert isinstance(logs[0]["resps"][0][0], str)  # the prediction
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["ruler"]["samples"] == 5
    assert results["protocol"]["ruler"]["essay_haystack"]["name"]  # which haystack was used
    assert "niah_single_1@1024" in results["results"]
    # lm-eval's two-line `--metadata` hint, once per RULER cell, is not shown (the run passes the metadata itself)
    assert not [r for r in caplog.records if "--metadata" in r.getMessage()]


def test_generated_file_evaluates_like_the_generated_task(ruler_model, tmp_path):
    file = tmp_path / "s2.jsonl"
    res = cli("tasks", "generate", "niah_single_2", "--length", "1k", "--samples", "3", "--tokenizer", ruler_model,
              "--out", file)
    assert res.exit_code == 0, res.output
    docs = read_jsonl(file)
    assert len(docs) == 3 and {"index", "input", "outputs", "length", "answer_prefix"} <= set(docs[0])
    direct = tmp_path / "direct"
    via_file = tmp_path / "file"
    common = ["--model", ruler_model, "--device", "cpu", "--batch-size", "4"]
    assert cli("run", *common, "--tasks", "niah_single_2", "--lengths", "1k", "--samples", "3",
               "--out", direct).exit_code == 0
    res = cli("run", *common, "--ruler-jsonl", file, "--out", via_file)
    assert res.exit_code == 0, res.output
    a, b = summary(direct / "summary.csv"), summary(via_file / "summary.csv")
    assert [(r["task"], r["context_length"], r["value"]) for r in a] == [
        (r["task"], r["context_length"], r["value"]) for r in b
    ]


def test_ruler_bad_inputs_write_nothing(ruler_model, tmp_path):
    out = tmp_path / "bad"
    res = cli("run", "--model", ruler_model, "--tasks", "niah_single_1", "--lengths", "100", "--samples", "2",
              "--device", "cpu", "--out", out)
    assert res.exit_code == 2 and "100" in res.output
    assert not out.exists()
    weird = tmp_path / "hay.bin"
    weird.write_bytes(b"\x00\x01\x02")
    res = cli("run", "--model", ruler_model, "--tasks", "niah_single_2", "--lengths", "1k", "--haystack", weird,
              "--device", "cpu", "--out", out)
    assert res.exit_code == 2 and not out.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"index": 0, "input": "x"}) + "\n")
    res = cli("run", "--model", ruler_model, "--ruler-jsonl", bad, "--device", "cpu", "--out", out)
    assert res.exit_code == 2 and "outputs" in res.output and not out.exists()


def test_tasks_list_describes_every_task():
    res = cli("tasks", "list")
    assert res.exit_code == 0
    for name in [*TASKS, "piqa", "wikitext"]:
        assert name in res.output


def test_a_retrieval_task_added_in_a_user_directory_runs(ruler_model, tmp_path):
    """The README's worked example: one YAML and one generator function in a folder passed with --tasks-dir."""
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "my_tasks"
    out = tmp_path / "mine"
    res = cli("run", "--model", ruler_model, "--tasks", "niah_uuid_noise", "--tasks-dir", example, "--lengths", "1k",
              "--samples", "3", "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    rows = summary(out / "summary.csv")
    assert [(r["task"], r["metric"], r["context_length"], r["n_samples"]) for r in rows] == [
        ("niah_uuid_noise", "string_match_all", "1024", "3")
    ]
    doc = json.loads((out / "samples" / "niah_uuid_noise@1024.jsonl").read_text().splitlines()[0])["doc"]
    assert len(doc["outputs"][0]) == 36 and doc["outputs"][0] in doc["input"]  # a UUID value, in the prompt


def test_a_ruler_grid_builds_the_task_index_once(ruler_model, tmp_path, monkeypatch):
    """Each length is its own set of task metadata; they share one lm-eval task index (building one reads every
    lm-eval YAML), and each cell still gets its own length."""
    from lm_eval.tasks._index import TaskIndex

    builds = []
    real = TaskIndex.build  # a static method

    def counted(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(TaskIndex, "build", staticmethod(counted))
    out = tmp_path / "grid"
    res = cli("run", "--model", ruler_model, "--tasks", "niah_single_1", "--lengths", "1k,2k", "--samples", "2",
              "--device", "cpu", "--batch-size", "2", "--out", out)
    assert res.exit_code == 0, res.output
    assert len(builds) == 1
    for length in (1024, 2048):
        docs = [json.loads(line)["doc"] for line in (out / "samples" / f"niah_single_1@{length}.jsonl").open()]
        assert [d["max_length"] for d in docs] == [length, length]



def test_prefix_sharing_gives_every_ruler_task_the_same_predictions(ruler_model):
    """Real RULER prompts of every `ruler-full` task at 1K and 2K through the backend: `share_prefix` on and off
    give the same prediction for every sample, with fewer tokens prefilled; a one-byte snapshot budget (nothing
    kept, every prompt from its start) gives them again."""
    from lm_eval.api.instance import Instance

    from gdn2_eval.lm_backend import GDN2LM
    from gdn2_eval.ruler import generate_samples

    lms = {key: GDN2LM(str(ruler_model), device="cpu", dtype="fp32", batch_size=3, share_prefix=mode,
                       share_budget=budget)
           for key, (mode, budget) in {"off": ("off", None), "on": ("on", None), "tiny": ("on", "1")}.items()}
    gen = {"until": [], "max_gen_toks": 4, "do_sample": False}
    saved = {}
    for task in TASKS:
        for length in (1024, 2048):
            docs = generate_samples(task, length, 4, lms["off"].tokenizer, tokens_to_generate=4)
            reqs = [Instance("generate_until", d, (d["input"], gen), i) for i, d in enumerate(docs)]
            out = {}
            for key, lm in lms.items():
                lm.token_stats = {"prompt_tokens": 0, "prefill_tokens": 0}
                out[key] = lm.generate_until(reqs)
            assert out["on"] == out["off"] == out["tiny"], (task, length)
            stats = lms["on"].token_stats
            saved[task, length] = 1 - stats["prefill_tokens"] / stats["prompt_tokens"]
            assert lms["off"].token_stats["prefill_tokens"] == stats["prompt_tokens"]
    assert all(v > 0 for v in saved.values())  # every cell's samples share at least their instruction
    assert min(saved["niah_single_1", n] for n in (1024, 2048)) > 0.1  # one noise haystack, needles at depths


def test_a_run_records_and_reports_the_tokens_sharing_saved(ruler_model, tmp_path):
    runs = {}
    for mode in ("off", "on"):
        res = cli("run", "--model", ruler_model, "--tasks", "niah_single_1", "--lengths", "1k", "--samples", "4",
                  "--device", "cpu", "--batch-size", "2", "--share-prefix", mode, "--out", tmp_path / mode)
        assert res.exit_code == 0, res.output
        runs[mode] = (json.loads((tmp_path / mode / "results.json").read_text()), res.output)
    on, off = runs["on"][0]["tokens"]["niah_single_1@1024"], runs["off"][0]["tokens"]["niah_single_1@1024"]
    assert on["prompt_tokens"] == off["prompt_tokens"] == off["prefill_tokens"] > on["prefill_tokens"]
    assert runs["on"][0]["results"] == runs["off"][0]["results"]
    assert "saved by sharing prefixes" in " ".join(runs["on"][1].split())
    assert runs["on"][0]["protocol"]["share_prefix"] is True and runs["off"][0]["protocol"]["share_prefix"] is False
