"""The RULER speed bench's bookkeeping, on the CPU with a tiny model (the timings themselves are taken on a GPU).
The inference model runs its operators' PyTorch references here (`use_reference_ops`): what is checked is the
bench, not the kernels."""

from __future__ import annotations

import json

import pytest

from conftest import bpe_tokenizer, tiny_model, use_reference_ops


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    use_reference_ops(monkeypatch)


def test_bench_compares_the_backends_cell_by_cell_and_saves_after_each_step(tmp_path):
    from gdn2_eval.bench.ruler import bench

    bpe_tokenizer(600).save_pretrained(tmp_path / "tok")
    saved = []
    report = bench(tiny_model("recurrent", vocab_size=640), tmp_path / "tok", samples=2, batch_size=2,
                   hf_batch_size=2, long_length=1024, hf_budget_s=1e9,
                   grid={"niah_single_1": [768], "niah_multikey_1": [768]},
                   save=lambda r: saved.append(json.loads(json.dumps(r))),
                   profile_cells=("niah_multikey_1@768",), profile_dir=tmp_path / "profiles")
    assert report["device"] == "cpu" and report["long_sample"]["prompt_tokens"] <= 1024 - 128
    assert list(report["cells"]) == ["niah_single_1@768", "niah_multikey_1@768"]
    first = report["cells"]["niah_single_1@768"]  # only the first cell of a length is run twice (cold, then timed)
    assert {"gdn2_cold_s", "hf_cold_s"} <= set(first) and "gdn2_cold_s" not in report["cells"]["niah_multikey_1@768"]
    for cell in report["cells"].values():
        # same model, same prompts, greedy: the two backends agree (a random model's answers score 0)
        assert cell["same_prediction"] == 1.0 and cell["gdn2_score"] == cell["hf_score"] == 0
        assert cell["speedup"] == cell["hf_s"] / cell["gdn2_s"]
        # and with prefix sharing forced on and off: the same predictions, the tokens the shared run prefilled
        assert cell["same_prediction_noshare"] == 1.0
        assert cell["share_speedup"] == cell["gdn2_noshare_s"] / cell["gdn2_share_on_s"]
        assert 0 < cell["prefill_tokens"] <= cell["prompt_tokens"]
    assert 0 < report["prefill_over_prompt_tokens"] <= 1
    assert report["cells_with_both"] == 2
    assert [len(r["cells"]) for r in saved] == [0, 0, 1, 2]  # the long sample, the warm-up, then one per cell
    # the profiled cell: both runs traced, their operator tables written, the shared one with fewer tokens
    profile = report["cells"]["niah_multikey_1@768"]["profile"]
    assert "profile" not in report["cells"]["niah_single_1@768"]
    for mode in ("on", "off"):
        assert profile[mode]["wall_s"] > 0 and profile[mode]["eager_forwards"] > 0
        assert "aten::" in (tmp_path / "profiles" / profile[mode]["table"]).read_text()


def test_a_resumed_bench_keeps_the_earlier_cells_and_runs_only_the_others(tmp_path):
    from gdn2_eval.bench.ruler import ResumeMismatch, bench

    bpe_tokenizer(600).save_pretrained(tmp_path / "tok")
    model = tiny_model("recurrent", vocab_size=640)
    sizes = dict(batch_size=2, hf_batch_size=2, long_length=0, hf_budget_s=1e9, share_compare=False)
    first = bench(model, tmp_path / "tok", samples=2, grid={"niah_single_1": [768]}, save=lambda r: None, **sizes)
    earlier = json.loads(json.dumps(first))
    saved = []
    report = bench(model, tmp_path / "tok", samples=2, grid={"niah_single_1": [768], "niah_multikey_1": [768]},
                   save=lambda r: saved.append(json.loads(json.dumps(r))), previous=earlier, **sizes)
    assert list(report["cells"]) == ["niah_single_1@768", "niah_multikey_1@768"]
    assert report["cells"]["niah_single_1@768"] == earlier["cells"]["niah_single_1@768"]  # kept, not rerun
    assert report["resumed_cells"] == 1 and report["earlier_commands"] == [earlier["command"]]
    assert [len(r["cells"]) for r in saved] == [1, 2]  # the warm-up (the kept cell), then the one new cell
    assert report["cells_with_both"] == 2  # the totals count the kept cell too
    with pytest.raises(ResumeMismatch, match="samples_per_cell"):
        bench(model, tmp_path / "tok", samples=3, grid={"niah_single_1": [768]}, save=lambda r: None,
              previous=earlier, **sizes)


def test_warm_every_cell_times_each_cell_after_an_untimed_run(tmp_path):
    from gdn2_eval.bench.ruler import ResumeMismatch, bench

    bpe_tokenizer(600).save_pretrained(tmp_path / "tok")
    model = tiny_model("recurrent", vocab_size=640)
    sizes = dict(batch_size=2, hf_batch_size=2, long_length=0, hf_budget_s=1e9, share_compare=False, samples=2)
    grid = {"niah_single_1": [768], "niah_multikey_1": [768]}
    report = bench(model, tmp_path / "tok", grid=grid, save=lambda r: None, warm_every_cell=True, **sizes)
    assert report["warm_every_cell"] is True
    for cell in report["cells"].values():  # the second cell of the length too
        assert cell["gdn2_cold_s"] > 0 and cell["hf_cold_s"] > 0 and cell["same_prediction"] == 1.0
    # an earlier report timed the other way does not resume into this one
    plain = bench(model, tmp_path / "tok", grid={"niah_single_1": [768]}, save=lambda r: None, **sizes)
    assert "warm_every_cell" not in plain
    with pytest.raises(ResumeMismatch, match="warm_every_cell"):
        bench(model, tmp_path / "tok", grid=grid, save=lambda r: None, previous=json.loads(json.dumps(plain)),
              warm_every_cell=True, **sizes)


def test_divergence_margins_measure_the_logit_gap_where_two_predictions_part(tmp_path):
    import torch

    from gdn2_eval.bench.ruler import divergence_margins
    from gdn2_eval.ruler import generate_samples, load_tokenizer, prompt_ids

    bpe_tokenizer(600).save_pretrained(tmp_path / "tok")
    tok = load_tokenizer(str(tmp_path / "tok"))
    model = tiny_model("recurrent", vocab_size=640)
    docs = generate_samples("niah_single_1", 768, 2, tok)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids(docs[1], tok)])).logits[0, -1].float()
    # the two likeliest tokens whose text re-tokenises to themselves (what a generated prediction would be)
    picks = [t for t in logits.argsort(descending=True).tolist()
             if tok(tok.decode([t]), add_special_tokens=False)["input_ids"] == [t]][:2]
    a, b = (tok.decode([t]) for t in picks)
    margins = divergence_margins(model, tok, docs, ["same", a], ["same", b])
    assert len(margins) == 1  # the identical row is not counted
    expected = float((logits[picks[0]] - logits[picks[1]]).abs() / logits.abs().max())
    assert margins[0] > 0 and abs(margins[0] - expected) < 1e-6
    # a shared first token: the gap is taken one token later, from the logits after the prompt and that token
    assert [tok(p, add_special_tokens=False)["input_ids"] for p in (a + a, a + b)] == [picks[:1] * 2, picks]
    with torch.no_grad():
        after = model(input_ids=torch.tensor([prompt_ids(docs[1], tok) + picks[:1]])).logits[0, -1].float()
    expected_later = float((after[picks[0]] - after[picks[1]]).abs() / after.abs().max())
    later = divergence_margins(model, tok, docs, ["", a + a], ["", a + b])
    assert len(later) == 1 and later[0] is not None and abs(later[0] - expected_later) < 1e-6
    assert abs(expected_later - expected) > 1e-6  # a different position from the first case's


def test_reference_ties_weigh_the_gap_against_the_low_precision_error(tmp_path):
    import copy

    import torch

    from gdn2_eval.bench.ruler import reference_ties
    from gdn2_eval.ruler import generate_samples, load_tokenizer, prompt_ids

    bpe_tokenizer(600).save_pretrained(tmp_path / "tok")
    tok = load_tokenizer(str(tmp_path / "tok"))
    reference = tiny_model("recurrent", vocab_size=640)
    low = copy.deepcopy(reference).to(torch.bfloat16)
    docs = generate_samples("niah_single_1", 768, 1, tok)
    context = torch.tensor([prompt_ids(docs[0], tok)])
    with torch.no_grad():
        ref, lo = (m(input_ids=context).logits[0, -1].float() for m in (reference, low))
    order = [t for t in ref.argsort(descending=True).tolist()
             if tok(tok.decode([t]), add_special_tokens=False)["input_ids"] == [t]]
    scale = ref.abs().max()
    error = float((lo - ref).abs().max() / scale)
    assert error > 0  # bf16 moves the logits
    # the likeliest token against the next likeliest and against the least likely
    for other in (order[1], order[-1]):
        a, b = (tok.decode([t]) for t in (order[0], other))
        (row,) = reference_ties(low, reference, tok, docs, [a], [b])
        gap = float((ref[order[0]] - ref[other]).abs() / scale)
        assert abs(row["gap"] - gap) < 1e-6 and abs(row["error"] - error) < 1e-6
        assert row["tie"] == (gap <= 2 * error)
    assert not row["tie"]  # the least likely token is far beyond bf16's error
    assert reference_ties(low, reference, tok, docs, [a], [a]) == []  # equal predictions are not counted
