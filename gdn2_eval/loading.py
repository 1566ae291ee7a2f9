"""`load_model`: one entry point for Hugging Face directories and the authors' `.pth` checkpoints, and
`convert_checkpoint`, which writes an authors' checkpoint as a Hugging Face directory."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .checkpoint import authors_to_hf, check_authors_keys, read_state_dict
from .errors import UserError
from .model import GDN2Config, GDN2ForCausalLM
from .names import resolve_name

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


class LoadedModel(NamedTuple):
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto`/None: bfloat16 on CUDA, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose auto, {', '.join(sorted(set(DTYPES)))}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer from a built-in demo name, a directory, the HF cache or the hub (`names.resolve_name`);
    one `UserError` whatever the reason it cannot load."""
    source = resolve_name(path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as e:  # OSError, ValueError, ...: every failure is "no tokenizer there"
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"no tokenizer could be loaded from {path}: {first}") from None


TOKENIZER_KEYS = ("tokenizer", "pretrained", "model")


def tokenizer_from_metadata(metadata: dict, error: type[UserError] = UserError):
    """The tokenizer a task's metadata names (``tokenizer``, else ``pretrained``, else ``model``: lm-eval passes the
    model args there), loaded once per name; None when it names none. `error` is raised for a checkpoint file."""
    for key in TOKENIZER_KEYS:
        value = metadata.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, (str, Path)):
            if key == "tokenizer" or hasattr(value, "encode"):
                return value  # a tokenizer object
            continue  # a model object under `pretrained`
        if key != "tokenizer" and Path(value).is_file():
            raise error(f"{key}={value} is a checkpoint file, which holds no tokenizer: pass tokenizer=DIR in the "
                        "model args or the task metadata")
        return _cached_tokenizer(str(value))
    return None


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(name: str) -> PreTrainedTokenizerBase:
    return load_tokenizer(name)


def _register_fla_models() -> None:
    """fla's baseline models (Gated DeltaNet, KDA, Mamba-2/3, Samba, ...) register with the Auto classes on import."""
    try:
        from .kernels.fla_configs import use_pinned_configs

        use_pinned_configs()  # before fla's first import: its launch configurations for this GPU, no autotuning
        import fla  # noqa: F401
    except Exception:  # fla is optional; a plain HF model still loads
        pass


def load_model(
    path: str | Path,
    arch: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "auto",
    impl: str = "auto",
    **config_overrides,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    * `path` an HF directory: GDN-2 (``model_type: gdn2``), an fla baseline or any HF causal LM.
    * `path` a built-in demo (`demo`, `demo-kda`, `demo-gdn`; see `gdn2_eval.demo`), or a hub repository found in
      the local Hugging Face cache or, when the hub is reachable, downloaded (`gdn2_eval.names`).
    * `path` an authors' checkpoint file (`.pth`): `arch` is a preset name or a JSON file of the authors' config
      fields; the keys are checked and mapped (see `gdn2_eval.checkpoint`).
    `tokenizer` defaults to `path` for directories. `config_overrides` set GDN-2 config fields (e.g.
    ``gate_ablation="scalar_erase"``, ``kernel="torch"``). `impl` chooses how a GDN-2 model runs (`resolve_impl`):
    the reference model, or the inference model built from it (packed weights, fused kernels).
    """
    impl_choice = check_impl(impl)
    path = Path(resolve_name(path, "model", download=True))
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if path.is_dir():
        model = _load_hf_dir(path, dt, config_overrides, gpu=dev.type == "cuda")
        tok_source = tokenizer if tokenizer is not None else (path if _has_tokenizer(path) else None)
    elif path.is_file():
        if arch is None:
            raise UserError(f"{path} is a checkpoint file: pass --arch (a preset name or a JSON config file)")
        model = _load_authors_checkpoint(path, arch, dt, config_overrides)
        tok_source = tokenizer
    else:
        raise UserError(f"model path {path} is neither a checkpoint file nor a directory")
    if dev.type != "cuda" and type(model).__module__.startswith("fla."):
        raise UserError(f"{path.name} is fla's {type(model).__name__}, whose kernels (Triton) run only on a CUDA GPU: "
                        "evaluate it on a GPU machine (transformers' own Mamba / Mamba-2, Qwen3-Next, KimiLinear run "
                        "on the CPU)")
    model = model.to(dev).eval()
    if dev.type == "cpu":  # transformers' linear-attention layers would pick fla's GPU-only kernels
        from .torch_paths import use_torch_paths

        use_torch_paths(model)
    if isinstance(model, GDN2ForCausalLM) and resolve_impl(impl_choice, dev) == "inference":
        from .inference import GDN2InferenceForCausalLM

        model = GDN2InferenceForCausalLM.from_reference(model)
    return LoadedModel(model, load_tokenizer(tok_source) if tok_source is not None else None)


IMPLS = ("auto", "reference", "inference")


def check_impl(impl: str | None) -> str:
    choice = (impl or "auto").lower()
    if choice not in IMPLS:
        raise UserError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    return choice


def resolve_impl(impl: str | None, device: torch.device | str) -> str:
    """`auto`: the inference model on CUDA (fused Triton kernels), the reference model elsewhere (the fused kernels
    would run there only through their PyTorch references, which is the reference model's work done slower)."""
    choice = check_impl(impl)
    if choice == "auto":
        return "inference" if torch.device(device).type == "cuda" else "reference"
    return choice


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def _load_hf_dir(path: Path, dtype: torch.dtype, overrides: dict, gpu: bool = True) -> PreTrainedModel:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} is a directory without config.json, not a Hugging Face model directory")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file} is not valid JSON: {e}") from None
    if model_type == "gdn2":
        config = GDN2Config.from_pretrained(str(path), **overrides)
        return GDN2ForCausalLM.from_pretrained(str(path), config=config, dtype=dtype)
    if overrides:
        raise UserError(f"GDN-2 options {sorted(overrides)} do not apply to a {model_type!r} model")
    _register_fla_models()
    try:
        native = None if gpu else _transformers_class(model_type)
        if native is not None:  # fla took this model type over (Mamba, Mamba-2); its kernels need a GPU
            return native.from_pretrained(str(path), dtype=dtype)
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not load {path} as a causal LM: {str(e).splitlines()[0]}") from None


def _transformers_class(model_type: str | None):
    """transformers' own causal-LM class for `model_type` where fla registered its own class for the same type, else
    None. fla's port of Mamba / Mamba-2 reads the same checkpoints but runs only on a GPU."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type or "")
    if name is None:
        return None
    try:
        mapped = AutoModelForCausalLM._model_mapping[transformers.AutoConfig.for_model(model_type).__class__]
    except (KeyError, ValueError):
        return None
    return None if mapped.__module__.startswith("transformers.") else getattr(transformers, name, None)


def _load_authors_checkpoint(path: Path, arch: str | Path, dtype: torch.dtype, overrides: dict) -> GDN2ForCausalLM:
    config = GDN2Config.from_arch(arch, **overrides)
    state = read_state_dict(path)
    check_authors_keys(state, config, str(path))
    with torch.device("meta"):
        model = GDN2ForCausalLM(config)
    model.load_state_dict({k: v.to(dtype) for k, v in authors_to_hf(state, config).items()}, strict=True, assign=True)
    # Norm weights, gates' A_log/dt_bias and conv weights are small: keep every parameter in `dtype` for simplicity;
    # the layers compute gates, norms and the recurrence state in float32 regardless.
    return model


def convert_checkpoint(
    checkpoint: str | Path,
    arch: str | Path,
    out: str | Path,
    tokenizer: str | Path | None = None,
    dtype: str = "bf16",
    force: bool = False,
) -> Path:
    """Write an authors' checkpoint as a Hugging Face directory (config.json, safetensors, tokenizer if given).

    The directory is written to a temporary sibling and renamed into place, so nothing half-written is left behind.
    """
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"output directory {out} exists; pass --force to replace it")
    if dtype not in ("bf16", "fp32", "fp16"):
        raise UserError(f"unknown dtype {dtype!r}; choose bf16, fp16 or fp32")
    model, tok = load_model(checkpoint, arch=arch, tokenizer=tokenizer, dtype=dtype, device="cpu")
    model.config.converted_from = Path(checkpoint).name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
