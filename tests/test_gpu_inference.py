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
