"""fla launch configurations kept in the repository (`gdn2_eval.kernels.fla_configs`): what the dump writes is what
fla's own lookup reads back, and the steering never overrides a user's choice."""

from __future__ import annotations

import json

import pytest

fla_cache = pytest.importorskip("fla.ops.utils.cache")
triton = pytest.importorskip("triton")

from gdn2_eval.kernels import fla_configs  # noqa: E402


def _tuned_kernel():
    """A real fla autotuner over a real Triton kernel, with two tuning keys 'chosen' as fla's autotuning would."""

    @fla_cache.fla_cache_autotune(configs=[triton.Config({"BT": 16}, num_warps=2), triton.Config({"BT": 64})],
                                  key=["T", "H"])
    @triton.jit
    def pinned_test_kernel(x, T, H, BT: triton.language.constexpr):
        pass

    pinned_test_kernel.cache[(4096, 16, "torch.bfloat16")] = triton.Config({"BT": 64}, num_warps=8, num_stages=3)
    pinned_test_kernel.cache[(4096, 8, "torch.bfloat16")] = triton.Config({"BT": 16}, num_warps=2, num_stages=1)
    return pinned_test_kernel


def test_dumped_configs_are_read_back_by_fla_exactly_and_for_other_lengths(tmp_path, monkeypatch):
    tuner = _tuned_kernel()
    written = fla_configs.dump_autotuned(tmp_path)
    assert "pinned_test_kernel" in written
    data = json.loads((tmp_path / "pinned_test_kernel.json").read_text())
    assert len(data["autotune_entries"]) == 2
    monkeypatch.setenv("FLA_CONFIG_DIR", str(tmp_path))
    monkeypatch.setattr(fla_cache, "FLA_CACHE_MODE", fla_cache.FlaCacheMode(fla_configs.MODE))
    fla_cache.load_config_file.cache_clear()
    exact = fla_cache.load_cached_config("pinned_test_kernel",
                                         fla_cache.AutotuneKey((4096, 16, "torch.bfloat16")))
    assert exact["kwargs"] == {"BT": 64} and exact["num_warps"] == 8 and exact["num_stages"] == 3
    other_length = fla_cache.load_cached_config("pinned_test_kernel",
                                                fla_cache.AutotuneKey((131072, 16, "torch.bfloat16")))
    assert other_length is not None  # fuzzy: numbers may differ, the rest of the key may not
    other_dtype = fla_cache.load_cached_config("pinned_test_kernel",
                                               fla_cache.AutotuneKey((4096, 16, "torch.float32")))
    assert other_dtype is None  # left to fla's autotuning
    # a second dump keeps the entries already on disk
    tuner.cache.clear()
    tuner.cache[(2048, 4, "torch.float16")] = triton.Config({"BT": 16})
    fla_configs.dump_autotuned(tmp_path)
    assert len(json.loads((tmp_path / "pinned_test_kernel.json").read_text())["autotune_entries"]) == 3


def test_pinned_configs_never_override_the_users_choice(monkeypatch):
    monkeypatch.setenv("FLA_CACHE_MODE", "disabled")
    assert fla_configs.use_pinned_configs() is None
    monkeypatch.delenv("FLA_CACHE_MODE")
    monkeypatch.setenv("FLA_CONFIG_DIR", "/somewhere")
    assert fla_configs.use_pinned_configs() is None


def test_the_config_folder_is_named_as_fla_names_the_device():
    assert fla_configs.gpu_dir_name("NVIDIA H200") == fla_cache.sanitize_gpu_name("NVIDIA H200") == "NVIDIA_H200"
    assert fla_configs.gpu_dir_name("NVIDIA H100 80GB HBM3") == fla_cache.sanitize_gpu_name("NVIDIA H100 80GB HBM3")
