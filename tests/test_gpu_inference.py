"""The inference path on the GPU (`python -m pytest -m gpu`): compiled Triton kernels against their references
(with the exact rounding the interpreter cannot show), and the packed model against the reference model."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model

pytestmark = pytest.mark.gpu


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_compiled_norm_and_swiglu_round_exactly_as_the_reference():
    from gdn2_eval.kernels.norm.naive import add_rms_norm_ref
    from gdn2_eval.kernels.norm.rms_norm import add_rms_norm
    from gdn2_eval.kernels.swiglu.naive import swiglu_ref
    from gdn2_eval.kernels.swiglu.swiglu import swiglu

    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(300, 2304, device="cuda", generator=g).bfloat16()
    y = torch.randn(300, 2304, device="cuda", generator=g).bfloat16()
    w = torch.randn(2304, device="cuda", generator=g).bfloat16()
    ref_s, ref_h = add_rms_norm_ref(x.clone(), y, w, 1e-5)
    s, h = add_rms_norm(x, y, w, 1e-5)
    assert torch.equal(s, ref_s)
    assert rel_err(h, ref_h) < 4e-3
    ab = torch.randn(300, 2 * 6208, device="cuda", generator=g).bfloat16()
    assert torch.equal(swiglu(ab), swiglu_ref(ab))


@pytest.mark.parametrize("kind", ["hybrid", "recurrent"])
@pytest.mark.parametrize("kernel", ["fla", "triton"])
def test_inference_path_matches_reference_path_on_the_gpu(kind, kernel):
    from gdn2_eval.inference import GDN2InferenceForCausalLM

    if kernel == "fla":
        pytest.importorskip("fla")
    ref = tiny_model(kind, seed=4, kernel=kernel).cuda()
    ids = torch.randint(4, 250, (3, 300), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :111] = 0
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).logits
        fused = GDN2InferenceForCausalLM.from_reference(ref)
        got = fused(ids, attention_mask=mask).logits
    assert rel_err(got, want) < 1e-4  # float32: the fused GEMMs only reorder sums


def test_compiled_decode_step_matches_its_reference_at_model_shapes():
    from gdn2_eval.kernels.decode.fused_step import fused_decode_step
    from gdn2_eval.kernels.decode.naive import decode_step_ref
    from gdn2_eval.kernels.gates.naive import GateLayout

    g = torch.Generator("cuda").manual_seed(1)
    B, H, K, V = 16, 16, 128, 128
    C = 2 * H * K + H * V
    lay = GateLayout("gdn2", H, H, K, V, off_b=C, off_w=C + H * K, off_a=0)
    r = lambda *s, scale=1.0: (scale * torch.randn(*s, device="cuda", generator=g)).bfloat16()  # noqa: E731
    P, f, u = r(B, C + H * K + H * V + 256), r(B, H * K), r(B, H * V)
    conv_w, conv_state = r(C, 4, scale=0.5), r(B, 3, C)
    state = torch.randn(B, H, K, V, device="cuda", generator=g)
    args = (r(H, scale=0.5), r(H * K), 1 + r(V, scale=0.1), lay, 1e-5, "silu", K**-0.5, True)
    ref_conv, ref_state = conv_state.clone(), state.clone()
    y = fused_decode_step(P, f, u, conv_w, conv_state, state, *args)
    want = decode_step_ref(P, f, u, conv_w, ref_conv, ref_state, *args)
    assert torch.equal(conv_state, ref_conv)
    assert rel_err(state, ref_state) < 1e-5
    assert rel_err(y, want) < 1e-2  # bf16 output of a norm over sums taken in another order


@pytest.mark.parametrize("kernel", ["triton", "auto"])  # `auto` prefills with fla's kernels, steps with the fused one
def test_graph_captured_fused_step_decodes_the_reference_tokens(kernel, monkeypatch):
    from gdn2_eval.generation import greedy_generate
    from gdn2_eval.inference.model import FusedGDN2Mixer

    calls = []
    fused_step = FusedGDN2Mixer._fused_step
    monkeypatch.setattr(FusedGDN2Mixer, "_fused_step", lambda self, *a: calls.append(1) or fused_step(self, *a))
    ref = tiny_model("recurrent", seed=5).cuda()
    fused = tiny_model("recurrent", seed=5, impl="inference", kernel=kernel).cuda()
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(4, 250, (n,), generator=g).tolist() for n in (3, 300, 70)]
    want = greedy_generate(ref, prompts, 16, cuda_graph=False)
    assert greedy_generate(fused, prompts, 16, cuda_graph=True) == want
    assert calls  # traced into the captured graph
