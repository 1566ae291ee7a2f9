"""The authors' training checkpoints (`*-model-ckpt.pth`, spec section 5): safe reading and key mapping to
`GDN2ForCausalLM`. A checkpoint is untrusted input: it is read with `weights_only=True`, never unpickled freely."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import UserError
from .model import GDN2Config

WRAPPER_PREFIXES = ("_forward_module.", "module.", "_orig_mod.")
# How many mismatched keys one error message lists before summarising.
_LIST_AT_MOST = 40

# authors' key (after `transformer.h.{i}.`) -> ours (after `model.layers.{i}.`), shared by both block kinds
_BLOCK_KEYS = {
    "norm_1.weight": "attn_norm.weight",
    "norm_2.weight": "mlp_norm.weight",
    "mlp.swiglu.w1.weight": "mlp.w1.weight",
    "mlp.swiglu.w2.weight": "mlp.w2.weight",
    "mlp.swiglu.w3.weight": "mlp.w3.weight",
}
_GDN2_KEYS = (
    "q_proj.weight",
    "k_proj.weight",
    "v_proj.weight",
    "q_conv1d.weight",
    "k_conv1d.weight",
    "v_conv1d.weight",
    "f_proj.0.weight",
    "f_proj.1.weight",
    "b_proj.weight",
    "w_proj.weight",
    "A_log",
    "dt_bias",
    "g_proj.0.weight",
    "g_proj.1.weight",
    "g_proj.1.bias",
    "o_norm.weight",
    "o_proj.weight",
)
_TOP_KEYS = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an authors' `.pth` file (its "model" entry, or the file itself if it is a bare state dict),
    wrapper prefixes removed."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a loadable weights-only PyTorch checkpoint ({first})") from None
    except Exception as e:  # torch.load fails in many ways on arbitrary bytes (IndexError, RuntimeError, ...)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
        raise UserError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {detail})") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no model state dict (expected a dict of tensors, or one under 'model')")
    return {_strip_prefixes(k): v for k, v in state.items()}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def deinterleave_qkv(fused: torch.Tensor, config: GDN2Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the authors' fused SWA weight. Rows come grouped per query group: the group's query heads, then one
    key head, then one value head."""
    groups, hd = config.num_key_value_heads, config.attn_head_dim
    per_group = config.num_attention_heads // groups
    w = fused.view(groups, per_group + 2, hd, -1)
    q = w[:, :per_group].reshape(groups * per_group * hd, -1)
    return q, w[:, per_group].reshape(groups * hd, -1), w[:, per_group + 1].reshape(groups * hd, -1)


def expected_authors_shapes(config: GDN2Config) -> dict[str, tuple[int, ...]]:
    """Every key an authors' checkpoint of this config holds, with its shape (used to name what does not fit)."""
    from .model import GDN2ForCausalLM

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in GDN2ForCausalLM(config).state_dict().items()}
    shapes = {a: ours[o] for a, o in _TOP_KEYS.items()}
    hd, nq, nkv = config.attn_head_dim, config.num_attention_heads, config.num_key_value_heads
    for i, kind in enumerate(config.mixer_types):
        pre, our = f"transformer.h.{i}.", f"model.layers.{i}."
        for a, o in _BLOCK_KEYS.items():
            shapes[pre + a] = ours[our + o]
        if kind == "gdn2":
            for name in _GDN2_KEYS:
                shapes[pre + "attn." + name] = ours[our + "attn." + name]
        else:
            shapes[pre + "attn.attn.weight"] = ((nq + 2 * nkv) * hd, config.hidden_size)
            shapes[pre + "attn.proj.weight"] = ours[our + "attn.o_proj.weight"]
    return shapes


def check_authors_keys(state: dict[str, torch.Tensor], config: GDN2Config, source: str) -> None:
    """One error listing every missing, unexpected or mis-shaped key (never a silently random layer)."""
    expected = expected_authors_shapes(config)
    missing = sorted(set(expected) - set(state), key=_natural)
    unexpected = sorted(set(state) - set(expected), key=_natural)
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs config {expected[k]}"
        for k in sorted(set(expected) & set(state), key=_natural)
        if tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:_LIST_AT_MOST])
            more = f" (+{len(items) - _LIST_AT_MOST} more)" if len(items) > _LIST_AT_MOST else ""
            parts.append(f"{len(items)} {title}: {shown}{more}")
    raise UserError(f"{source} does not match the config: " + "; ".join(parts))


def authors_to_hf(state: dict[str, torch.Tensor], config: GDN2Config) -> dict[str, torch.Tensor]:
    """Map a checked authors' state dict to `GDN2ForCausalLM` keys."""
    out = {o: state[a] for a, o in _TOP_KEYS.items()}
    for i, kind in enumerate(config.mixer_types):
        pre, our = f"transformer.h.{i}.", f"model.layers.{i}."
        for a, o in _BLOCK_KEYS.items():
            out[our + o] = state[pre + a]
        if kind == "gdn2":
            for name in _GDN2_KEYS:
                out[our + "attn." + name] = state[pre + "attn." + name]
        else:
            q, k, v = deinterleave_qkv(state[pre + "attn.attn.weight"], config)
            out[our + "attn.q_proj.weight"], out[our + "attn.k_proj.weight"], out[our + "attn.v_proj.weight"] = q, k, v
            out[our + "attn.o_proj.weight"] = state[pre + "attn.proj.weight"]
    return out


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
