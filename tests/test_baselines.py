"""Baselines on the backend's own path (`gdn2_eval.hf_adapter`): transformers' KimiLinear, Qwen3-Next (Gated DeltaNet
hybrids), Falcon-H1 (a Mamba-2 hybrid), Mamba-2 (recurrent only) and Llama (attention only), tiny and random, built
here. On the CPU their linear layers run on their PyTorch paths (`gdn2_eval.torch_paths`)."""

from __future__ import annotations

import json

import pytest
import torch

from gdn2_eval.errors import UserError

from conftest import bpe_tokenizer, branching_requests, cli, summary, token_requests, whole_pass, write_user_tasks

transformers = pytest.importorskip("transformers")
VOCAB = 640  # the BPE's 600 entries fit


def _qwen3_next(limit: int = 4096):
    return transformers.Qwen3NextForCausalLM(transformers.Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=16,
        linear_value_head_dim=16, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"],
        max_position_embeddings=limit))


def _kimi_linear(limit: int = 4096):
    return transformers.KimiLinearForCausalLM(transformers.KimiLinearConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, num_local_experts=2, num_experts_per_tok=1, n_shared_experts=1,
        mlp_layer_types=["dense", "dense"], layer_types=["linear_attention", "full_attention"], linear_head_dim=16,
        linear_num_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=limit))


def _mamba2(limit: int = 4096):
    del limit  # Mamba-2 has no positions
    return transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_heads=4, head_dim=32, state_size=16, n_groups=1,
        expand=2, chunk_size=16, pad_token_id=0))


def _llama(limit: int = 4096):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=limit))


def _falcon_h1(limit: int = 4096):
    return transformers.FalconH1ForCausalLM(transformers.FalconH1Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16,
        mamba_n_groups=1, mamba_chunk_size=16, max_position_embeddings=limit))


BUILD = {"kimi_linear": _kimi_linear, "qwen3_next": _qwen3_next, "falcon_h1": _falcon_h1, "mamba2": _mamba2,
         "llama": _llama}
# what each run records: the path it took and the tables' family
EXPECTED = {
    "kimi_linear": ("recurrent-aware", "hybrid", "hybrid"),
    "qwen3_next": ("recurrent-aware", "hybrid", "hybrid"),
    "falcon_h1": ("recurrent-aware", "hybrid", "hybrid"),  # Mamba-2 and attention side by side in every layer
    "mamba2": ("recurrent-aware", "recurrent", "recurrent"),
    "llama": ("kv-cache", "attention", "transformer"),
}


def _build(name: str, seed: int = 0, **kw):
    from gdn2_eval.torch_paths import use_torch_paths

    torch.manual_seed(seed)
    model = BUILD[name](**kw).eval()
    use_torch_paths(model)
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer(600)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("baselines")
    out = {}
    for name in BUILD:
        _build(name).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return out


def _lm(name: str, tokenizer, **kw):
    from gdn2_eval.lm_backend import GDN2LM

    opts = {"batch_size": 4, "device": "cpu", **kw}
    return GDN2LM(pretrained=_build(name, **{k: opts.pop(k) for k in ("limit",) if k in opts}), tokenizer=tokenizer,
                  **opts)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_chunked_batched_scoring_equals_one_whole_pass_per_request(name, tokenizer):
    requests = token_requests()
    whole = whole_pass(_build(name), requests)
    # small chunks: every context crosses several chunk borders with the state carried
    # one row per request, and each context run once for both its continuations (state copied per row)
    for kw in ({"batch_size": 4, "chunk_tokens": 64, "prefill_tokens": 64},
               {"batch_size": 1, "chunk_tokens": 16, "prefill_tokens": 16},
               {"batch_size": 4, "chunk_tokens": 64, "prefill_tokens": 48, "share_prefix": "on"}):
        lm = _lm(name, tokenizer, **kw)
        assert lm.recurrent and lm.adapted
        got = [lp for lp, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(whole), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_batched_greedy_generation_equals_each_row_alone(name, tokenizer):
    from gdn2_eval.generation import greedy_generate

    lm = _lm(name, tokenizer, batch_size=4)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 600, (n,), generator=g).tolist() for n in (70, 33, 52, 9)]
    batched = greedy_generate(lm.model, prompts, 6, chunk_tokens=40, cuda_graph=False)
    alone = [greedy_generate(lm.model, [p], 6, chunk_tokens=1000, cuda_graph=False)[0] for p in prompts]
    hf = [lm.model.inner.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(p):]
          .tolist() for p in prompts]
    assert batched == alone == hf


def test_a_recurrent_model_takes_prompts_beyond_its_positions_and_attention_refuses_them(tokenizer):
    requests = [(None, list(range(3, 203)), [5, 6, 7])]  # 202 positions
    recurrent = _lm("qwen3_next", tokenizer, limit=64)
    assert recurrent.position_limit is None
    (lp, _), = recurrent._loglikelihood_tokens(requests, disable_tqdm=True)
    assert torch.isfinite(torch.tensor(lp))
    attention = _lm("llama", tokenizer, limit=64)
    assert attention.position_limit == 64
    with pytest.raises(UserError) as err:
        attention._loglikelihood_tokens(requests, disable_tqdm=True)
    assert "limit of 64 positions" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(BUILD))
def test_baselines_run_a_ruler_and_a_multiple_choice_task_and_record_their_path(name, model_dirs, tmp_path):
    tasks = write_user_tasks(tmp_path / "tasks", n_mc=6, n_docs=2, doc_words=40)
    out = tmp_path / "run"
    res = cli("run", "--model", model_dirs[name], "--tasks", "niah_single_1,tiny_mc", "--tasks-dir", tasks,
              "--lengths", "1k", "--samples", "3", "--device", "cpu", "--batch-size", "3", "--out", out)
    assert res.exit_code == 0, res.output
    rows = summary(out / "summary.csv")
    path, layers, family = EXPECTED[name]
    assert {r["task"] for r in rows} == {"niah_single_1", "tiny_mc"}
    assert all(r["family"] == family for r in rows)
    model = json.loads((out / "results.json").read_text())["model"]
    assert model["backend_path"]["path"] == path and model["backend_path"]["layers"] == layers
    assert model["backend_path"]["why"]
    if layers == "recurrent":
        assert model["backend_path"]["state_bytes_per_row"] > 0 and model["state_bytes_per_layer"]
    preds = [json.loads(line)["resps"][0][0] for line in (out / "samples" / "niah_single_1@1024.jsonl").open()]
    assert len(preds) == 3 and all(isinstance(p, str) for p in preds)
    # Table 3 puts the run in its family's block, after the paper's rows (the Transformer sits with the hybrids)
    table = cli("table", out, "--table", "3").output.splitlines()
    mine = next(i for i, line in enumerate(table) if line.startswith(f"| {name} †"))
    block = max(i for i, line in enumerate(table[:mine]) if line.startswith("| *"))
    assert table[block].startswith("| *Recurrent*" if family == "recurrent" else "| *Hybrid"), table[block]


def test_an_attention_model_past_its_positions_is_one_line_and_exit_2(tokenizer, tmp_path):
    short = tmp_path / "llama-short"
    _build("llama", limit=512).save_pretrained(short)
    tokenizer.save_pretrained(short)
    out = tmp_path / "run"
    res = cli("run", "--model", short, "--tasks", "niah_single_1", "--lengths", "1k", "--samples", "2",
              "--device", "cpu", "--out", out)
    assert res.exit_code == 2, res.output
    # the refusal comes right after loading the weights (their progress bar), before any request runs
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in res.output, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert [line for line in res.stderr.splitlines() if "error" in line.lower()] == [last]
    assert "limit of 512 positions" in res.stderr and not out.exists()


def test_an_fla_model_loads_its_hub_layout_and_on_the_cpu_is_one_line(tokenizer, tmp_path):
    """fla's models register with transformers' Auto classes on import (no trust_remote_code); their kernels need a
    GPU, so on the CPU the run stops with one line before any work."""
    fla_models = pytest.importorskip("fla.models")
    from gdn2_eval.loading import load_model

    fla_dir = tmp_path / "gdn-fla"
    fla_models.GatedDeltaNetForCausalLM(fla_models.GatedDeltaNetConfig(
        hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=32, vocab_size=VOCAB)).save_pretrained(fla_dir)
    tokenizer.save_pretrained(fla_dir)
    assert json.loads((fla_dir / "config.json").read_text())["model_type"] == "gated_deltanet"
    if torch.cuda.is_available():
        model, _ = load_model(fla_dir)
        assert type(model).__module__.startswith("fla.")
        return
    with pytest.raises(UserError, match="run only on a CUDA GPU"):
        load_model(fla_dir, device="cpu")
    res = cli("run", "--model", fla_dir, "--tasks", "niah_single_1", "--lengths", "1k", "--samples", "1",
              "--device", "cpu", "--out", tmp_path / "run")
    assert res.exit_code == 2 and res.stderr.strip().splitlines()[-1].startswith("error: "), res.output
    assert "GatedDeltaNetForCausalLM" in res.stderr and not (tmp_path / "run").exists()


def test_the_prefix_tree_is_exact_for_a_baseline_with_a_fixed_size_state(tokenizer):
    """Mamba-2's state has a fixed size, so the prefix tree applies: shared prefixes run once, edges continue from
    snapshots (their left padding run in segments, never through a state), and every score is the whole pass's;
    with a budget of about one snapshot (evictions) again. A hybrid's growing keys keep it off."""
    requests = branching_requests(40, (7, 19), (3, 11, 26))
    whole = whole_pass(_build("mamba2"), requests)
    for budget in (None, 30_000):
        lm = _lm("mamba2", tokenizer, share_prefix="on", share_budget=budget, prefill_tokens=32, chunk_tokens=32,
                 batch_size=3)
        assert lm.model.path_record()["prefix_tree"]
        # its pads' decay would reach a carried state: edges continuing snapshots run in column segments
        assert lm.model.path_record()["left_pads"] == "column segments"
        assert lm.protocol()["impl"] is None  # GDN-2's inference/reference choice does not apply to a baseline
        got = [lp for lp, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
        stats = lm.token_stats
        assert stats["prefill_tokens"] < stats["prompt_tokens"] - 100, stats  # the shared trunk ran once
        torch.testing.assert_close(torch.tensor(got), torch.tensor(whole), rtol=1e-5, atol=1e-4)
    assert not _lm("qwen3_next", tokenizer).model.path_record()["prefix_tree"]


def test_a_fixed_state_baseline_shares_ruler_prefixes_with_the_same_predictions(model_dirs, tmp_path):
    preds, tokens = {}, {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        res = cli("run", "--model", model_dirs["mamba2"], "--tasks", "niah_single_1", "--lengths", "1k", "--samples",
                  "5", "--device", "cpu", "--batch-size", "3", "--share-prefix", mode, "--out", out)
        assert res.exit_code == 0, res.output
        preds[mode] = [json.loads(line)["resps"] for line in (out / "samples" / "niah_single_1@1024.jsonl").open()]
        tokens[mode] = json.loads((out / "results.json").read_text())["tokens"]["niah_single_1@1024"]
    assert preds["on"] == preds["off"] and len(preds["on"]) == 5
    assert tokens["on"]["prompt_tokens"] == tokens["off"]["prefill_tokens"] > tokens["on"]["prefill_tokens"]


def test_a_model_whose_cache_drops_the_state_between_chunks_takes_the_stock_path_and_says_why(tokenizer):
    """transformers' Mamba (v1) PyTorch path does not carry its state across multi-token chunks: the adapter's probe
    finds it at load, and the model runs on lm-eval's stock path, whole sequences, with the reason recorded. Its
    state is recurrent, so no positional limit applies there either (lm-eval's default of 2048 would truncate)."""
    from gdn2_eval.lm_backend import GDN2LM

    torch.manual_seed(0)
    mamba = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=VOCAB, hidden_size=64,
                                                                   num_hidden_layers=2, state_size=8)).eval()
    lm = GDN2LM(pretrained=mamba, tokenizer=tokenizer, batch_size=2, device="cpu")
    assert not lm.adapted and not lm.recurrent and lm.protocol()["impl"] is None
    record = lm.path_record()
    assert record["path"] == "stock-hf" and "does not carry its state across multi-token chunks" in record["why"]
    assert record["layers"] == "recurrent" and lm.position_limit is None
    g = torch.Generator().manual_seed(5)
    long = (None, torch.randint(3, 600, (2500,), generator=g).tolist(), [7, 8, 9])  # past lm-eval's 2048 default
    requests = token_requests(n=2) + [long]
    got = [lp for lp, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(whole_pass(mamba, requests)), rtol=1e-4, atol=1e-3)


def test_a_fixed_state_baseline_decodes_through_fixed_buffers_as_eagerly(tokenizer):
    """The step a CUDA graph captures for a baseline with a fixed-size state (its new state copied back into fixed
    buffers, finished rows kept in the batch), run eagerly here: the eager decoder's tokens. Models with attention
    keys decode eagerly (their keys grow)."""
    from gdn2_eval.generation import EagerDecoder, GraphDecoder, decode, prefill

    lm = _lm("mamba2", tokenizer)
    assert lm._graph_decode() and lm.model.path_record()["cuda_graph"]
    assert not _lm("qwen3_next", tokenizer)._graph_decode()
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 600, (n,), generator=g).tolist() for n in (30, 12, 47, 5)]
    results = []
    for make in (EagerDecoder, lambda m, c, t: GraphDecoder(m, c, t, capture=False)):
        cache, last = prefill(lm.model, prompts, pad_id=0, chunk_tokens=40)
        results.append(decode(make(lm.model, cache, last.argmax(-1)), len(prompts), 12, eos_ids=(), pad_id=0,
                              finished=lambda row, toks: row == 1 and len(toks) >= 5, check_every=3))
    eager, fixed = results
    assert [len(r) for r in eager] == [12, 6, 12, 12]
    assert fixed == eager
    # copy_from writes another state into this cache's own tensors (their addresses are what a graph replays)
    a, _ = prefill(lm.model, prompts[:2], pad_id=0, chunk_tokens=40)
    b, _ = prefill(lm.model, prompts[2:], pad_id=0, chunk_tokens=40)
    from gdn2_eval.hf_adapter import _named_tensors

    before = {name: t.data_ptr() for name, t in _named_tensors(a.inner)}
    assert any(not torch.equal(x, y) for (_, x), (_, y) in zip(_named_tensors(a.inner), _named_tensors(b.inner)))
    a.copy_from(b)
    assert {name: t.data_ptr() for name, t in _named_tensors(a.inner)} == before
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(_named_tensors(a.inner), _named_tensors(b.inner)))


def test_library_hints_about_the_harness_own_choices_are_not_shown(tokenizer, caplog):
    """lm-eval warns on every construction that the backend passed it a loaded model, and transformers that a layer
    falls back to its PyTorch path on the CPU: both are the harness's choices, not the user's to act on."""
    import logging

    with caplog.at_level(logging.WARNING):
        lm = _lm("qwen3_next", tokenizer)
        lm._loglikelihood_tokens(token_requests(n=1), disable_tqdm=True)
        logging.getLogger("transformers.integrations.hub_kernels").warning(
            "`chunk_gated_delta_rule` is falling back to its reference PyTorch implementation because ...")
    shown = " ".join(r.getMessage() for r in caplog.records)
    for hint in ("not of type `str`", "already-initialized model", "falling back to its reference PyTorch"):
        assert hint not in shown, shown
