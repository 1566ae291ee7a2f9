"""The few-row GEMM of the decode step (`kernels/linear/skinny.py`) against `F.linear` (under Triton's interpreter
on the CPU, compiled on a GPU), and its per-GPU configurations: taken only where pinned, by the inference model's
step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gdn2_eval.kernels.linear import skinny
from gdn2_eval.kernels.linear.skinny import SkinnyConfig, decode_linear, skinny_linear

from conftest import KERNEL_DEVICE as DEV
from conftest import prefill_and_step_both, tiny_model

CASES = [  # M, N, K, config
    (1, 70, 200, SkinnyConfig(block_n=16, block_k=64)),
    (5, 33, 130, SkinnyConfig(block_n=16, block_k=64, split_k=3)),
    (16, 64, 256, SkinnyConfig(block_n=32, block_k=64, split_k=2)),
    (33, 40, 100, SkinnyConfig(block_n=16, block_k=32)),
    (64, 48, 96, SkinnyConfig(block_n=16, block_k=32, split_k=8)),  # more slices asked than K has: fewer taken
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("M, N, K, config", CASES)
def test_skinny_linear_matches_f_linear(M, N, K, config, with_bias, dtype):
    g = torch.Generator().manual_seed(M + N)
    x = torch.randn(M, K + 9, generator=g).to(DEV, dtype)[:, 9:]  # rows a slice of a wider activation, as in the step
    w = torch.randn(N, K, generator=g).to(DEV, dtype)
    b = torch.randn(N, generator=g).to(DEV, dtype) if with_bias else None
    y = skinny_linear(x, w, b, config)
    want = F.linear(x.float(), w.float(), None if b is None else b.float())
    assert y.shape == (M, N) and y.dtype == dtype and y.is_contiguous()
    if dtype == torch.float32:
        torch.testing.assert_close(y, want, atol=1e-4, rtol=1e-5)
    else:  # one rounding of the float32 sum (the interpreter's bf16 cast rounds toward zero: up to one whole step)
        assert ((y.float() - want).abs() <= want.abs() * 2**-7 + 1e-3).all()


def test_skinny_linear_is_the_same_on_every_run():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 300, generator=g).to(DEV), torch.randn(20, 300, generator=g).to(DEV)
    cfg = SkinnyConfig(block_n=16, block_k=32, split_k=4)
    assert torch.equal(skinny_linear(x, w, None, cfg), skinny_linear(x, w, None, cfg))


def test_skinny_linear_names_what_it_cannot_take():
    with pytest.raises(ValueError, match="at most 64 rows"):
        skinny_linear(torch.randn(65, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"x \[M, K\] and weight \[N, K\]"):
        skinny_linear(torch.randn(2, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="unit column stride"):
        skinny_linear(torch.randn(8, 2).T, torch.randn(4, 8))


def test_pins_are_written_read_back_and_only_the_faster_ones_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(skinny, "PIN_ROOT", tmp_path)
    cfg = SkinnyConfig(block_n=16, block_k=64, split_k=2)
    path = skinny.write_pins("Some GPU 80GB", [dict(n=70, k=200, rows=16, config=cfg, faster=True),
                                               dict(n=70, k=200, rows=1, config=cfg, faster=False)])
    assert path == tmp_path / "Some_GPU_80GB.json"
    monkeypatch.setattr(skinny, "_device_name", lambda device: "Some GPU 80GB")
    dev = torch.device("cpu")
    assert skinny.pinned_config(5, 70, 200, dev) == cfg  # 5 rows take the 16-row bucket
    assert skinny.pinned_config(1, 70, 200, dev) is None  # measured, but cuBLAS was faster
    assert skinny.pinned_config(17, 70, 200, dev) is None and skinny.pinned_config(5, 71, 200, dev) is None
    skinny._pins.cache_clear()


def test_decode_linear_is_f_linear_without_pins(monkeypatch):
    monkeypatch.setattr(skinny, "skinny_linear", lambda *a: pytest.fail("no configuration is pinned for the CPU"))
    x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
    assert torch.equal(decode_linear(x, w, b), F.linear(x, w, b))


def test_inference_model_steps_through_pinned_skinny_gemms_and_gives_the_reference_logits(monkeypatch):
    shapes = []
    run = skinny.skinny_linear

    def counted(x, w, b=None, cfg=None):
        shapes.append((x.shape[0], *w.shape))
        return run(x, w, b, cfg or SkinnyConfig())

    monkeypatch.setattr(skinny, "skinny_linear", counted)
    monkeypatch.setattr(skinny, "pinned_config", lambda M, N, K, device: SkinnyConfig(block_n=16, block_k=32,
                                                                                       split_k=1 + (N % 3)))
    ref = tiny_model("recurrent", seed=9).to(DEV)
    fused = tiny_model("recurrent", seed=9, impl="inference", kernel="triton").to(DEV)
    prefill_and_step_both(ref, fused, 2, shapes.clear)  # count the steps' GEMMs only
    gdn2_layers = sum(b.layer_type == "gdn2" for b in fused.layers)
    # per mixer: w_in, the two branches' one GEMM, o_proj; per block: w12, w3; and the head
    assert len(shapes) == 2 * (3 * gdn2_layers + 2 * len(fused.layers) + 1)
    assert all(m == 3 for m, _, _ in shapes)
