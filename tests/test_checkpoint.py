"""Authors' checkpoints: conversion against a direct implementation of the spec, and every bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

import gdn2_eval
from gdn2_eval.cli import app
from gdn2_eval.errors import UserError

from conftest import TINY_HYBRID_FIELDS, TINY_RECURRENT_FIELDS, authors_state_dict, save_authors_checkpoint
from spec_reference import spec_logits

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def hybrid_ckpt(tmp_path):
    """Hybrid, n_query_groups < n_head, keys prefixed as a compiled DDP/Fabric wrapper saves them."""
    state = authors_state_dict(TINY_HYBRID_FIELDS, seed=1, prefix="_forward_module._orig_mod.")
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY_HYBRID_FIELDS))
    return save_authors_checkpoint(tmp_path / "tiny-model-ckpt.pth", state), arch, state


def test_converted_checkpoint_matches_direct_spec_implementation(hybrid_ckpt, tmp_path, tokenizer_dir):
    ckpt, arch, state = hybrid_ckpt
    out = tmp_path / "hf"
    res = cli("convert", ckpt, "--arch", arch, "--out", out, "--tokenizer", tokenizer_dir, "--dtype", "fp32")
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.num_key_value_heads == 2 and model.config.output_gate_act == "silu"
    ids = torch.randint(0, 250, (23,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(ids[None]).logits[0].double()
    ref = spec_logits(state, TINY_HYBRID_FIELDS, ids)
    assert (got - ref).abs().max().item() < 1e-4 * ref.abs().max().item()


def test_load_model_reads_pth_directly_with_preset_json(tmp_path):
    state = authors_state_dict(TINY_RECURRENT_FIELDS, seed=2, prefix="module.")
    ckpt = save_authors_checkpoint(tmp_path / "r.pth", state)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY_RECURRENT_FIELDS))
    model, tok = gdn2_eval.load_model(ckpt, arch=arch, dtype="fp32", device="cpu")
    assert tok is None and model.config.family == "recurrent"
    ids = torch.arange(4, 30)
    with torch.no_grad():
        got = model(ids[None]).logits[0].double()
    ref = spec_logits(state, TINY_RECURRENT_FIELDS, ids)
    assert (got - ref).abs().max().item() < 1e-4 * ref.abs().max().item()


def test_missing_unexpected_and_misshaped_keys_are_listed_in_one_error(hybrid_ckpt, tmp_path):
    _, arch, state = hybrid_ckpt
    state = dict(state)
    del state["_forward_module._orig_mod.transformer.h.0.attn.b_proj.weight"]
    state["_forward_module._orig_mod.transformer.h.9.attn.extra"] = torch.zeros(1)
    state["_forward_module._orig_mod.transformer.h.1.attn.attn.weight"] = torch.zeros(7, 64)
    ckpt = save_authors_checkpoint(tmp_path / "bad.pth", state)
    with pytest.raises(UserError) as e:
        gdn2_eval.load_model(ckpt, arch=arch, device="cpu")
    msg = str(e.value)
    assert "1 missing: transformer.h.0.attn.b_proj.weight" in msg
    assert "1 unexpected: transformer.h.9.attn.extra" in msg
    assert "1 mis-shaped: transformer.h.1.attn.attn.weight: checkpoint (7, 64) vs config (128, 64)" in msg


def test_config_that_does_not_match_the_weights(hybrid_ckpt, tmp_path):
    ckpt, _, _ = hybrid_ckpt
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**TINY_HYBRID_FIELDS, "n_embd": 32, "n_layer": 2}))
    res = cli("convert", ckpt, "--arch", other, "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "does not match the config" in res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def test_unknown_preset_lists_the_presets(hybrid_ckpt, tmp_path):
    ckpt, _, _ = hybrid_ckpt
    res = cli("convert", ckpt, "--arch", "gdn2_7B", "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "unknown preset 'gdn2_7B'" in res.stderr and "swa_gdn2_1.3B" in res.stderr


def test_file_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "notes.pth"
    junk.write_text("this is not a checkpoint")
    res = cli("convert", junk, "--arch", "gdn2_12h_100M", "--out", tmp_path / "o")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "is not a PyTorch checkpoint" in res.stderr and not (tmp_path / "o").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_a_pickle_with_code_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Exploit()}, evil)
    res = cli("convert", evil, "--arch", "gdn2_12h_100M", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "weights-only" in res.stderr
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_existing_output_directory_needs_force_and_nothing_half_written(hybrid_ckpt, tmp_path):
    ckpt, arch, _ = hybrid_ckpt
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = cli("convert", ckpt, "--arch", arch, "--out", out)
    assert res.exit_code == 2 and "exists; pass --force" in res.stderr
    assert (out / "keep.txt").read_text() == "mine"
    res = cli("convert", ckpt, "--arch", arch, "--out", out, "--force")
    assert res.exit_code == 0 and (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left over


def test_checkpoint_without_arch_and_missing_paths(hybrid_ckpt, tmp_path):
    ckpt, _, _ = hybrid_ckpt
    with pytest.raises(UserError, match="pass --arch"):
        gdn2_eval.load_model(ckpt)
    with pytest.raises(UserError, match="neither a checkpoint file nor a directory"):
        gdn2_eval.load_model(tmp_path / "nowhere")
    res = cli("info", tmp_path / "nowhere")
    assert res.exit_code == 2 and res.stderr.startswith("error: ")


def test_info_reports_layout_counts_state_and_kernel():
    res = cli("info", "gdn2_1.3B", "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "1,302,638,112 non-embedding" in out
    assert "262,144 fp32" in out  # 16 x 128 x 128 state per layer
    assert "kernel" in out and "torch" in out


def test_kernel_can_be_forced_by_environment(monkeypatch):
    from gdn2_eval.kernels import resolve_backend

    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv("GDN2_KERNEL", "fla")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_backend("auto", "cpu")
    monkeypatch.setenv("GDN2_KERNEL", "magic")
    with pytest.raises(ValueError, match="unknown GDN-2 kernel"):
        resolve_backend("auto", "cpu")


def test_auto_takes_the_fused_decode_step_on_cuda_and_fla_elsewhere_in_the_forward(monkeypatch):
    """`auto` on CUDA: fla's kernels for the forward, the project's fused step for the inference path's one-token
    step; a named kernel is taken for both. (Which backends are usable is decided by what is installed, so this is
    asked for a CUDA device without one.)"""
    from gdn2_eval.kernels import dispatch

    monkeypatch.delenv("GDN2_KERNEL", raising=False)
    monkeypatch.setattr(dispatch, "available_backends", lambda device: ["fla", "triton", "torch"])
    assert dispatch.resolve_backend("auto", "cuda") == "fla"
    assert dispatch.resolve_backend("auto", "cuda", fused_step=True) == "triton"
    assert dispatch.resolve_backend("fla", "cuda", fused_step=True) == "fla"
    monkeypatch.setattr(dispatch, "available_backends", lambda device: ["fla", "torch"])  # no Triton
    assert dispatch.resolve_backend("auto", "cuda", fused_step=True) == "fla"
    monkeypatch.setattr(dispatch, "available_backends", lambda device: ["torch", "triton"])  # the interpreter
    assert dispatch.resolve_backend("auto", "cpu", fused_step=True) == "torch"


def test_training_style_config_with_float_counts_and_neutral_fields_loads_the_same(tmp_path):
    """A config JSON as a training run writes it: integral values as floats and fields that leave the architecture
    unchanged. It loads to the same logits as the plain one; a fractional count, or a field at a value that would
    change the architecture, is one error naming the field."""
    state = authors_state_dict(TINY_RECURRENT_FIELDS, seed=3)
    ckpt = save_authors_checkpoint(tmp_path / "r.pth", state)
    plain, written = tmp_path / "plain.json", tmp_path / "written.json"
    plain.write_text(json.dumps(TINY_RECURRENT_FIELDS))
    as_trained = {k: float(v) if isinstance(v, int) else v for k, v in TINY_RECURRENT_FIELDS.items()}
    as_trained.update(gdn2_expand_v=1.0, bias=False, rope_base=10000, hf_config={"org": "x", "name": "y"})
    assert as_trained["n_layer"] == float(TINY_RECURRENT_FIELDS["n_layer"])
    written.write_text(json.dumps(as_trained))
    ids = torch.arange(4, 30)[None]
    logits = []
    for arch in (plain, written):
        model, _ = gdn2_eval.load_model(ckpt, arch=arch, dtype="fp32", device="cpu")
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert torch.equal(logits[0], logits[1])
    for change, field in (({"gdn2_expand_v": 1.5}, "gdn2_expand_v"), ({"n_layer": 2.5}, "n_layer"),
                          ({"bias": True}, "bias"), ({"norm_class_name": "LayerNorm"}, "norm_class_name")):
        bad = tmp_path / f"bad_{field}.json"
        bad.write_text(json.dumps({**as_trained, **change}))
        with pytest.raises(UserError, match=field) as e:
            gdn2_eval.load_model(ckpt, arch=bad, dtype="fp32", device="cpu")
        assert "\n" not in str(e.value)
    res = cli("convert", ckpt, "--arch", tmp_path / "bad_gdn2_expand_v.json", "--out", tmp_path / "hf")
    assert res.exit_code == 2 and "gdn2_expand_v must be a whole number" in res.output
    assert not (tmp_path / "hf").exists()
