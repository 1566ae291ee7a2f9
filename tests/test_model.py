"""GDN2ForCausalLM: exact sizes, padding, generation with cache, SWA cost, gate ablations, HF round trip."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from gdn2_eval import GDN2Config, GDN2ForCausalLM
from gdn2_eval.model import swa as swa_module

from conftest import IMPLS, tiny_config, tiny_model


@pytest.mark.parametrize("preset, expected", [("gdn2_1.3B", 1_302_638_112), ("swa_gdn2_1.3B", 1_300_314_384)])
def test_non_embedding_parameter_counts_of_the_presets(preset, expected):
    with torch.device("meta"):
        model = GDN2ForCausalLM(GDN2Config.from_preset(preset))
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.layers."))
    assert blocks == expected


def test_presets_have_the_spec_layouts():
    assert GDN2Config.from_preset("gdn2_12h_305M").family == "recurrent"
    hybrid = GDN2Config.from_preset("swa_gdn2_100M")
    assert hybrid.family == "hybrid" and hybrid.mixer_types[:4] == ["gdn2", "swa", "gdn2", "swa"]
    assert hybrid.vocab_size == 32000 and hybrid.local_window == 2048 and hybrid.output_gate_act == "silu"


def padded(ids: torch.Tensor, lengths: list[int], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    T = ids.shape[1]
    x = torch.full_like(ids, 3)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        sl = slice(T - n, T) if side == "left" else slice(0, n)
        x[i, sl], mask[i, sl] = ids[i, :n], 1
    return x, mask


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["hybrid", "recurrent"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_equal_unbatched_runs(kind, side, impl):
    model = tiny_model(kind, gdn2_num_v_heads=None, impl=impl)
    ids = torch.randint(4, 250, (3, 90))
    lengths = [90, 71, 5]
    x, mask = padded(ids, lengths, side)
    with torch.no_grad():
        batched = model(x, attention_mask=mask).logits
        for i, n in enumerate(lengths):
            alone = model(ids[i : i + 1, :n]).logits[0]
            got = batched[i, 90 - n :] if side == "left" else batched[i, :n]
            torch.testing.assert_close(got, alone, atol=2e-5, rtol=2e-5)
    # pad tokens never reach any state: changing them changes nothing
    x2 = torch.where(mask.bool(), x, torch.randint(4, 250, x.shape))
    with torch.no_grad():
        torch.testing.assert_close(model(x2, attention_mask=mask).logits, batched)


def test_grouped_value_heads_run_and_differ_from_plain():
    model = tiny_model("recurrent", gdn2_num_v_heads=8)
    assert model.model.layers[0].attn.v_proj.out_features == 8 * 16
    plain = tiny_model("recurrent")
    assert not torch.allclose(model(torch.arange(70)[None]).logits, plain(torch.arange(70)[None]).logits)
    out = model(torch.randint(0, 256, (2, 70))).logits
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["hybrid", "recurrent"])
def test_incremental_decoding_equals_full_forward(kind, impl):
    model = tiny_model(kind, impl=impl)
    ids = torch.randint(4, 250, (2, 120))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :77], use_cache=True)
        pieces = [out.logits]
        cache = out.past_key_values
        for t in range(77, 120, 5):  # chunks of 5, then single tokens through the recurrent kernel path
            out = model(ids[:, t : t + 5], past_key_values=cache, use_cache=True)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=3e-5, rtol=3e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["hybrid", "recurrent"])
def test_generate_with_cache_equals_recomputing_20_greedy_tokens(kind, impl):
    """transformers' `generate` carries the model's cache (whatever name the installed version gives it): the
    prompt once, then one token per step, and the tokens of recomputing everything at every step."""
    model = tiny_model(kind, impl=impl)
    prompt = torch.randint(4, 250, (1, 30))
    fed, forward = [], model.forward

    def counting(*args, **kwargs):
        fed.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    model.forward = counting
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
        del model.forward
        assert fed == [30] + [1] * 19
        seq = prompt
        for _ in range(20):  # no cache: the whole sequence again at every step
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert generated.shape == (1, 50)
    assert torch.equal(generated, seq)


@pytest.mark.parametrize("impl", IMPLS)
def test_left_padded_batched_generation_equals_single_generation(impl):
    model = tiny_model("hybrid", impl=impl)
    ids = torch.randint(4, 250, (3, 40))
    lengths = [40, 23, 9]
    x, mask = padded(ids, lengths, "left")
    with torch.no_grad():
        batched = model.generate(
            x, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=3
        )
        for i, n in enumerate(lengths):
            alone = model.generate(
                ids[i : i + 1, :n], max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=3
            )
            assert torch.equal(batched[i, 40:], alone[0, n:]), f"row {i}"


@pytest.mark.parametrize("impl", IMPLS)
def test_cache_memory_does_not_grow_with_context(impl):
    model = tiny_model("hybrid", impl=impl)
    sizes = []
    with torch.no_grad():
        for n in (40, 400):
            out = model(torch.randint(4, 250, (1, n)), use_cache=True)
            sizes.append(out.past_key_values.nbytes())
    assert sizes[0] == sizes[1] > 0  # window of 7 keys/values + fixed recurrent state, both lengths past the window


def test_sliding_window_attention_never_builds_a_full_score_matrix(monkeypatch):
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape[-2], k.shape[-2]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(swa_module.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(swa_module, "QUERY_BLOCK", 64)
    window = 16
    q = torch.randn(1, 1000, 2, 8)
    k, v = torch.randn(1, 1000, 1, 8), torch.randn(1, 1000, 1, 8)
    out = swa_module.window_attention(q, k, v, window, block=64)
    assert max(kl for _, kl in seen) <= 64 + window - 1  # keys per block bounded by block + window
    # matches an explicit banded-mask reference
    i = torch.arange(1000)
    band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    ref = real(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=band, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ablation", ["scalar_erase", "scalar_write"])
def test_gate_ablation_scalarises_one_gate_at_run_time(ablation):
    base = tiny_model("recurrent")
    ablated = tiny_model("recurrent", gate_ablation=ablation)
    for (n1, p1), (n2, p2) in zip(base.state_dict().items(), ablated.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)  # same parameters
    x = torch.randn(1, 9, 64)
    _, b, w = ablated.model.layers[0].attn.gates(x)
    scalar, channel = (b, w) if ablation == "scalar_erase" else (w, b)
    heads = scalar.unflatten(-1, (4, -1))
    assert torch.allclose(heads, heads[..., :1].expand_as(heads))  # one value per head
    assert not torch.allclose(*(channel.unflatten(-1, (4, -1))[..., i] for i in (0, 1)))  # other gate untouched
    ids = torch.randint(0, 256, (1, 50))
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, ablated(ids).logits, atol=1e-4)


def test_output_gate_activation_is_a_config_field():
    silu = tiny_model("recurrent")
    sigmoid = tiny_model("recurrent", output_gate_act="sigmoid")
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert not torch.allclose(silu(ids).logits, sigmoid(ids).logits, atol=1e-4)


def test_auto_classes_round_trip(tmp_path):
    model = tiny_model("hybrid")
    model.save_pretrained(tmp_path / "m")
    assert AutoConfig.from_pretrained(tmp_path / "m").model_type == "gdn2"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, GDN2ForCausalLM)
    ids = torch.randint(0, 250, (1, 33))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_packed_short_conv_equals_each_sequence_alone():
    """Packed sequences as short as 1 and 2 tokens (fewer than the kernel's 3 state slots) and longer ones, each with
    its own carried state: outputs and new states equal the dense convolution of each sequence alone."""
    from gdn2_eval.model.layout import TokenLayout
    from gdn2_eval.model.modules import ShortConv

    torch.manual_seed(0)
    conv = ShortConv(6, kernel_size=4)
    torch.nn.init.normal_(conv.weight)
    lengths = [1, 7, 2, 0, 4]
    T = max(lengths)
    mask = torch.tensor([[0] * (T - n) + [1] * n for n in lengths])
    x = torch.randn(len(lengths), T, 6)
    state = torch.randn(len(lengths), 3, 6)
    layout = TokenLayout.build(len(lengths), T, mask, None, "torch", torch.device("cpu"))
    y, new_state = conv(layout.pack(x), layout, state[layout.rows])
    y = layout.unpack(y)
    dense = TokenLayout.build(1, T, None, None, "torch", torch.device("cpu"))
    for i, (row, n) in enumerate(zip(layout.rows.tolist(), [n for n in lengths if n])):
        want_y, want_state = conv(x[row : row + 1, T - n :], dense, state[row : row + 1])
        torch.testing.assert_close(y[row, T - n :], want_y[0])
        torch.testing.assert_close(new_state[i], want_state[0])


@pytest.mark.parametrize("gates", ["kda", "gdn"])
def test_kda_and_gdn_mixers_are_the_tied_recurrence(gates):
    """A `kda` / `gdn` mixer's output equals fla's KDA / Gated DeltaNet reference run on the mixer's own projections:
    one beta per head for erase and write, channel-wise (kda) or scalar (gdn) decay."""
    import torch.nn.functional as F

    from gdn2_eval.kernels.gdn2.naive import l2norm
    from gdn2_eval.model.layout import TokenLayout

    model = tiny_model("recurrent", seed=2, gates=gates)
    mixer = model.model.layers[0].attn
    assert not hasattr(mixer, "b_proj") and not hasattr(mixer, "w_proj")
    H, dk = mixer.num_heads, mixer.head_k_dim
    x = torch.randn(2, 50, model.config.hidden_size)
    layout = TokenLayout.build(2, 50, None, None, "torch", torch.device("cpu"))
    with torch.no_grad():
        got = mixer(x, layout, None)
        q = F.silu(mixer.q_conv1d(mixer.q_proj(x), layout, None)[0]).view(2, 50, H, dk)
        k = F.silu(mixer.k_conv1d(mixer.k_proj(x), layout, None)[0]).view(2, 50, H, dk)
        v = F.silu(mixer.v_conv1d(mixer.v_proj(x), layout, None)[0]).view(2, 50, H, -1)
        beta = torch.sigmoid(mixer.beta_proj(x))
        g, b, w = mixer.gates(x)
        assert torch.equal(b.view(2, 50, H, dk), beta[..., None].expand(-1, -1, -1, dk))
        assert torch.equal(w.view(2, 50, H, -1), beta[..., None].expand_as(v))
        q, k = l2norm(q.double()), l2norm(k.double())
        if gates == "kda":
            from fla.ops.kda.naive import naive_recurrent_kda

            o, _ = naive_recurrent_kda(q, k, v.double(), g.view(2, 50, H, dk).double(), beta.double())
        else:
            from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

            g = g.view(2, 50, H, dk)
            assert torch.equal(g, g[..., :1].expand_as(g))  # one decay per head
            o, _ = naive_recurrent_gated_delta_rule(q, k, v.double(), beta.double(), g[..., 0].double())
        u = mixer.g_proj(x).view(2, 50, H, -1)
        want = mixer.o_proj((mixer.o_norm(o.float()) * F.silu(u.float())).reshape(2, 50, -1))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_tied_gate_configs_reject_what_does_not_apply():
    from gdn2_eval.errors import UserError

    for bad in (dict(gates="kda", gate_ablation="scalar_erase"), dict(gates="gdn", gdn2_num_v_heads=8),
                dict(gates="retnet")):
        with pytest.raises(UserError, match="gates"):
            tiny_model("recurrent", **bad)


def test_decay_init_ranges_are_config_fields():
    """The initial decay a * softplus(dt_bias) follows `decay_init_a` / `decay_init_dt` (default: the spec's
    U(1, 16) per head and log-uniform 1e-3..1e-1 per channel); bad ranges are refused."""
    import torch.nn.functional as F

    from gdn2_eval.errors import UserError

    def ranges(**fields):
        model = GDN2ForCausalLM(tiny_config("recurrent", **fields))  # tiny_model() would re-draw the gates
        a = torch.cat([m.A_log.exp() for m in model.modules() if hasattr(m, "A_log")])
        dt = torch.cat([F.softplus(m.dt_bias) for m in model.modules() if hasattr(m, "dt_bias")])
        return a.min().item(), a.max().item(), dt.min().item(), dt.max().item()

    a_lo, a_hi, dt_lo, dt_hi = ranges()
    assert 1 <= a_lo and a_hi <= 16 and a_hi - a_lo > 1 and 1e-3 * 0.999 <= dt_lo and dt_hi <= 0.1 * 1.001
    a_lo, a_hi, dt_lo, dt_hi = ranges(decay_init_a=(1.0, 2.0), decay_init_dt=(1e-4, 1e-2))
    assert 1 <= a_lo and a_hi <= 2 and 1e-4 * 0.999 <= dt_lo and dt_hi <= 1e-2 * 1.001 and dt_lo < 1e-3
    with pytest.raises(UserError, match="decay_init_dt"):
        tiny_config("recurrent", decay_init_dt=(1e-2, 1e-4))
