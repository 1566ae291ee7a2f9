"""fla's baselines on the backend's own path on the GPU (`python -m pytest -m gpu`): Gated DeltaNet and KDA, tiny and
random in float32, through `gdn2_eval.hf_adapter` with fla's kernels (which need CUDA). The same checks as
`test_baselines.py` runs on the CPU for transformers' models: chunked, batched scoring equals one whole pass per
request; batched greedy equals each row alone and fla's own `generate`; the captured decode step equals the eager one;
the prefix tree is exact. fla's Mamba-2 (0.6) takes one new token per cached step only, so it runs on lm-eval's
stock path, with that reason recorded, whole sequences and no length limit."""

from __future__ import annotations

import pytest
import torch

from conftest import bpe_tokenizer, branching_requests, token_requests, whole_pass

pytestmark = pytest.mark.gpu
fla_models = pytest.importorskip("fla.models")
VOCAB = 640

SHAPES = {
    "gated_deltanet": ("GatedDeltaNetConfig", "GatedDeltaNetForCausalLM",
                       dict(hidden_size=128, num_hidden_layers=2, num_heads=2, head_dim=64)),
    "kda": ("KDAConfig", "KDAForCausalLM", dict(hidden_size=128, num_hidden_layers=2, num_heads=2, head_dim=64)),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(hidden_size=128, num_hidden_layers=2, num_heads=4, head_dim=64, state_size=16, expand=2,
                    n_groups=1, chunk_size=64)),
}


def _build(name: str, seed: int = 0):
    config_cls, model_cls, shape = SHAPES[name]
    torch.manual_seed(seed)
    config = getattr(fla_models, config_cls)(vocab_size=VOCAB, **shape)
    return getattr(fla_models, model_cls)(config).cuda().float().eval()


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer(600)


def _lm(model, tokenizer, **kw):
    from gdn2_eval.lm_backend import GDN2LM

    return GDN2LM(pretrained=model, tokenizer=tokenizer, **{"batch_size": 4, "device": "cuda", **kw})


ADAPTED = ("gated_deltanet", "kda")


@pytest.mark.parametrize("name", ADAPTED)
def test_fla_baselines_take_the_recurrent_aware_path_and_score_as_one_whole_pass(name, tokenizer):
    model = _build(name)
    requests = token_requests(n=5, context=(40, 300))
    whole = whole_pass(model, requests)
    for kw in ({"chunk_tokens": 128, "prefill_tokens": 128}, {"batch_size": 1, "chunk_tokens": 64},
               {"chunk_tokens": 128, "prefill_tokens": 96, "share_prefix": "on"}):
        lm = _lm(model, tokenizer, **kw)
        record = lm.path_record()
        assert lm.adapted and lm.recurrent, record
        assert record["path"] == "recurrent-aware" and record["layers"] == "recurrent", record
        assert record["left_pads"].startswith("masked"), record  # fla's layers unpad: tree edges run as one forward
        got = [lp for lp, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
        # fla's chunked kernels in float32 sum in another order when the chunk borders move
        torch.testing.assert_close(torch.tensor(got), torch.tensor(whole), rtol=2e-4, atol=2e-3)


@pytest.mark.parametrize("name", ADAPTED)
def test_fla_baselines_generate_each_row_as_alone_and_as_fla_does(name, tokenizer):
    from gdn2_eval.generation import greedy_generate

    lm = _lm(_build(name, seed=1), tokenizer)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 600, (n,), generator=g).tolist() for n in (170, 33, 252, 9)]
    eager = greedy_generate(lm.model, prompts, 12, chunk_tokens=100, cuda_graph=False)
    graph = greedy_generate(lm.model, prompts, 12, chunk_tokens=100, cuda_graph=True)
    alone = [greedy_generate(lm.model, [p], 12, chunk_tokens=4096, cuda_graph=False)[0] for p in prompts]
    assert lm.model.path_record()["cuda_graph"]
    assert eager == alone
    assert graph == eager
    # fla's own generate, one row at a time (its cache, no padding)
    own = [lm.model.inner.generate(torch.tensor([p], device="cuda"), max_new_tokens=12, do_sample=False,
                                   pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    assert own == alone


@pytest.mark.parametrize("name", ADAPTED)
def test_the_prefix_tree_is_exact_for_fla_baselines(name, tokenizer, monkeypatch):
    from gdn2_eval import prefix_tree

    # snapshot at every branch, as the CPU does: at the GPU's price of a forward (6144 tokens) the planner would
    # rightly run these short requests unshared, and the walk's exactness would go untested
    monkeypatch.setitem(prefix_tree.ROUND_COST_TOKENS, "cuda", prefix_tree.ROUND_COST_TOKENS["cpu"])
    requests = branching_requests(200, (37, 90), (3, 61, 126))
    model = _build(name, seed=2)
    whole = whole_pass(model, requests)
    for budget in (None, 1):
        lm = _lm(model, tokenizer, share_prefix="on", share_budget=budget, prefill_tokens=128, chunk_tokens=128,
                 batch_size=3)
        assert lm.model.path_record()["prefix_tree"]
        got = [lp for lp, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
        if budget is None:
            assert lm.token_stats["prefill_tokens"] < lm.token_stats["prompt_tokens"] - 500, lm.token_stats
        torch.testing.assert_close(torch.tensor(got), torch.tensor(whole), rtol=2e-4, atol=2e-3)


def test_fla_mamba2_runs_on_the_stock_path_and_says_why(tokenizer):
    model = _build("mamba2")
    lm = _lm(model, tokenizer)
    record = lm.path_record()
    assert not lm.adapted and record["path"] == "stock-hf", record
    assert "single new token per step" in record["why"], record
    assert record["layers"] == "recurrent" and lm.position_limit is None  # a recurrent state: no length limit
    g = torch.Generator().manual_seed(5)
    long = (None, torch.randint(3, 600, (2500,), generator=g).tolist(), [7, 8, 9])
    requests = token_requests(n=3, context=(40, 300)) + [long]
    got = [lp for lp, _ in lm._loglikelihood_tokens(requests, disable_tqdm=True)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(whole_pass(model, requests)), rtol=2e-4, atol=2e-3)
