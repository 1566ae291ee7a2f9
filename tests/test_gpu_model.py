"""GPU checks of the model (run on the GPU machine: `python -m pytest -m gpu`)."""

from __future__ import annotations

import pytest
import torch

from conftest import IMPLS, tiny_model

pytestmark = pytest.mark.gpu


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("kind", ["hybrid", "recurrent"])
def test_fla_path_matches_torch_path(kind):
    pytest.importorskip("fla")
    model = tiny_model(kind).cuda()
    ids = torch.randint(4, 250, (2, 300), device="cuda")
    with torch.no_grad():
        model.config.kernel = "torch"
        ref = model(ids).logits
        model.config.kernel = "fla"
        got = model(ids).logits
    assert rel_err(got, ref) < 1e-3


def test_fla_path_padding_and_generation():
    pytest.importorskip("fla")
    model = tiny_model("hybrid", kernel="fla").cuda()
    ids = torch.randint(4, 250, (2, 200), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :130] = 0  # left padding
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, 130:]).logits
        assert rel_err(batched[1, 130:], alone[0]) < 1e-3
        out = model.generate(ids[:1, :50], max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
        seq = ids[:1, :50]
        for _ in range(20):
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["hybrid", "recurrent"])
@pytest.mark.parametrize("kernel", ["torch", "fla"])
def test_cuda_graph_decoding_equals_eager_decoding(kind, kernel, impl):
    """The captured-and-replayed decode step gives the eager loop's tokens (prompts shorter and longer than the
    hybrid's window, one row finishing early through a stop check)."""
    from gdn2_eval.generation import greedy_generate

    if kernel == "fla":
        pytest.importorskip("fla")
    model = tiny_model(kind, seed=7, kernel=kernel).cuda()
    if impl == "inference":
        from gdn2_eval.inference import GDN2InferenceForCausalLM

        model = GDN2InferenceForCausalLM.from_reference(model)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(4, 250, (n,), generator=g).tolist() for n in (3, 300, 41, 6, 120)]
    stop = dict(finished=lambda row, toks: row == 3 and len(toks) >= 5, check_every=5)
    eager = greedy_generate(model, prompts, 24, cuda_graph=False, **stop)
    graph = greedy_generate(model, prompts, 24, cuda_graph=True, **stop)
    assert [len(t) for t in eager] == [24, 24, 24, 5, 24]
    assert graph == eager
