"""transformers' linear-attention models (Qwen3-Next's Gated DeltaNet, KimiLinear's KDA) on the CPU: loaded through
`load_model` they run on their PyTorch paths although fla is importable (whose kernels need a GPU)."""

from __future__ import annotations

import inspect

import pytest
import torch

import gdn2_eval

transformers = pytest.importorskip("transformers")

TINY = {
    "qwen3_next": lambda: transformers.Qwen3NextForCausalLM(transformers.Qwen3NextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=16,
        linear_value_head_dim=16, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"])),
    "kimi_linear": lambda: transformers.KimiLinearForCausalLM(transformers.KimiLinearConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, num_local_experts=2, num_experts_per_tok=1, n_shared_experts=1,
        mlp_layer_types=["dense", "dense"], layer_types=["linear_attention", "full_attention"], linear_head_dim=16,
        linear_num_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU steering applies where there is no CUDA device")
@pytest.mark.parametrize("name", sorted(TINY))
def test_linear_attention_models_load_and_run_on_their_pytorch_paths(name, tmp_path):
    pytest.importorskip("fla")
    torch.manual_seed(0)
    TINY[name]().save_pretrained(tmp_path / name)
    model, _ = gdn2_eval.load_model(tmp_path / name, dtype="fp32", device="cpu")
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(ids).logits[0, -1]
        first = model(ids[:, :16], use_cache=True)
        # the cache argument's name in this transformers (`cache` from 5.25, `past_key_values` before)
        arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        carried = first.cache if getattr(first, "cache", None) is not None else first.past_key_values
        rest = model(ids[:, 16:], **{arg: carried}, use_cache=True).logits[0, -1]
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.isfinite(whole).all() and out.shape == (1, 28)
    torch.testing.assert_close(rest, whole, rtol=1e-4, atol=1e-4)  # the state carried across calls
