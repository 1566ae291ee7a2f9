"""The shipped demo models (`--model demo`, `demo-kda`, `demo-gdn`): a regression test of the kernels, model,
RULER generator, generation and scoring together, and of what each demo ships with."""

from __future__ import annotations

import json

import pytest

from gdn2_eval.demo import DEMOS, demo_dir

from conftest import cli, summary

# The target for the GDN-2 demo: S-NIAH-1 at 1K and 2K scores at least this on fresh seeds.
DEMO_SNIAH1_MIN = 90.0


def test_the_gdn2_demo_finds_the_needle_at_1k(tmp_path):
    out = tmp_path / "run"
    res = cli("run", "--model", "demo", "--tasks", "niah_single_1", "--lengths", "1k", "--samples", "12",
              "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    [row] = summary(out / "summary.csv")
    assert (row["task"], row["context_length"], row["n_samples"]) == ("niah_single_1", "1024", "12")
    assert float(row["value"]) >= DEMO_SNIAH1_MIN
    logs = [json.loads(line) for line in (out / "samples" / "niah_single_1@1024.jsonl").open()]
    # the predictions are the needles' values, not merely strings that contain them
    assert all(log["resps"][0][0].strip().rstrip(".") in log["doc"]["outputs"] for log in logs[:10])


@pytest.mark.parametrize("name", list(DEMOS))
def test_each_demo_ships_weights_tokenizer_and_an_honest_card(name):
    from gdn2_eval.loading import load_model

    path = demo_dir(name)
    record = json.loads((path / "training.json").read_text())
    card = (path / "README.md").read_text()
    assert record["recipe"]["gates"] == DEMOS[name] and record["steps_done"] == record["recipe"]["steps"]
    assert record["train_seed"] != record["eval_seed"]
    scores = record["eval_string_match_all"]
    assert set(scores) == {"niah_single_1@1024", "niah_single_1@2048"} and record["eval_samples"] >= 50
    if name == "demo":
        assert min(scores.values()) >= DEMO_SNIAH1_MIN
    assert "trained on RULER-format synthetic data" in card and "not evidence about the" in card
    assert f"{record['parameters']:,}" in card and "floats per layer" in card and "final loss" in card
    assert (path / "model.safetensors").stat().st_size < 8 * 2**20  # a few MB
    loaded = load_model(path, device="cpu")
    assert loaded.model.config.gates == DEMOS[name]
    assert sum(p.numel() for p in loaded.model.parameters()) == record["parameters"]
    assert loaded.tokenizer.eos_token_id == 1 and len(loaded.tokenizer) <= record["recipe"]["vocab_size"]


def test_the_three_demos_share_tokenizer_recipe_and_state_size():
    records = {name: json.loads((demo_dir(name) / "training.json").read_text()) for name in DEMOS}
    recipes = [{k: v for k, v in r["recipe"].items() if k != "gates"} for r in records.values()]
    assert all(recipe == recipes[0] for recipe in recipes)
    assert len({r["state_floats_per_layer"] for r in records.values()}) == 1
    tokenizers = {(demo_dir(name) / "tokenizer.json").read_text() for name in DEMOS}
    assert len(tokenizers) == 1


def test_the_readme_comparison_is_the_committed_demo_runs():
    # README "Demo models": each table row is results/demo/NAME's summary, value for value
    from pathlib import Path

    from gdn2_eval import results

    root = Path(__file__).resolve().parents[1]
    df = results.load(root / "results" / "demo", baselines="none")
    readme = (root / "README.md").read_text()
    order = [(task, n) for task in ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1")
             for n in (1024, 2048, 4096)]
    for name in DEMOS:
        run = df[df["model"] == name].set_index(["task", "context_length"])["value"]
        assert len(run) == len(order)
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` ("))
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        assert cells == [round(float(run[key]), 1) for key in order]
    assert (root / "results" / "demo" / "niah_length.png").stat().st_size > 10_000
