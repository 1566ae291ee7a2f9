"""The inference path (`gdn2_eval.inference`, `kernels/{conv,gates,norm,swiglu}`) against the reference.

Each fused Triton kernel runs under Triton's interpreter on the CPU (conftest sets it without a GPU) and compiled on a
GPU, and is held against its PyTorch reference on random inputs; the packed model is held against the reference model
on the same weights for every gate kind, padding, state carry across chunks, the decode step and the saved checkpoint
layout."""

from __future__ import annotations

import pytest
import torch

from gdn2_eval import GDN2ForCausalLM
from gdn2_eval.generation import EagerDecoder, GraphDecoder, decode, greedy_generate, prefill
from gdn2_eval.inference import GDN2InferenceForCausalLM
from gdn2_eval.kernels.conv.naive import short_conv_step_ref, short_conv_varlen_ref
from gdn2_eval.kernels.conv.short_conv import short_conv_step, short_conv_varlen
from gdn2_eval.kernels.decode.fused_step import fused_decode_step
from gdn2_eval.kernels.decode.naive import decode_step_ref
from gdn2_eval.kernels.gates.gdn2_gates import gdn2_gates
from gdn2_eval.kernels.gates.naive import GateLayout, gdn2_gates_ref
from gdn2_eval.kernels.norm.naive import add_rms_norm_ref, gated_rms_norm_ref
from gdn2_eval.kernels.norm.rms_norm import add_rms_norm, gated_rms_norm
from gdn2_eval.kernels.swiglu.naive import swiglu_ref
from gdn2_eval.kernels.swiglu.swiglu import swiglu
from gdn2_eval.model.layout import TokenLayout

from conftest import KERNEL_DEVICE as DEV
from conftest import prefill_and_step_both, tiny_model

DTYPES = [torch.float32, torch.bfloat16]


def tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def packed_layout(lengths: list[int]) -> TokenLayout:
    T = max(lengths)
    mask = torch.zeros(len(lengths), T, dtype=torch.long, device=DEV)
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
    return TokenLayout.build(len(lengths), T, mask, None, "torch", torch.device(DEV), packed=True)


# ---- kernels -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_short_conv_varlen_kernel_matches_reference(dtype, with_state):
    g = torch.Generator().manual_seed(0)
    lengths = [1, 2, 9, 70, 3]  # shorter and longer than the kernel, one past a token block
    lay = packed_layout(lengths)
    splits = (32, 32, 64)
    C = sum(splits)
    P = torch.randn(lay.seq_index.numel(), C + 24, generator=g).to(DEV, dtype)  # the conv reads a column slice in place
    x = P[:, :C]
    weight = torch.randn(C, 4, generator=g).to(DEV, dtype)
    rows = torch.tensor([3, 0, 4, 1, 6], device=DEV)  # cache rows of the sequences, not in order
    state = torch.randn(7, 3, C, generator=g).to(DEV, dtype) if with_state else None
    args = (x, weight, lay.cu_seqlens, lay.seq_index, lay.pos_in_call, state, rows if with_state else None, splits)
    outs, new_state = short_conv_varlen(*args)
    ref_outs, ref_state = short_conv_varlen_ref(x, weight, lay.cu_seqlens, state, rows if with_state else None,
                                                splits)
    for got, want in zip(outs, ref_outs):
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, **tol(dtype))
    torch.testing.assert_close(new_state, ref_state, atol=0, rtol=0)  # copies of inputs, exactly


@pytest.mark.parametrize("dtype", DTYPES)
def test_short_conv_step_kernel_matches_reference_and_updates_state_in_place(dtype):
    g = torch.Generator().manual_seed(1)
    splits = (16, 16, 32)
    C = sum(splits)
    x = torch.randn(5, C + 8, generator=g).to(DEV, dtype)[:, :C]
    weight = torch.randn(C, 4, generator=g).to(DEV, dtype)
    state = torch.randn(5, 3, C, generator=g).to(DEV, dtype)
    ref_state = state.clone()
    address = state.data_ptr()
    outs = short_conv_step(x, weight, state, splits)
    ref = short_conv_step_ref(x, weight, ref_state, splits)
    for got, want in zip(outs, ref):
        torch.testing.assert_close(got, want, **tol(dtype))
    assert state.data_ptr() == address
    torch.testing.assert_close(state, ref_state, atol=0, rtol=0)


GATE_CASES = [
    ("gdn2", False, "none", 4, 4),
    ("gdn2", True, "none", 2, 4),  # negative eigenvalues, grouped value heads
    ("gdn2", True, "scalar_erase", 4, 4),
    ("gdn2", False, "scalar_write", 2, 4),
    ("kda", False, "none", 4, 4),
    ("gdn", False, "none", 4, 4),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, neg, ablation, H, HV", GATE_CASES)
def test_gates_kernel_matches_reference(kind, neg, ablation, H, HV, dtype):
    g = torch.Generator().manual_seed(2)
    K = V = 16
    T = 37
    P = (3 * torch.randn(T, 400, generator=g)).to(DEV, dtype)
    f = (3 * torch.randn(T, H * K + 5, generator=g)).to(DEV, dtype)[:, : H * K] if kind != "gdn" else None
    lay = GateLayout(kind, H, HV, K, V, off_b=7, off_w=7 + H * K if kind == "gdn2" else 0,
                     off_a=300 if kind == "gdn" else 0, neg_eigval=neg, ablation=ablation)
    A_log = torch.randn(H, generator=g).to(DEV, dtype)
    dt_bias = torch.randn(H if kind == "gdn" else H * K, generator=g).to(DEV, dtype)
    got = gdn2_gates(P, f, A_log, dt_bias, lay)
    want = gdn2_gates_ref(P, f, A_log, dt_bias, lay)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)  # the decay is float32 from either input
    for a, b in zip(got[1:], want[1:]):  # bf16 gates: within two bf16 steps (the interpreter rounds toward zero)
        torch.testing.assert_close(a, b, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_kernel_matches_reference(dtype, with_residual):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 72, generator=g).to(DEV, dtype)  # D not a power of two
    y = torch.randn(11, 72, generator=g).to(DEV, dtype) if with_residual else None
    w = torch.randn(72, generator=g).to(DEV, dtype)
    ref_s, ref_h = add_rms_norm_ref(x.clone(), y, w, 1e-5)
    s, h = add_rms_norm(x, y, w, 1e-5)
    # the residual is rounded once, as the reference rounds it (exact on a GPU; the interpreter's bf16 cast rounds
    # toward zero, so within one bf16 step here)
    torch.testing.assert_close(s, ref_s, **(dict(atol=0, rtol=0) if dtype == torch.float32 else tol(dtype)))
    torch.testing.assert_close(h, ref_h, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["silu", "sigmoid"])
@pytest.mark.parametrize("u_in_wider_rows", [False, True])
def test_gated_rms_norm_kernel_matches_reference(dtype, act, u_in_wider_rows):
    g = torch.Generator().manual_seed(4)
    o = torch.randn(13, 3, 32, generator=g).to(DEV, dtype)
    # the decode step's u is the right half of the two gate branches' one GEMM output
    wide = torch.randn(13, 96 + 40, generator=g).to(DEV, dtype)
    u = wide[:, 40:] if u_in_wider_rows else torch.randn(13, 96).to(DEV, dtype)
    w = torch.randn(32, generator=g).to(DEV, dtype)
    torch.testing.assert_close(gated_rms_norm(o, u, w, 1e-5, act), gated_rms_norm_ref(o, u, w, 1e-5, act), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_kernel_matches_reference(dtype):
    ab = torch.randn(9, 2 * 150, generator=torch.Generator().manual_seed(5)).to(DEV, dtype)
    torch.testing.assert_close(swiglu(ab), swiglu_ref(ab), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act, block_v", [("silu", None), ("sigmoid", 4)])  # one program per head, and four
@pytest.mark.parametrize("kind, neg, ablation, H, HV", GATE_CASES)
def test_decode_step_kernel_matches_reference_and_updates_both_states_in_place(kind, neg, ablation, H, HV, act,
                                                                                 block_v, dtype):
    g = torch.Generator().manual_seed(7)
    B, K, V, KS = 3, 16, 16, 4
    C = 2 * H * K + HV * V
    off_b = C + 5
    lay = GateLayout(kind, H, HV, K, V, off_b=off_b, off_w=off_b + H * K if kind == "gdn2" else 0,
                     off_a=off_b + H if kind == "gdn" else 0, neg_eigval=neg, ablation=ablation)
    P = (2 * torch.randn(B, off_b + H * K + HV * V + 3, generator=g)).to(DEV, dtype)
    f = (2 * torch.randn(B, H * K + 5, generator=g)).to(DEV, dtype)[:, : H * K] if kind != "gdn" else None
    u = torch.randn(B, HV * V + 7, generator=g).to(DEV, dtype)[:, 7:]  # a slice of a wider GEMM's rows, as in the model
    conv_w = (0.5 * torch.randn(C, KS, generator=g)).to(DEV, dtype)
    conv_state = torch.randn(B, KS - 1, C, generator=g).to(DEV, dtype)
    state = torch.randn(B, HV, K, V, generator=g).to(DEV)
    A_log = (0.5 * torch.randn(H, generator=g)).to(DEV, dtype)
    dt_bias = torch.randn(H if kind == "gdn" else H * K, generator=g).to(DEV, dtype)
    norm_w = (1 + 0.1 * torch.randn(V, generator=g)).to(DEV, dtype)
    ref_conv, ref_state = conv_state.clone(), state.clone()
    addresses = conv_state.data_ptr(), state.data_ptr()
    args = (A_log, dt_bias, norm_w, lay, 1e-5, act, K**-0.5, True)
    y = fused_decode_step(P, f, u, conv_w, conv_state, state, *args, block_v=block_v)
    want = decode_step_ref(P, f, u, conv_w, ref_conv, ref_state, *args)
    assert y.dtype == dtype and y.shape == (B, HV * V)
    torch.testing.assert_close(y, want, **tol(dtype))
    assert (conv_state.data_ptr(), state.data_ptr()) == addresses
    torch.testing.assert_close(conv_state, ref_conv, atol=0, rtol=0)  # a shift of inputs: exact
    torch.testing.assert_close(state, ref_state, **(tol(torch.float32) if dtype == torch.float32 else tol(dtype)))
    assert not torch.equal(state, state.new_zeros(()).expand_as(state))


def test_decode_step_kernel_names_a_bad_state():
    lay = GateLayout("gdn2", 2, 2, 16, 16, off_b=96, off_w=128, off_a=0)

    def rand(*shape):
        return torch.randn(*shape, device=DEV)

    P, f, u, conv_w, conv = rand(2, 200), rand(2, 32), rand(2, 32), rand(96, 4), rand(2, 3, 96)
    args = (rand(2), rand(32), rand(16), lay, 1e-5, "silu", 0.25, True)
    with pytest.raises(ValueError, match="state must be contiguous float32"):
        fused_decode_step(P, f, u, conv_w, conv, rand(2, 2, 16, 16).double(), *args)
    with pytest.raises(ValueError, match="conv state"):
        fused_decode_step(P, f, u, conv_w, conv[:, :2], rand(2, 2, 16, 16), *args)


# ---- the model ---------------------------------------------------------------------------------------------------
MODEL_CASES = [
    ("recurrent", {}),
    ("hybrid", {}),
    ("recurrent", {"gates": "kda"}),
    ("recurrent", {"gates": "gdn"}),
    ("recurrent", {"allow_neg_eigval": True, "gate_ablation": "scalar_erase"}),
    ("recurrent", {"gate_ablation": "scalar_write", "output_gate_act": "sigmoid"}),
    ("recurrent", {"gdn2_num_v_heads": 8}),
]


@pytest.mark.parametrize("kind, fields", MODEL_CASES)
def test_inference_model_gives_the_reference_logits(kind, fields):
    ref = tiny_model(kind, seed=3, **fields).to(DEV)
    fused = tiny_model(kind, seed=3, impl="inference", **fields).to(DEV)
    ids = torch.randint(4, 250, (3, 45)).to(DEV)
    mask = torch.ones_like(ids)
    mask[1, :20] = 0  # left padding
    mask[2, 40:] = 0  # right padding
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, fused(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=3e-5, rtol=3e-5)
    assert got[2, 40:].abs().max() == 0  # pad slots get zero logits, as in the reference


@pytest.mark.parametrize("kind", ["recurrent", "hybrid"])
def test_inference_model_carries_the_reference_state_and_decodes_the_same_tokens(kind):
    ref = tiny_model(kind, seed=5).to(DEV)
    fused = tiny_model(kind, seed=5, impl="inference").to(DEV)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(4, 250, (n,), generator=g).tolist() for n in (3, 30, 17)]
    # a prefill in several chunks (8 tokens per forward), then the cache contents against the reference's
    cache_r, last_r = prefill(ref, prompts, 0, chunk_tokens=24)
    cache_f, last_f = prefill(fused, prompts, 0, chunk_tokens=24)
    torch.testing.assert_close(last_f, last_r, atol=3e-5, rtol=3e-5)
    for lr, lf in zip(cache_r.layers, cache_f.layers):
        if "recurrent" in lr:
            torch.testing.assert_close(lf["recurrent"], lr["recurrent"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lf["conv"], torch.cat(lr["conv"], -1), atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(lf["k"], lr["k"], atol=1e-5, rtol=1e-5)
    # greedy decoding: the eager loop, and the fixed-buffer step the CUDA graph captures, give the reference's tokens
    want = greedy_generate(ref, prompts, 12, cuda_graph=False, chunk_tokens=24)
    assert greedy_generate(fused, prompts, 12, cuda_graph=False, chunk_tokens=24) == want
    cache, last = prefill(fused, prompts, 0, chunk_tokens=24)
    states = [layer["recurrent"] for layer in cache.layers if "recurrent" in layer]
    decoder = GraphDecoder(fused, cache, last.argmax(-1), capture=False)
    buffers = [layer["recurrent"].data_ptr() for layer in decoder.cache.layers if "recurrent" in layer]
    assert decode(decoder, len(prompts), 12, (), 0, None, 4) == want
    # the step wrote its states where they were: nothing for the captured graph to copy back
    assert [layer["recurrent"].data_ptr() for layer in decoder.cache.layers if "recurrent" in layer] == buffers
    assert all(s.abs().sum() > 0 for s in states)
    eager = EagerDecoder(fused, prefill(fused, prompts, 0, chunk_tokens=24)[0], last.argmax(-1))
    assert decode(eager, len(prompts), 12, (), 0, None, 4) == want


STEP_CASES = [case for case in MODEL_CASES if case[0] == "recurrent"] + [("hybrid", {})]


@pytest.mark.parametrize("kind, fields", STEP_CASES)
def test_fused_decode_step_gives_the_reference_logits_and_states(kind, fields, monkeypatch):
    """With the project's kernels (`kernel=triton`, interpreted here) a decode step is one fused kernel per mixer."""
    from gdn2_eval.inference.model import FusedGDN2Mixer

    calls = []
    fused_step = FusedGDN2Mixer._fused_step
    monkeypatch.setattr(FusedGDN2Mixer, "_fused_step", lambda self, *a: calls.append(1) or fused_step(self, *a))
    ref = tiny_model(kind, seed=9, **fields).to(DEV)
    fused = tiny_model(kind, seed=9, impl="inference", **{**fields, "kernel": "triton"}).to(DEV)
    def prefill_ran_the_chunked_path():
        assert not calls

    cache_r, cache_f, prompts = prefill_and_step_both(ref, fused, 4, prefill_ran_the_chunked_path)
    assert len(calls) == 4 * sum(b.layer_type == "gdn2" for b in fused.layers)
    for lr, lf in zip(cache_r.layers, cache_f.layers):
        if "recurrent" in lr:
            torch.testing.assert_close(lf["recurrent"], lr["recurrent"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lf["conv"], torch.cat(lr["conv"], -1), atol=1e-6, rtol=1e-6)
    if fields:  # the decode loops once per model kind (the interpreter is slow)
        return
    # the fixed-buffer step a CUDA graph captures, and the eager loop, decode the reference's tokens
    want = greedy_generate(ref, prompts, 6, cuda_graph=False, chunk_tokens=32)
    assert greedy_generate(fused, prompts, 6, cuda_graph=False, chunk_tokens=32) == want
    cache, last = prefill(fused, prompts, 0, chunk_tokens=32)
    assert decode(GraphDecoder(fused, cache, last.argmax(-1), capture=False), 3, 6, (), 0, None, 2) == want


def test_inference_model_saves_the_reference_checkpoint_layout(tmp_path):
    ref = tiny_model("hybrid", seed=8)
    want = {k: v.clone() for k, v in ref.state_dict().items()}
    fused = GDN2InferenceForCausalLM.from_reference(ref)
    got = fused.to_reference().state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    fused.save_pretrained(tmp_path / "saved")
    loaded = GDN2ForCausalLM.from_pretrained(tmp_path / "saved").eval().to(DEV)
    fused, ids = fused.to(DEV), torch.randint(4, 250, (1, 30)).to(DEV)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fused(ids).logits, atol=3e-5, rtol=3e-5)
    assert not any("w_in" in k or "w12" in k for k in loaded.state_dict())
