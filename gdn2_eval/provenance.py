"""What a run records about itself: model identity and size, protocol, software versions, revision, seeds."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

# Families of fla and HF baselines by model_type, as the paper groups them: data in model_families.json.
FAMILY_BY_MODEL_TYPE: dict[str, str] = {
    k: v for k, v in json.loads((Path(__file__).parent / "model_families.json").read_text()).items()
    if not k.startswith("_")
}
FAMILY_BY_LAYERS = {"recurrent": "recurrent", "hybrid": "hybrid", "attention": "transformer"}
_PACKAGES = (
    "gdn2-eval",
    "torch",
    "triton",
    "transformers",
    "lm_eval",
    "flash-linear-attention",
    "fla-core",
    "datasets",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def file_hash(path: Path) -> str:
    """sha256 of a checkpoint file, or of a directory's weight files and config in name order."""
    h = hashlib.sha256()
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json")
    )
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    """The gdn2-eval checkout's commit (with `+dirty` for local changes), when run from one."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def gdn2_impl(model: torch.nn.Module) -> str | None:
    """How a GDN-2 model runs: "reference" (the readable model) or "inference" (packed weights and fused kernels,
    `gdn2_eval.inference`); None for any other model (fla's and transformers' run their own modules)."""
    from .model import GDN2Config

    if type(model).__name__ == "GDN2InferenceForCausalLM":
        return "inference"
    return "reference" if isinstance(getattr(model, "config", None), GDN2Config) else None


def describe_model(model: torch.nn.Module, path: str) -> dict[str, Any]:
    """Identity and size of the evaluated model (GDN-2 details through `gdn2_eval.info`)."""
    from .info import summarise
    from .model import GDN2Config

    config = model.config
    first = next(model.parameters())
    desc: dict[str, Any] = {
        "path": str(Path(path).resolve()),
        "name": Path(path).name,
        "hash": file_hash(Path(path)) if Path(path).exists() else None,
        "model_type": config.model_type,
        "dtype": str(first.dtype).replace("torch.", ""),
        "device": str(first.device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if isinstance(config, GDN2Config):
        s = summarise(desc["name"], config, first.device)
        impl = gdn2_impl(model)
        desc.update(
            family=s.family,
            layout=s.layout,
            non_embedding_parameters=s.non_embedding_params,
            kernel=s.kernel,
            impl=impl,
            decode_kernel=s.step_kernel if impl == "inference" else s.kernel,
            state_bytes_per_sequence=s.state_bytes_per_sequence(first.element_size()),
            gate_ablation=config.gate_ablation,
            gates=config.gates,
            output_gate_act=config.output_gate_act,
        )
    else:
        record = model.path_record() if callable(getattr(model, "path_record", None)) else {}
        desc["family"] = family_of(config.model_type, record.get("layers"))
        if record.get("state_bytes_per_layer"):
            desc["state_bytes_per_layer"] = record["state_bytes_per_layer"]
    return desc


def family_of(model_type: str, layers: str | None = None) -> str:
    """The tables' family of a baseline: its model_type in `model_families.json`, else what its layers are
    (`AdaptedLM.path_record`: recurrent, hybrid, attention), else "other"."""
    return FAMILY_BY_MODEL_TYPE.get(model_type) or FAMILY_BY_LAYERS.get(layers, "other")
