"""The inference path (`gdn2_eval.inference`, `kernels/{conv,gates,norm,swiglu}`) against the reference.

Each fused Triton kernel runs here under Triton's interpreter (conftest sets it without a GPU) and is held against its
PyTorch reference on random inputs; the packed model is held against the reference model on the same weights for
every gate kind, padding, state carry across chunks, the decode step and the saved checkpoint layout."""

from __future__ import annotations

import pytest
import torch

from gdn2_eval import GDN2ForCausalLM
from gdn2_eval.generation import EagerDecoder, GraphDecoder, decode, greedy_generate, prefill
from gdn2_eval.inference import GDN2InferenceForCausalLM
from gdn2_eval.kernels.conv.naive import short_conv_step_ref, short_conv_varlen_ref
from gdn2_eval.kernels.conv.short_conv import short_conv_step, short_conv_varlen
from gdn2_eval.kernels.gates.gdn2_gates import gdn2_gates
from gdn2_eval.kernels.gates.naive import GateLayout, gdn2_gates_ref
from gdn2_eval.kernels.norm.naive import add_rms_norm_ref, gated_rms_norm_ref
from gdn2_eval.kernels.norm.rms_norm import add_rms_norm, gated_rms_norm
from gdn2_eval.kernels.swiglu.naive import swiglu_ref
from gdn2_eval.kernels.swiglu.swiglu import swiglu
from gdn2_eval.model.layout import TokenLayout

from conftest import tiny_model

DTYPES = [torch.float32, torch.bfloat16]


def tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def packed_layout(lengths: list[int]) -> TokenLayout:
    T = max(lengths)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, T - n :] = 1
    return TokenLayout.build(len(lengths), T, mask, None, "torch", torch.device("cpu"), packed=True)


# ---- kernels -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_short_conv_varlen_kernel_matches_reference(dtype, with_state):
    g = torch.Generator().manual_seed(0)
    lengths = [1, 2, 9, 70, 3]  # shorter and longer than the kernel, one past a token block
    lay = packed_layout(lengths)
    splits = (32, 32, 64)
    C = sum(splits)
    P = torch.randn(lay.seq_index.numel(), C + 24, generator=g).to(dtype)  # the conv reads a column slice in place
    x = P[:, :C]
    weight = torch.randn(C, 4, generator=g).to(dtype)
    rows = torch.tensor([3, 0, 4, 1, 6])  # cache rows of the sequences, not in order
    state = torch.randn(7, 3, C, generator=g).to(dtype) if with_state else None
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
    x = torch.randn(5, C + 8, generator=g).to(dtype)[:, :C]
    weight = torch.randn(C, 4, generator=g).to(dtype)
    state = torch.randn(5, 3, C, generator=g).to(dtype)
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
    P = (3 * torch.randn(T, 400, generator=g)).to(dtype)
    f = (3 * torch.randn(T, H * K + 5, generator=g)).to(dtype)[:, : H * K] if kind != "gdn" else None
    lay = GateLayout(kind, H, HV, K, V, off_b=7, off_w=7 + H * K if kind == "gdn2" else 0,
                     off_a=300 if kind == "gdn" else 0, neg_eigval=neg, ablation=ablation)
    A_log = torch.randn(H, generator=g).to(dtype)
    dt_bias = torch.randn(H if kind == "gdn" else H * K, generator=g).to(dtype)
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
    x = torch.randn(11, 72, generator=g).to(dtype)  # D not a power of two
    y = torch.randn(11, 72, generator=g).to(dtype) if with_residual else None
    w = torch.randn(72, generator=g).to(dtype)
    ref_s, ref_h = add_rms_norm_ref(x.clone(), y, w, 1e-5)
    s, h = add_rms_norm(x, y, w, 1e-5)
    # the residual is rounded once, as the reference rounds it (exact on a GPU; the interpreter's bf16 cast rounds
    # toward zero, so within one bf16 step here)
    torch.testing.assert_close(s, ref_s, **(dict(atol=0, rtol=0) if dtype == torch.float32 else tol(dtype)))
    torch.testing.assert_close(h, ref_h, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["silu", "sigmoid"])
def test_gated_rms_norm_kernel_matches_reference(dtype, act):
    g = torch.Generator().manual_seed(4)
    o = torch.randn(13, 3, 32, generator=g).to(dtype)
    u = torch.randn(13, 96, generator=g).to(dtype)
    w = torch.randn(32, generator=g).to(dtype)
    torch.testing.assert_close(gated_rms_norm(o, u, w, 1e-5, act), gated_rms_norm_ref(o, u, w, 1e-5, act), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_kernel_matches_reference(dtype):
    ab = torch.randn(9, 2 * 150, generator=torch.Generator().manual_seed(5)).to(dtype)
    torch.testing.assert_close(swiglu(ab), swiglu_ref(ab), **tol(dtype))


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
    ref = tiny_model(kind, seed=3, **fields)
    fused = tiny_model(kind, seed=3, impl="inference", **fields)
    ids = torch.randint(4, 250, (3, 45))
    mask = torch.ones_like(ids)
    mask[1, :20] = 0  # left padding
    mask[2, 40:] = 0  # right padding
    with torch.no_grad():
        want, got = ref(ids, attention_mask=mask).logits, fused(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=3e-5, rtol=3e-5)
    assert got[2, 40:].abs().max() == 0  # pad slots get zero logits, as in the reference


@pytest.mark.parametrize("kind", ["recurrent", "hybrid"])
def test_inference_model_carries_the_reference_state_and_decodes_the_same_tokens(kind):
    ref = tiny_model(kind, seed=5)
    fused = tiny_model(kind, seed=5, impl="inference")
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


def test_inference_model_saves_the_reference_checkpoint_layout(tmp_path):
    ref = tiny_model("hybrid", seed=8)
    want = {k: v.clone() for k, v in ref.state_dict().items()}
    fused = GDN2InferenceForCausalLM.from_reference(ref)
    got = fused.to_reference().state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    fused.save_pretrained(tmp_path / "saved")
    loaded = GDN2ForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(4, 250, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fused(ids).logits, atol=3e-5, rtol=3e-5)
    assert not any("w_in" in k or "w12" in k for k in loaded.state_dict())
