"""GDN2ForCausalLM: the authors' pre-norm stack (spec section 4) as a Hugging Face causal LM.

Padded batches run as packed variable-length sequences (see `TokenLayout`), so each row gets exactly the logits it
would get alone, with left or right padding; pad slots get zero logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..kernels import resolve_backend
from .cache import GDN2Cache
from .configuration_gdn2 import GDN2Config
from .gdn2_layer import GDN2Mixer
from .layout import TokenLayout
from .modules import RMSNorm, SwiGLU
from .swa import SlidingWindowAttention

# transformers' generation hands the cache back to the model as `cache` since it renamed `past_key_values` (after
# 5.17); the models take either name and return the cache in the output field the installed version reads back
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class GDN2Block(nn.Module):
    """x = x + mixer(RMSNorm(x)); x = x + MLP(RMSNorm(x))."""

    def __init__(self, config: GDN2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_type = config.mixer_types[layer_idx]
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        mixer = GDN2Mixer if self.layer_type == "gdn2" else SlidingWindowAttention
        self.attn = mixer(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, layout, cache_layer, past_lens):
        h = self.attn_norm(x)
        if self.layer_type == "gdn2":
            x = x + self.attn(h, layout, cache_layer)
        else:
            x = x + self.attn(h, layout, cache_layer, past_lens)
        return x + self.mlp(self.mlp_norm(x))


class GDN2PreTrainedModel(PreTrainedModel):
    config_class = GDN2Config
    base_model_prefix = "model"
    _no_split_modules = ["GDN2Block"]
    _supports_cache_class = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, GDN2Mixer):
            # spec section 3: Xavier-uniform with gain 2^-2.5 and zero biases for the mixer's projections
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    init.xavier_uniform_(sub.weight, gain=2**-2.5)
                    if sub.bias is not None:
                        init.zeros_(sub.bias)
                    sub._gdn2_initialised = True
            H, n = module.A_log.shape[0], module.dt_bias.shape[0]
            (a_lo, a_hi), (dt_lo, dt_hi) = self.config.decay_init_a, self.config.decay_init_dt
            init.copy_(module.A_log, torch.empty(H, device=module.A_log.device).uniform_(a_lo, a_hi).log())
            dt = torch.empty(n, device=module.dt_bias.device).uniform_(math.log(dt_lo), math.log(dt_hi)).exp()
            dt = dt.clamp(min=dt_lo)  # exp(log(.)) may round below the range
            init.copy_(module.dt_bias, dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        elif isinstance(module, nn.Linear) and not getattr(module, "_gdn2_initialised", False):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif hasattr(module, "weight") and module.__class__.__name__.endswith("RMSNorm"):
            init.ones_(module.weight)
        elif module.__class__.__name__ == "ShortConv":
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))


class GDN2Model(GDN2PreTrainedModel):
    def __init__(self, config: GDN2Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GDN2Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        cache: GDN2Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        packed: bool = False,
    ) -> torch.Tensor:
        """Returns the final hidden states [B, T, D] (zeros at pad slots). `packed`: see `TokenLayout.build`."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        mask = None if attention_mask is None else attention_mask[:, -T:]
        past_lens = None if cache is None or cache.seen_columns == 0 else cache.seq_lens
        backend = resolve_backend(self.config.kernel, x.device)
        layout = TokenLayout.build(B, T, mask, past_lens, backend, x.device, packed)
        x = layout.pack(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, layout, None if cache is None else cache.layers[i], past_lens)
        x = layout.unpack(self.norm(x))
        if cache is not None:
            added = torch.full((B,), T, device=x.device) if layout.valid is None else layout.valid.sum(1)
            cache.seq_lens = cache.seq_lens + added
            cache.seen_columns += T
        return x


class GDN2ForCausalLM(GDN2PreTrainedModel, GenerationMixin):
    def __init__(self, config: GDN2Config) -> None:
        super().__init__(config)
        self.model = GDN2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model brings its own recurrent/windowed cache

    def new_cache(self, batch_size: int) -> GDN2Cache:
        return GDN2Cache(self.config.num_hidden_layers, batch_size, self.device)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: GDN2Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        packed: bool = False,
        cache: GDN2Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = past_key_values if cache is None else cache
        use_cache = use_cache if use_cache is not None else cache is not None
        if use_cache and cache is None:
            batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            cache = self.new_cache(batch)
        hidden = self.model(input_ids, attention_mask, cache if use_cache else None, inputs_embeds, packed)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None})

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: GDN2Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = True,
        logits_to_keep: int | None = None,
        cache: GDN2Cache | None = None,
        **kwargs,
    ) -> dict:
        past_key_values = past_key_values if cache is None else cache
        inputs: dict = {CACHE_FIELD: past_key_values, "attention_mask": attention_mask, "use_cache": use_cache}
        if past_key_values is not None and past_key_values.seen_columns > 0:
            inputs["input_ids"] = input_ids[:, past_key_values.seen_columns :]
        elif inputs_embeds is not None:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs
