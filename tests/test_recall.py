"""The real-world recall suite (Table 4, "Just read twice" protocol, tasks/recall/) and the Table 5 gate-ablation runs:
2K-token truncation under the tokenizer, the `contains` metric, end-to-end runs on stand-in data, Table 5 placement,
and the ablation changing logits but not parameters."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from gdn2_eval.standins import RECALL_STANDINS, STANDINS, write_standins
from gdn2_eval.suites import RECALL_TASKS, SUITES
from gdn2_eval.tables import TABLE4_SPEC, TABLE5_ROW_OF_ABLATION
from gdn2_eval.tasks.recall import utils as recall

from conftest import bpe_tokenizer, cli, summary, tiny_model


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer(600)


@pytest.fixture(scope="module")
def recurrent_model(tmp_path_factory, bpe):
    """A tiny recurrent GDN-2 (the family of Table 5) with a byte-level BPE that can spell RULER's prompts."""
    out = tmp_path_factory.mktemp("recall") / "tiny-recurrent"
    tiny_model("recurrent", seed=7, vocab_size=640).save_pretrained(out)
    bpe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def standin_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    write_standins(data, tasks=[*STANDINS, *RECALL_STANDINS], n_docs=3)
    return data


def test_suites_match_the_table_layouts():
    assert SUITES["recall"] == RECALL_TASKS == [t for _, _, t, _ in TABLE4_SPEC]
    assert all(m == "contains" for *_, m in TABLE4_SPEC)
    assert {"niah_single_2", "niah_single_3", "niah_multikey_1", "wikitext", "lambada_openai", *RECALL_TASKS} <= set(
        SUITES["table5"])


def _filler(n: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(0, 200, (n,), generator=g))


@pytest.mark.parametrize("where", [0.01, 0.5, 0.97])
def test_long_context_is_cut_to_2k_tokens_around_the_answer(bpe, where):
    budget = recall.CONTEXT_TOKENS - recall.ANSWER_TOKENS
    words = _filler(6000, seed=int(where * 100)).split()
    cut = int(len(words) * where)
    text = " ".join(words[:cut] + ["zebra quartz: Ostrich Nine."] + words[cut:]) + " zebra quartz:"
    doc = {"key": "zebra quartz", "value": "Ostrich Nine", "text": text}
    assert len(bpe(text, add_special_tokens=False)["input_ids"]) > 3 * budget  # far over 2K before
    out = recall.prepare("fda", doc, bpe)
    n_ctx = out["recall_context_tokens"]
    assert n_ctx <= budget  # never over 2K - 50
    assert out["recall_prompt_tokens"] <= recall.CONTEXT_TOKENS  # context + " Zebra quartz:" within 2K
    assert len(bpe(out["prompt"], add_special_tokens=False)["input_ids"]) == out["recall_prompt_tokens"]
    assert "zebra quartz: Ostrich Nine" in out["prompt"]  # the evidence is kept
    assert out["prompt"].endswith(". Zebra quartz:") and out["recall_truncated"] and out["recall_answer_found"]
    start, end = out["recall_window"]
    assert end - start <= budget
    if where == 0.01:
        assert start == 0  # a window centred on an early answer is shifted right, to the head
    if where < 0.9:
        assert n_ctx > budget - 10  # the window is (nearly) full
    if where == 0.5:
        assert start > 0 and end < out["recall_doc_tokens"]
    if where == 0.97:  # JRT centres the window on the answer and does not shift it left at the tail
        assert end == out["recall_doc_tokens"] and end - start < budget


def test_short_documents_are_not_changed_and_qa_prompts_follow_jrt(bpe):
    doc = {"context": "[DOC] [TLE] Paris is the capital of France. Which city is the capital of France?",
           "question": "Which city is the capital of France?", "answers": ["Paris", "paris"]}
    out = recall.prepare("triviaqa", doc, bpe)
    assert not out["recall_truncated"]
    assert out["prompt"] == "Paris is the capital of France. Which city is the capital of France?"
    assert out["recall_labels"] == ["Paris", "paris"]
    # no answer in a long context: the head is kept
    long = {"context": _filler(5000), "question": "q?", "answers": ["absent-answer"]}
    out = recall.prepare("drop", long, bpe)
    assert out["recall_window"][0] == 0 and not out["recall_answer_found"]
    assert out["recall_context_tokens"] <= recall.CONTEXT_TOKENS - recall.ANSWER_TOKENS
    # JRT drops SWDE/FDA/SQuAD documents whose answer field is empty or one character long
    assert recall.prepare("swde", {"key": "a", "value": "xyz", "text": "a: xyz"}, bpe) is None
    swde = recall.prepare("swde", {"key": "year", "value": "1999", "text": "year: 1999. Summary of information "
                                   "above...\nyear:"}, bpe)
    assert swde["prompt"] == "year: 1999. Year:"


def test_contains_metric_on_hand_made_predictions():
    cases = [  # (prediction, gold answers, contains)
        (" Ostrich nine, I think", ["Ostrich Nine"], 1),  # case-insensitive substring
        (" ostrich", ["Ostrich Nine"], 0),  # a part of the answer is not enough
        (" 3x5", ["3.5"], 0),  # the answer is a literal string, not a pattern
        (" about 3.5 km", ["3.5"], 1),
        (" Lyon", ["Paris", "Lyon"], 1),  # any gold answer
        (" nothing", ["", "Paris"], 0),  # an empty answer matches nothing
    ]
    scores = [recall.process_results({"recall_labels": gold}, [pred])["contains"] for pred, gold, _ in cases]
    assert scores == [want for *_, want in cases]
    assert recall.contains_score("", ["x"]) == 0


def test_recall_suite_end_to_end_on_local_data(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    write_standins(data, tasks=RECALL_TASKS, n_docs=3)
    out = tmp_path / "run"
    res = cli("run", "--model", tiny_model_dir, "--suite", "recall", "--data-dir", data, "--limit", "2",
              "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    rows = {r["task"]: r for r in summary(out / "summary.csv")}
    assert set(rows) == set(RECALL_TASKS)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for task, row in rows.items():
        assert row["metric"] == "contains" and row["n_samples"] == "2" and row["context_length"] == ""
        logs = [json.loads(line) for line in (out / "samples" / f"{task}.jsonl").read_text().splitlines()]
        assert len(logs) == 2
        assert float(row["value"]) == pytest.approx(100 * sum(s["contains"] for s in logs) / 2)  # percent
        for s in logs:
            prompt = s["doc"]["prompt"]
            assert prompt in json.dumps(s["arguments"], ensure_ascii=False)[:-1] or prompt in str(s["arguments"])
            assert len(tok(prompt, add_special_tokens=False)["input_ids"]) <= recall.CONTEXT_TOKENS
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["recall"]["context_tokens"] == 2048 and "ruler" not in results["protocol"]


def test_table5_runs_with_each_ablation_are_placed_after_their_paper_rows(recurrent_model, standin_data, tmp_path):
    """A whole Table 5 run with one ablation and a two-task run with the other: both rows go right after the paper
    row of their ablation; the whole run fills every column, the partial one shows dashes for the rest."""
    runs = {ablation: tmp_path / ablation for ablation in ("scalar_erase", "scalar_write")}
    scope = {"scalar_erase": ["--suite", "table5"],
             "scalar_write": ["--tasks", "wikitext,niah_single_2", "--lengths", "4k"]}
    for ablation, out in runs.items():
        res = cli("run", "--model", recurrent_model, *scope[ablation], "--data-dir", standin_data, "--limit", "2",
                  "--samples", "2", "--gate-ablation", ablation, "--device", "cpu", "--name", "ck", "--out", out)
        assert res.exit_code == 0, res.output
        results = json.loads((out / "results.json").read_text())
        assert results["model"]["gate_ablation"] == ablation
    cells = {(r["task"], r["context_length"]) for r in summary(runs["scalar_erase"] / "summary.csv")}
    assert {("niah_single_2", "4096"), ("niah_single_3", "2048"), ("niah_multikey_1", "4096")} <= cells
    res = cli("table", runs["scalar_erase"], runs["scalar_write"], "--table", "5", "--format", "csv")
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(res.output.splitlines()))
    names = [r["model"] for r in table]
    filled = {}
    for ablation in ("scalar_erase", "scalar_write"):
        mine = names.index(f"ck [{ablation}]")
        assert names[mine - 1] == TABLE5_ROW_OF_ABLATION[ablation]  # right after its paper row
        row = table[mine]
        assert row["source"] == "run" and row["family"] == "recurrent"
        filled[ablation] = {c for c in row if c not in ("family", "model", "source") and row[c] != ""}
    # the whole run: every column has its number (perplexities, both averages, the RULER cells)
    assert filled["scalar_erase"] == {c for c in table[0] if c not in ("family", "model", "source")}
    # the two-task run: its two columns only
    assert len(filled["scalar_write"]) == 2 and filled["scalar_write"] < filled["scalar_erase"]


def test_ablation_changes_logits_but_not_parameters(recurrent_model):
    from gdn2_eval.loading import load_model

    ids = torch.randint(3, 600, (2, 48), generator=torch.Generator().manual_seed(0))
    base = load_model(recurrent_model, device="cpu", dtype="fp32")[0]
    ref_logits = base(ids).logits
    ref_params = {k: v.clone() for k, v in base.state_dict().items()}
    for ablation in ("scalar_erase", "scalar_write"):
        model = load_model(recurrent_model, device="cpu", dtype="fp32", gate_ablation=ablation)[0]
        assert model.config.gate_ablation == ablation
        state = model.state_dict()
        assert state.keys() == ref_params.keys()
        assert all(torch.equal(state[k], ref_params[k]) for k in ref_params)
        with torch.no_grad():
            diff = (model(ids).logits - ref_logits).abs().max().item()
        assert diff > 1e-4, ablation
