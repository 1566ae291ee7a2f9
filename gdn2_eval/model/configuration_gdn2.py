"""GDN2Config: the Hugging Face config of a GDN-2 language model, its presets and the authors' field names."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from ..errors import UserError

OUTPUT_GATE_ACTIVATIONS = ("silu", "sigmoid")
GATE_ABLATIONS = ("none", "scalar_erase", "scalar_write")
# How the mixer parameterises its gates (spec section 1): GDN-2's decoupled erase/write gates with channel-wise
# decay; KDA's one scalar strength beta per head for both erase and write, channel-wise decay; Gated DeltaNet's
# scalar beta and a scalar decay per head. All run through the same GDN-2 recurrence with the gates tied.
GATES = ("gdn2", "kda", "gdn")

# The authors' presets (spec section 4). Field names are the authors'; `GDN2Config.from_authors` maps them.
_AUTHORS_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "padding_multiple": 64,
    "block_size": 4096,
    "local_window": 2048,
    "norm_eps": 1e-5,
    "rotary_percentage": 1.0,
    "gdn2_expand_v": 1,
}
PRESETS: dict[str, dict[str, Any]] = {
    "gdn2_1.3B": dict(
        gdn2_per_layer=1,
        n_layer=18,
        n_embd=2304,
        n_head=18,
        gdn2_num_heads=16,
        gdn2_head_dim=128,
        intermediate_size=6208,
    ),
    "swa_gdn2_1.3B": dict(
        gdn2_per_layer=2,
        n_layer=18,
        n_embd=2304,
        n_head=18,
        gdn2_num_heads=16,
        gdn2_head_dim=128,
        intermediate_size=6784,
    ),
    "swa_gdn2_100M": dict(
        gdn2_per_layer=2, n_layer=12, n_embd=768, n_head=12, gdn2_num_heads=4, gdn2_head_dim=64, intermediate_size=2048
    ),
    "gdn2_12h_100M": dict(
        gdn2_per_layer=1, n_layer=12, n_embd=768, n_head=12, gdn2_num_heads=12, gdn2_head_dim=64, intermediate_size=2048
    ),
    "gdn2_12h_305M": dict(
        gdn2_per_layer=1,
        n_layer=12,
        n_embd=1024,
        n_head=16,
        gdn2_num_heads=16,
        gdn2_head_dim=64,
        intermediate_size=4352,
    ),
}
# Every field the authors' config may carry (a JSON `--arch` file holds a subset of these).
AUTHORS_FIELDS = (
    "n_layer",
    "n_embd",
    "n_head",
    "n_query_groups",
    "gdn2_per_layer",
    "gdn2_num_heads",
    "gdn2_head_dim",
    "gdn2_expand_v",
    "gdn2_num_v_heads",
    "intermediate_size",
    "local_window",
    "vocab_size",
    "padding_multiple",
    "norm_eps",
    "rotary_percentage",
    "block_size",
    "allow_neg_eigval",
    "name",
)
# Fields that hold a count: training configs may write them as floats (`"gdn2_expand_v": 1.0`); an integral float is
# taken as that integer, anything else is an error naming the field.
_INTEGRAL_AUTHORS_FIELDS = ("n_layer", "n_embd", "n_head", "n_query_groups", "gdn2_per_layer", "gdn2_num_heads",
                            "gdn2_head_dim", "gdn2_expand_v", "gdn2_num_v_heads", "intermediate_size", "local_window",
                            "vocab_size", "padding_multiple", "block_size")
# Fields a training run's config may also carry that leave this architecture unchanged at the value given here
# (None: any value, e.g. bookkeeping); another value would change the model, which is an error naming the field.
AUTHORS_NEUTRAL_FIELDS: dict[str, Any] = {
    "hf_config": None,
    "padded_vocab_size": None,  # checked against vocab_size and padding_multiple below
    "bias": False,
    "lm_head_bias": False,
    "parallel_residual": False,
    "shared_attention_norm": False,
    "scale_embeddings": False,
    "norm_class_name": "RMSNorm",
    "rope_base": 10000,
    "n_expert": 0,
    "attention_logit_softcapping": None,
    "final_logit_softcapping": None,
}
_REQUIRED_AUTHORS_FIELDS = ("n_layer", "n_embd", "n_head", "gdn2_num_heads", "gdn2_head_dim", "intermediate_size")


def _integral(name: str, value: Any) -> Any:
    """`value` as an int when it is an integral number (4.0 -> 4); None stays None; else a one-line error."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise UserError(f"config field {name} must be a whole number, got {value!r}")


class GDN2Config(PretrainedConfig):
    """Config of `GDN2ForCausalLM`. Block i is GDN-2 when ``i % gdn2_per_layer == 0``, sliding-window attention
    otherwise (``gdn2_per_layer = 1``: every block recurrent; ``2``: GDN-2 and SWA alternate)."""

    model_type = "gdn2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_key_value_heads: int | None = None,
        gdn2_per_layer: int = 1,
        gdn2_num_heads: int = 12,
        gdn2_num_v_heads: int | None = None,
        gdn2_head_dim: int = 64,
        gdn2_expand_v: int = 1,
        intermediate_size: int = 2048,
        local_window: int = 2048,
        conv_size: int = 4,
        norm_eps: float = 1e-5,
        rotary_percentage: float = 1.0,
        rope_theta: float = 10000.0,
        training_length: int = 4096,
        allow_neg_eigval: bool = False,
        output_gate_act: str = "silu",
        gate_ablation: str = "none",
        gates: str = "gdn2",
        kernel: str = "auto",
        use_qk_l2norm: bool = True,
        initializer_range: float = 0.02,
        decay_init_a: tuple[float, float] = (1.0, 16.0),
        decay_init_dt: tuple[float, float] = (1e-3, 1e-1),
        tie_word_embeddings: bool = False,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.gdn2_per_layer = gdn2_per_layer
        self.gdn2_num_heads = gdn2_num_heads
        self.gdn2_num_v_heads = gdn2_num_v_heads or gdn2_num_heads
        self.gdn2_head_dim = gdn2_head_dim
        self.gdn2_expand_v = gdn2_expand_v
        self.intermediate_size = intermediate_size
        self.local_window = local_window
        self.conv_size = conv_size
        self.norm_eps = norm_eps
        self.rotary_percentage = rotary_percentage
        self.rope_theta = rope_theta
        # The authors' block_size: the context the model was trained at (perplexity protocols default to it). Not a
        # limit: GDN-2 and the windowed attention run at any length.
        self.training_length = training_length
        self.allow_neg_eigval = allow_neg_eigval
        self.output_gate_act = output_gate_act
        self.gate_ablation = gate_ablation
        self.gates = gates
        self.kernel = kernel
        self.use_qk_l2norm = use_qk_l2norm
        self.initializer_range = initializer_range
        # Initial decay rate a * dt (spec section 3: a ~ U(1, 16) per head, dt log-uniform per channel); the product
        # sets how far back a freshly initialised model remembers. Tuples (JSON gives lists back).
        self.decay_init_a = tuple(decay_init_a)
        self.decay_init_dt = tuple(decay_init_dt)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_fields()

    def validate_fields(self) -> None:
        problems = []
        if self.output_gate_act not in OUTPUT_GATE_ACTIVATIONS:
            problems.append(f"output_gate_act={self.output_gate_act!r} (choose {', '.join(OUTPUT_GATE_ACTIVATIONS)})")
        if self.gate_ablation not in GATE_ABLATIONS:
            problems.append(f"gate_ablation={self.gate_ablation!r} (choose {', '.join(GATE_ABLATIONS)})")
        if self.gates not in GATES:
            problems.append(f"gates={self.gates!r} (choose {', '.join(GATES)})")
        elif self.gates != "gdn2":
            if self.gate_ablation != "none":
                problems.append(f"gate_ablation applies to GDN-2's decoupled gates, not to gates={self.gates!r}")
            if self.gdn2_num_v_heads != self.gdn2_num_heads:
                problems.append(f"gates={self.gates!r} needs gdn2_num_v_heads == gdn2_num_heads (one beta per head)")
            if self.allow_neg_eigval:
                problems.append(f"allow_neg_eigval applies to GDN-2's erase gate, not to gates={self.gates!r}")
        for name in ("decay_init_a", "decay_init_dt"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                problems.append(f"{name}={lo_hi} (a range (low, high) with 0 < low <= high)")
        if self.gdn2_per_layer < 1:
            problems.append(f"gdn2_per_layer={self.gdn2_per_layer} (must be >= 1)")
        if self.gdn2_num_v_heads % self.gdn2_num_heads:
            problems.append(f"gdn2_num_v_heads={self.gdn2_num_v_heads} is not a multiple of gdn2_num_heads")
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads is not a multiple of num_key_value_heads")
        if problems:
            raise UserError("invalid GDN-2 config: " + "; ".join(problems))

    # ---- derived sizes -------------------------------------------------------------------------------------------
    @property
    def mixer_types(self) -> list[str]:
        return ["gdn2" if i % self.gdn2_per_layer == 0 else "swa" for i in range(self.num_hidden_layers)]

    @property
    def family(self) -> str:
        """`recurrent` (every mixer GDN-2) or `hybrid` (GDN-2 plus sliding-window attention), as the paper groups."""
        return "recurrent" if all(t == "gdn2" for t in self.mixer_types) else "hybrid"

    @property
    def gdn2_value_dim(self) -> int:
        return self.gdn2_head_dim * self.gdn2_expand_v

    @property
    def attn_head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- construction from the authors' names -------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GDN2Config:
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls.from_authors({**PRESETS[name], "name": name}, **overrides)

    @classmethod
    def from_authors(cls, fields: dict[str, Any], **overrides: Any) -> GDN2Config:
        """Build from the authors' config field names (`n_layer`, `n_embd`, ...)."""
        unknown = sorted(set(fields) - set(AUTHORS_FIELDS) - set(AUTHORS_NEUTRAL_FIELDS))
        if unknown:
            raise UserError(f"unknown config fields {unknown}; known: {', '.join(AUTHORS_FIELDS)}")
        missing = [f for f in _REQUIRED_AUTHORS_FIELDS if f not in fields]
        if missing:
            raise UserError(f"config is missing fields {missing}")
        f = {**_AUTHORS_DEFAULTS, **{k: _integral(k, v) if k in _INTEGRAL_AUTHORS_FIELDS else v
                                     for k, v in fields.items()}}
        padded_vocab = int(math.ceil(f["vocab_size"] / f["padding_multiple"]) * f["padding_multiple"])
        for name, neutral in AUTHORS_NEUTRAL_FIELDS.items():
            if name in f and neutral is not None and f[name] != neutral:
                raise UserError(f"config field {name}={f[name]!r} would change the architecture; this model "
                                f"implements {name}={neutral!r} only")
        if f.get("padded_vocab_size") not in (None, padded_vocab):
            raise UserError(f"config field padded_vocab_size={f['padded_vocab_size']!r} does not match vocab_size "
                            f"{f['vocab_size']} padded to a multiple of {f['padding_multiple']} ({padded_vocab})")
        kwargs = dict(
            vocab_size=padded_vocab,
            hidden_size=f["n_embd"],
            num_hidden_layers=f["n_layer"],
            num_attention_heads=f["n_head"],
            num_key_value_heads=f.get("n_query_groups") or f["n_head"],
            gdn2_per_layer=f.get("gdn2_per_layer", 1),
            gdn2_num_heads=f["gdn2_num_heads"],
            gdn2_num_v_heads=f.get("gdn2_num_v_heads"),
            gdn2_head_dim=f["gdn2_head_dim"],
            gdn2_expand_v=f["gdn2_expand_v"],
            intermediate_size=f["intermediate_size"],
            local_window=f["local_window"],
            norm_eps=f["norm_eps"],
            rotary_percentage=f["rotary_percentage"],
            training_length=f["block_size"],
            allow_neg_eigval=bool(f.get("allow_neg_eigval", False)),
            preset=f.get("name"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_arch(cls, arch: str | Path, **overrides: Any) -> GDN2Config:
        """`arch` is a preset name or a JSON file of the authors' config fields."""
        path = Path(arch)
        if str(arch) in PRESETS:
            return cls.from_preset(str(arch), **overrides)
        if path.suffix == ".json" or path.exists():
            if not path.is_file():
                raise UserError(f"arch file {path} does not exist")
            try:
                fields = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"arch file {path} is not valid JSON: {e}") from None
            if not isinstance(fields, dict):
                raise UserError(f"arch file {path} must hold a JSON object of config fields")
            return cls.from_authors(fields, **overrides)
        raise UserError(f"unknown preset {str(arch)!r}; presets: {', '.join(PRESETS)} (or pass a JSON file)")
