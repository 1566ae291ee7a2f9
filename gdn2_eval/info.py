"""What `gdn2-eval info` reports: layout, parameter counts, recurrent state size, kernel path."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .kernels import resolve_backend
from .model import PRESETS, GDN2Config, GDN2ForCausalLM


@dataclass
class LayerState:
    kind: str  # gdn2 | swa
    recurrent_floats: int  # fp32 matrix state (GDN-2) per sequence
    conv_values: int  # short-conv state per sequence (model dtype)
    window_values: int  # SWA keys + values kept for a full window (model dtype)


@dataclass
class ModelSummary:
    name: str
    family: str
    layout: str
    total_params: int
    non_embedding_params: int
    layers: list[LayerState] = field(default_factory=list)
    kernel: str = "torch"
    step_kernel: str = "torch"  # the inference path's one-token step (`auto` may take the fused decode step there)

    def state_bytes_per_sequence(self, dtype_bytes: int = 2) -> int:
        return sum(s.recurrent_floats * 4 + (s.conv_values + s.window_values) * dtype_bytes for s in self.layers)


def config_for(model: str, arch: str | None = None) -> tuple[str, GDN2Config]:
    """A GDN-2 config from a preset name, an HF directory, or a checkpoint file with `arch`. No weights are read."""
    if model in PRESETS:
        return model, GDN2Config.from_preset(model)
    from .names import resolve_name

    path = Path(resolve_name(model, "model"))
    if not path.exists():  # only the hub has it: its config is enough
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(path), "config.json")).parent
        except Exception as e:
            raise UserError(f"no config.json for {model}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UserError(f"{path} has no config.json")
        if json.loads(cfg_file.read_text()).get("model_type") != "gdn2":
            raise UserError(f"{path} is not a GDN-2 model (model_type is not 'gdn2')")
        return path.name, GDN2Config.from_pretrained(str(path))
    if path.is_file():
        if arch is None:
            raise UserError(f"{path} is a checkpoint file: pass --arch (a preset name or a JSON config file)")
        return path.name, GDN2Config.from_arch(arch)
    raise UserError(f"{model!r} is neither a preset ({', '.join(PRESETS)}), a directory nor a checkpoint file")


def summarise(name: str, config: GDN2Config, device: str | torch.device = "cpu") -> ModelSummary:
    with torch.device("meta"):
        model = GDN2ForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("model.layers."))
    H, Hv, dk, dv = config.gdn2_num_heads, config.gdn2_num_v_heads, config.gdn2_head_dim, config.gdn2_value_dim
    kv = config.num_key_value_heads * config.attn_head_dim
    layers = [
        LayerState("gdn2", Hv * dk * dv, (config.conv_size - 1) * (2 * H * dk + Hv * dv), 0)
        if kind == "gdn2"
        else LayerState("swa", 0, 0, 2 * (config.local_window - 1) * kv)
        for kind in config.mixer_types
    ]
    layout = " ".join("G" if t == "gdn2" else "S" for t in config.mixer_types)
    return ModelSummary(
        name=name,
        family=config.family,
        layout=layout,
        total_params=total,
        non_embedding_params=blocks,
        layers=layers,
        kernel=resolve_backend(config.kernel, device),
        step_kernel=resolve_backend(config.kernel, device, fused_step=True),
    )
