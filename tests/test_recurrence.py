"""The PyTorch recurrence paths against float64 references; tied gates against KDA and Gated DeltaNet."""

from __future__ import annotations

import pytest
import torch

from gdn2_eval.kernels.gdn2.naive import l2norm, naive_chunk_gdn2, naive_recurrent_gdn2, naive_varlen
from gdn2_eval.kernels.gdn2.torch_impl import chunk_gdn2_torch, recurrent_gdn2_torch


def inputs(B, T, H, K, V, seed=0, decay=0.5):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=g), torch.randn(B, T, H, K, generator=g)
    v = torch.randn(B, T, H, V, generator=g)
    gate = -torch.rand(B, T, H, K, generator=g) * decay
    b, w = torch.rand(B, T, H, K, generator=g), torch.rand(B, T, H, V, generator=g)
    return q, k, v, gate, b, w


def assert_f32_close(got: torch.Tensor, ref: torch.Tensor, what: str, rel: float = 2e-6) -> None:
    err = (got.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * max(scale, 1.0), f"{what}: max abs error {err:.3g} (reference scale {scale:.3g})"


@pytest.mark.parametrize("T", [1, 37, 64, 130, 200])
@pytest.mark.parametrize("fn", [chunk_gdn2_torch, recurrent_gdn2_torch], ids=["chunk", "recurrent"])
def test_torch_paths_match_float64_reference(T, fn):
    x = inputs(2, T, 3, 16, 32, seed=T)
    h0 = torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(1))
    ref_o, ref_s = naive_recurrent_gdn2(*x, initial_state=h0)
    o, s = fn(*x, initial_state=h0, output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert_f32_close(o, ref_o, "output")
    assert_f32_close(s, ref_s, "final state")


def test_spec_chunkwise_form_equals_token_by_token():
    x = inputs(1, 150, 2, 8, 8, seed=3)
    o1, s1 = naive_recurrent_gdn2(*x)
    o2, s2 = naive_chunk_gdn2(*x)
    assert (o1 - o2).abs().max() < 1e-10 and (s1 - s2).abs().max() < 1e-10


def test_varlen_sequences_of_different_lengths_reset_state():
    x = [t[:1] for t in inputs(1, 190, 2, 16, 16, seed=5)]
    cu = torch.tensor([0, 3, 70, 190])
    h0 = torch.randn(3, 2, 16, 16)
    ref_o, ref_s = naive_varlen(naive_recurrent_gdn2, *x, cu_seqlens=cu, initial_state=h0)
    for fn in (chunk_gdn2_torch, recurrent_gdn2_torch):
        o, s = fn(*x, cu_seqlens=cu, initial_state=h0, output_final_state=True)
        assert o.shape == (1, 190, 2, 16) and s.shape == (3, 2, 16, 16)
        assert_f32_close(o, ref_o, f"{fn.__name__} varlen output")
        assert_f32_close(s, ref_s, f"{fn.__name__} varlen state")


def test_strong_decay_stays_finite_and_correct():
    # cumulative log-decay of ~ -3000 within a chunk: the spec's K / gamma form would overflow in float32
    x = list(inputs(1, 128, 2, 16, 16, seed=7, decay=100.0))
    o, s = chunk_gdn2_torch(*x, output_final_state=True)
    ref_o, ref_s = naive_recurrent_gdn2(*x)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    # float32 rounding of a cumulative log-decay of ~3000 is ~4e-4 in the exponent: that, not the algorithm,
    # bounds the agreement here (fla's kernels form the same cumulative sums)
    assert_f32_close(o, ref_o, "strong decay output", rel=1e-4)


def test_bf16_inputs_give_bf16_outputs_fp32_state():
    x = inputs(1, 70, 2, 16, 16, seed=9)
    xb = [t.bfloat16() if i != 3 else t for i, t in enumerate(x)]
    o, s = chunk_gdn2_torch(*xb, output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    ref_o, _ = naive_recurrent_gdn2(*[t.float() for t in xb])
    assert (o.double() - ref_o).abs().max() < 2e-2 * ref_o.abs().max()


def kda_reference(q, k, v, g, beta, scale):
    """KDA from its own definition: S <- Diag(exp g) S; S <- S + beta k (v - S^T k)^T; o = S^T q * scale."""
    B, T, H, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64)
    o = torch.empty(B, T, H, v.shape[-1], dtype=torch.float64)
    q, k, v, g, beta = (t.double() for t in (q, k, v, g, beta))
    for t in range(T):
        S = S * g[:, t].exp()[..., None]
        pred = torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * (v[:, t] - pred)[:, :, None, :]
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S)
    return o


@pytest.mark.parametrize("scalar_decay", [False, True], ids=["kda", "gated_deltanet"])
def test_tied_gates_reproduce_kda_and_gated_deltanet(scalar_decay):
    q, k, v, g, _, _ = inputs(2, 100, 2, 16, 16, seed=11)
    k = l2norm(k)
    if scalar_decay:
        g = g[..., :1].expand_as(g).contiguous()
    beta = torch.rand(2, 100, 2)
    b = beta[..., None].expand_as(k).contiguous()
    w = beta[..., None].expand_as(v).contiguous()
    o, _ = chunk_gdn2_torch(q, k, v, g, b, w, use_qk_l2norm=False)
    assert_f32_close(o, kda_reference(q, k, v, g, beta, 16**-0.5), "tied GDN-2 vs KDA definition")
    fla_naive = pytest.importorskip("fla.ops.kda.naive")
    ref, _ = fla_naive.naive_recurrent_kda(q.double(), k.double(), v.double(), g.double(), beta.double())
    assert_f32_close(o, ref.double(), "tied GDN-2 vs fla naive_recurrent_kda")
    if scalar_decay:
        gdn = pytest.importorskip("fla.ops.gated_delta_rule.naive")
        ref, _ = gdn.naive_recurrent_gated_delta_rule(
            q.double(), k.double(), v.double(), beta.double(), g[..., 0].double()
        )
        assert_f32_close(o, ref.double(), "tied GDN-2 vs fla naive_recurrent_gated_delta_rule")
