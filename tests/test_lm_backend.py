"""The `gdn2` lm-eval backend: exact log-likelihoods, batching, prefix sharing, chunking, perplexity protocols."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from gdn2_eval import lm_backend
from gdn2_eval.errors import UserError
from gdn2_eval.lm_backend import GDN2LM, target_scores

from conftest import tiny_model, words


def ll_requests(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def direct_loglikelihood(lm: GDN2LM, context: str, continuation: str) -> tuple[float, bool]:
    """Sum of log-softmax over one full forward of context + continuation (no cache, no chunks)."""
    ctx, cont = lm._encode_pair(context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = lm.model(ids[:, :-1]).logits[0, len(ctx) - 1 :].double()
    lp = F.log_softmax(logits, -1)
    target = torch.tensor(cont)
    return lp.gather(1, target[:, None]).sum().item(), bool((lp.argmax(-1) == target).all())


@pytest.fixture
def lm(tiny_model_dir):
    return GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", batch_size=8)


PAIRS = [
    (words(40, 1), " " + words(3, 2)),
    (words(40, 1), " " + words(5, 3)),  # shares its context with the first
    (words(40, 1), " " + words(1, 4)),
    (words(9, 5), " " + words(12, 6)),
    (words(70, 7), " " + words(2, 8)),
]


def test_loglikelihood_equals_direct_log_softmax_sum(lm):
    got = lm.loglikelihood(ll_requests(PAIRS))
    for (ctx, cont), (lp, greedy) in zip(PAIRS, got):
        ref_lp, ref_greedy = direct_loglikelihood(lm, ctx, cont)
        assert lp == pytest.approx(ref_lp, rel=1e-5, abs=1e-4)
        assert greedy == ref_greedy


def test_batched_equals_unbatched_and_sharing_equals_no_sharing(tiny_model_dir, lm):
    batched = lm.loglikelihood(ll_requests(PAIRS))
    single = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", batch_size=1)
    unshared = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", batch_size=8, share_prefix=False)
    shared = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", batch_size=3, share_prefix=True)
    others = [m.loglikelihood(ll_requests(PAIRS)) for m in (single, unshared, shared)]
    for other in others:
        for (a, ga), (b, gb) in zip(batched, other):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-4) and ga == gb


def test_prefix_sharing_runs_a_shared_context_once(tiny_model_dir, monkeypatch):
    lm = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", batch_size=8, share_prefix=True)
    calls = []
    real = lm.model.forward

    def counting(input_ids=None, **kw):
        calls.append(input_ids.shape)
        return real(input_ids=input_ids, **kw)

    monkeypatch.setattr(lm.model, "forward", counting)
    lm.loglikelihood(ll_requests(PAIRS[:3]))  # one context, three continuations
    prefill = [s for s in calls if s[0] == 1]
    assert len(prefill) == 1, calls  # the context ran once, for one row


def test_auto_sharing_picks_by_saved_context_tokens(tiny_model_dir, monkeypatch):
    """`auto` runs a context once only when that saves enough tokens; otherwise one pass per request."""
    lm = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", batch_size=8)
    assert lm.protocol()["share_prefix"] == "auto"
    assert lm.protocol()["impl"] == "reference"  # a GDN-2 checkpoint on the CPU: the readable reference model
    used = []
    for name in ("_score", "_score_direct"):
        real = getattr(lm, name)
        monkeypatch.setattr(lm, name, lambda b, r, real=real, name=name: used.append(name) or real(b, r))
    short = [(words(10, 1), " " + words(2, 2 + i)) for i in range(4)]  # saves 3 x ~10 tokens: direct
    long = [(words(300, 3), " " + words(2, 9 + i)) for i in range(4)]  # saves 3 x ~300 tokens: shared
    got = lm.loglikelihood(ll_requests(short + long))
    assert sorted(used) == ["_score", "_score_direct"]
    for (ctx, cont), (lp, greedy) in zip(short + long, got):
        assert (lp, greedy) == pytest.approx(direct_loglikelihood(lm, ctx, cont), rel=1e-5, abs=1e-4)
    with pytest.raises(UserError, match="share_prefix"):
        GDN2LM(str(tiny_model_dir), device="cpu", share_prefix="sometimes")


def test_chunked_long_inputs_equal_one_shot(tiny_model_dir):
    long_pairs = [(words(300, 11), " " + words(150, 12)), (words(20, 13), " " + words(200, 14))]
    one_shot = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", chunk_tokens=1 << 20)
    expected = one_shot.loglikelihood(ll_requests(long_pairs))
    for share in (True, False):  # both scoring paths carry state across chunks
        chunked = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", chunk_tokens=37, share_prefix=share)
        for (a, ga), (b, gb) in zip(expected, chunked.loglikelihood(ll_requests(long_pairs))):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-3) and ga == gb
    ref, _ = direct_loglikelihood(one_shot, *long_pairs[0])
    assert one_shot.loglikelihood(ll_requests(long_pairs[:1]))[0][0] == pytest.approx(ref, rel=1e-5)


def test_log_probabilities_are_formed_chunk_by_chunk(tiny_model_dir, monkeypatch):
    lm = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", chunk_tokens=64)
    sizes = []
    real = lm_backend.target_scores

    def spy(logits, targets):
        sizes.append(logits.numel() // logits.shape[-1])
        return real(logits, targets)

    monkeypatch.setattr(lm_backend, "target_scores", spy)
    lm.loglikelihood(ll_requests([(words(10, 1), " " + words(500, 2))]))
    assert max(sizes) <= 64  # never more than chunk_tokens positions at once


def test_target_scores_match_log_softmax_and_flag_bad_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 50, dtype=torch.bfloat16)
    targets = torch.randint(0, 50, (3, 5))
    lp, hit = target_scores(logits, targets)
    full = F.log_softmax(logits.double(), -1)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.double(), full.gather(-1, targets[..., None])[..., 0], rtol=0, atol=1e-5)
    assert torch.equal(hit, logits.argmax(-1) == targets)
    bad = logits.float()
    bad[0, 1, 7] = float("nan")  # anywhere in the row
    bad[1, 2, 3] = float("inf")
    bad[2, 0, targets[2, 0]] = float("-inf")  # at the target only
    bad[2, 3, (targets[2, 3] + 1) % 50] = float("-inf")  # a -inf elsewhere is a zero probability, not an error
    lp, _ = target_scores(bad, targets)
    finite = torch.isfinite(lp)
    assert not finite[0, 1] and not finite[1, 2] and not finite[2, 0] and finite[2, 3]
    assert int(finite.sum()) == 15 - 3


def test_rolling_perplexity_protocols(tiny_model_dir):
    doc = words(150, 21)
    req = [Instance("loglikelihood_rolling", {}, (doc,), 0)]
    carry = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", ppl_protocol="carry", chunk_tokens=32)
    tokens = carry.tok_encode(doc)
    ids = torch.tensor([[carry.prefix_token_id] + tokens])
    with torch.no_grad():
        lp = F.log_softmax(carry.model(ids[:, :-1]).logits[0].double(), -1)
    whole = lp.gather(1, ids[0, 1:, None]).sum().item()
    assert carry.loglikelihood_rolling(req)[0] == pytest.approx(whole, rel=1e-5)
    # rolling windows of 64 tokens: each window scored from a fresh state, so the total differs from `carry`
    rolling = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", ppl_window=64)
    windowed = rolling.loglikelihood_rolling(req)[0]
    assert windowed != pytest.approx(whole, rel=1e-6)
    # lm-eval's protocol: windows of 64 predicted tokens; each window's input is the (up to) 64 tokens before its
    # last prediction, so the final, partial window sees a longer context
    manual = 0.0
    seq = [rolling.prefix_token_id] + tokens
    for start in range(0, len(tokens), 64):
        end = min(start + 64, len(tokens))
        lo = max(0, end - 64)
        inp, tgt = torch.tensor([seq[lo:end]]), torch.tensor(seq[lo + 1 : end + 1])
        with torch.no_grad():
            lpw = F.log_softmax(rolling.model(inp).logits[0].double(), -1)
        manual += lpw.gather(1, tgt[:, None])[-(end - start) :].sum().item()
    assert windowed == pytest.approx(manual, rel=1e-5)
    assert rolling.protocol()["ppl_window"] == 64 and carry.protocol()["ppl_protocol"] == "carry"


def test_generate_until_is_greedy_and_stops(lm):
    prompt = words(30, 31)
    req = [Instance("generate_until", {}, (prompt, {"until": ["w5"], "max_gen_toks": 10, "do_sample": False}), 0)]
    out = lm.generate_until(req)[0]
    ids = torch.tensor([lm.tok_encode(prompt)])
    with torch.no_grad():
        ref = lm.model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=3)
    text = lm.tok_decode(ref[0, ids.shape[1] :].tolist())
    assert out == text.split("w5")[0]


def test_non_recurrent_model_refuses_to_truncate(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "llama")
    lm = GDN2LM(str(tmp_path / "llama"), device="cpu", dtype="fp32")
    assert lm.adapted and lm.position_limit == lm.max_length == 64  # the backend's own path, with its KV cache
    ok = lm.loglikelihood(ll_requests([(words(10, 1), " w3")]))
    assert len(ok) == 1
    with pytest.raises(UserError, match="does not fit this model's limit of 64 positions"):
        lm.loglikelihood(ll_requests([(words(100, 1), " w3")]))


def test_batched_greedy_generation_equals_each_prompt_alone(tiny_model_dir):
    """Prompts of different lengths in one left-padded batch, rows dropped as they finish: every prediction equals
    the model's own `generate` on that prompt alone."""
    lm = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32", batch_size=4, chunk_tokens=40)
    prompts = [words(n, 40 + n) for n in (5, 60, 23, 90, 41, 12)]
    gen = {"until": [], "max_gen_toks": 12, "do_sample": False}
    reqs = [Instance("generate_until", {}, (p, gen), i) for i, p in enumerate(prompts)]
    got = lm.generate_until(reqs)
    for prompt, text in zip(prompts, got):
        ids = torch.tensor([lm.tok_encode(prompt)])
        with torch.no_grad():
            ref = lm.model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=3)
        assert text == lm.tok_decode(ref[0, ids.shape[1] :].tolist())


def test_greedy_generation_stops_at_eos_and_drops_finished_rows(tiny_model_dir):
    from gdn2_eval.generation import greedy_generate

    lm = GDN2LM(str(tiny_model_dir), device="cpu", dtype="fp32")
    prompts = [lm.tok_encode(words(n, 70 + n)) for n in (8, 30, 17)]
    free = greedy_generate(lm.model, prompts, 20)
    assert all(len(t) == 20 for t in free)
    stop_tok = free[1][4]  # make row 1's fifth token the end of sequence
    cut = greedy_generate(lm.model, prompts, 20, eos_ids=[stop_tok], check_every=2)
    for full, short in zip(free, cut):
        first = full.index(stop_tok) if stop_tok in full else len(full)
        assert short == full[:first]  # other rows unchanged by the dropped one
    early = greedy_generate(lm.model, prompts, 20, finished=lambda row, toks: row == 0 and len(toks) >= 4,
                            check_every=4)
    assert early[0] == free[0][:4] and early[1:] == free[1:]


@pytest.mark.parametrize("kind,lengths", [("hybrid", (3, 40, 11, 7)), ("hybrid", (3, 5, 2, 4)),
                                          ("recurrent", (3, 40, 11, 7))])
def test_fixed_buffer_decode_step_equals_eager_decoding(kind, lengths):
    """The step that `GraphDecoder` captures on CUDA (fixed buffers, windows padded to full width, finished rows kept
    in the batch), run eagerly here: same tokens as the eager decoder, with prompts longer than the hybrid's 8-token
    window and with all of them shorter (the window cache is then widened before decoding)."""
    from gdn2_eval.generation import EagerDecoder, GraphDecoder, decode, prefill

    model = tiny_model(kind, seed=5)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 250, (n,), generator=g).tolist() for n in lengths]
    results = []
    for make in (EagerDecoder, lambda m, c, t: GraphDecoder(m, c, t, capture=False)):
        cache, last = prefill(model, prompts, pad_id=0, chunk_tokens=64)
        results.append(decode(make(model, cache, last.argmax(-1)), len(prompts), 15, eos_ids=(), pad_id=0,
                              finished=lambda row, toks: row == 2 and len(toks) >= 6, check_every=3))
    eager, fixed = results
    assert [len(r) for r in eager] == [15, 15, 6, 15]
    assert fixed == eager


def test_kernel_compilation_is_announced_and_leaves_the_model_unchanged(lm, capsys):
    """On CUDA the backend compiles the model's kernels at load time, saying so (here run on the CPU directly)."""
    before = [p.detach().clone() for p in lm.model.parameters()]
    assert lm.compile_kernels() >= 0
    err = capsys.readouterr().err
    assert "compiling the model's GPU kernels" in err and "compiled in" in err
    assert all(torch.equal(a, b) for a, b in zip(before, lm.model.parameters()))


@pytest.mark.parametrize("kind", ["recurrent", "hybrid"])
def test_shared_prefix_generation_equals_unshared_and_counts_the_saving(kind, tmp_path, tokenizer_dir):
    """`share_prefix=on` runs each prompt prefix once (RULER-like prompts that leave one haystack at different
    depths), and gives exactly the texts of `off`; a one-byte snapshot budget (nothing kept) gives them again."""
    from transformers import AutoTokenizer

    out = tmp_path / kind
    tiny_model(kind, seed=9).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    stem = words(120, 40).split()
    prompts = [" ".join(stem[:d] + words(4, d).split()) for d in (15, 40, 40, 70, 100, 118)] + [words(25, 41)]
    gen = {"until": ["w5"], "max_gen_toks": 8, "do_sample": False}
    reqs = [Instance("generate_until", {}, (p, gen), i) for i, p in enumerate(prompts)]
    texts, stats = {}, {}
    for mode, budget in (("off", None), ("on", None), ("on", "1")):
        lm = GDN2LM(str(out), device="cpu", dtype="fp32", batch_size=3, share_prefix=mode, share_budget=budget)
        texts[mode, budget] = lm.generate_until(reqs)
        stats[mode, budget] = dict(lm.token_stats)
    assert texts["on", None] == texts["off", None] == texts["on", "1"]
    assert stats["off", None]["prefill_tokens"] == stats["off", None]["prompt_tokens"]
    assert stats["on", None]["prompt_tokens"] == stats["off", None]["prompt_tokens"]
    assert stats["on", None]["prefill_tokens"] < 0.6 * stats["on", None]["prompt_tokens"]


def test_bad_sharing_options_are_one_line_errors(tiny_model_dir):
    from gdn2_eval.errors import UserError

    with pytest.raises(UserError, match="share_prefix must be auto, on or off"):
        GDN2LM(str(tiny_model_dir), device="cpu", share_prefix="sometimes")
    for bad in ("0", "-1GiB", "lots", "1.5XB"):
        with pytest.raises(UserError, match="share_budget must be a positive size"):
            GDN2LM(str(tiny_model_dir), device="cpu", share_budget=bad)


@pytest.mark.parametrize("kind", ["recurrent", "hybrid"])
def test_shared_prefix_scoring_equals_unshared_to_float32_rounding(kind, tmp_path, tokenizer_dir):
    """Few-shot-like contexts that share leading shots, several continuations each: the tree's log-likelihoods
    and greedy flags equal those of `off`, with fewer tokens run; a one-byte budget gives them again."""
    from transformers import AutoTokenizer

    out = tmp_path / kind
    tiny_model(kind, seed=11).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    shots = words(90, 50)
    pairs = [(shots + " " + words(6, q), " " + words(n, q + n)) for q in range(4) for n in (1, 3)]
    pairs += [(words(12, 60), " " + words(2, 61))]
    got = {}
    for mode, budget in (("off", None), ("on", None), ("on", "1")):
        lm = GDN2LM(str(out), device="cpu", dtype="fp32", batch_size=4, share_prefix=mode, share_budget=budget)
        got[mode, budget] = (lm.loglikelihood(ll_requests(pairs)), dict(lm.token_stats))
    want, off_stats = got["off", None]
    for key in (("on", None), ("on", "1")):
        scores, _ = got[key]
        for (lp, greedy), (lp0, greedy0) in zip(scores, want):
            assert lp == pytest.approx(lp0, rel=1e-5, abs=1e-4) and greedy == greedy0
    on_stats = got["on", None][1]
    assert on_stats["prompt_tokens"] == off_stats["prompt_tokens"]
    assert on_stats["prefill_tokens"] < 0.5 * off_stats["prefill_tokens"]


def test_a_scoring_run_prints_no_cache_rename_hint(tiny_model_dir):
    """transformers' one-line hint about the renamed `past_key_values` is not shown (in a fresh process: it is
    printed once per process)."""
    import subprocess
    import sys

    code = ("from gdn2_eval.lm_backend import GDN2LM\n"
            "from lm_eval.api.instance import Instance\n"
            f"lm = GDN2LM({str(tiny_model_dir)!r}, device='cpu', dtype='fp32')\n"
            "print(lm.loglikelihood([Instance('loglikelihood', {}, ('w1 w2 w3', ' w4'), 0)])[0][0] < 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("True"), res.stderr
    assert "Use `cache` instead" not in res.stderr
