"""GDN2InferenceForCausalLM: the reference `GDN2ForCausalLM` repacked for speed, computing the same function.

Built once from a loaded reference model (`from_reference`), as vLLM builds its inference models from a checkpoint:

* one GEMM for everything that reads a mixer's input: q, k, v, the gates' logits and the first stages of the
  low-rank decay and output-gate branches (ten projections in the reference); the MLP's w1 and w2 as one GEMM;
* the short convolutions + SiLU over the concatenated q/k/v channels as one kernel that reads the packed tokens in
  place and carries each row's state (`kernels/conv`);
* the gate activations in one pass (`kernels/gates`); the output RMSNorm x gate, each residual add + the next
  RMSNorm, and SiLU x mul each one kernel (`kernels/norm`, `kernels/swiglu`);
* the decode state written in place: a one-token step updates the conv and recurrent states where they lie, so a
  CUDA graph replays it with no copies around it; with the project's kernels (`kernel=triton`) the whole step
  between the mixer's projections (conv, gates, recurrence, gated norm) is one kernel (`kernels/decode`).

The checkpoint layout is untouched: `save_pretrained` writes the reference model's files (`to_reference`). Sliding-
window attention blocks of hybrids run the reference module as they are.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..kernels import gdn2_recurrence, resolve_backend
from ..kernels.fused import FusedOps, fused_ops
from ..kernels.gates.naive import GateLayout
from ..model import GDN2Cache, GDN2ForCausalLM
from ..model.gdn2_layer import GDN2Mixer
from ..model.layout import TokenLayout
from ..model.modeling_gdn2 import CACHE_FIELD, GDN2PreTrainedModel


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach(), requires_grad=False)


class _Packer:
    """Concatenates weight rows and remembers where each reference tensor went (to unpack them again)."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, torch.Tensor]] = []
        self.rows = 0

    def add(self, name: str, t: torch.Tensor) -> int:
        start = self.rows
        self.parts.append((name, t))
        self.rows += t.shape[0]
        return start

    def done(self) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        spans, start = {}, 0
        for name, t in self.parts:
            spans[name] = (start, start + t.shape[0])
            start += t.shape[0]
        return torch.cat([t for _, t in self.parts], 0), spans


class FusedGDN2Mixer(nn.Module):
    """A GDN-2 mixer (any gate kind) on packed weights. `unpacked()` gives back the reference tensors."""

    def __init__(self, ref: GDN2Mixer) -> None:
        super().__init__()
        c = ref.config
        self.config = c
        self.H, self.HV, self.K, self.V = ref.num_heads, ref.num_v_heads, ref.head_k_dim, ref.head_v_dim
        self.kind = ref.gate_kind
        H, HV, K, V = self.H, self.HV, self.K, self.V
        p = _Packer()
        for name in ("q_proj", "k_proj", "v_proj"):
            p.add(f"{name}.weight", getattr(ref, name).weight)
        if self.kind == "gdn2":
            off_b = p.add("b_proj.weight", ref.b_proj.weight)
            off_w = p.add("w_proj.weight", ref.w_proj.weight)
            off_a = 0
        else:
            off_b, off_w = p.add("beta_proj.weight", ref.beta_proj.weight), 0
            off_a = p.add("a_proj.weight", ref.a_proj.weight) if self.kind == "gdn" else 0
        self.f0 = p.add("f_proj.0.weight", ref.f_proj[0].weight) if self.kind != "gdn" else None
        self.g0 = p.add("g_proj.0.weight", ref.g_proj[0].weight)
        w_in, self.spans = p.done()
        self.w_in = _frozen(w_in)
        self.splits = (H * K, H * K, HV * V)
        self.conv_w = _frozen(torch.cat([getattr(ref, f"{n}_conv1d").weight[:, 0] for n in "qkv"], 0))
        self.f1 = _frozen(ref.f_proj[1].weight) if self.kind != "gdn" else None
        self.g1_w, self.g1_b = _frozen(ref.g_proj[1].weight), _frozen(ref.g_proj[1].bias)
        self.fg1_w = self.fg1_b = None
        if self.f1 is not None:
            # the decode step runs both branches' second stages as one GEMM on a block-diagonal weight (their inputs
            # are adjacent columns of P): one launch less a layer where launches, not bytes, set the step's time.
            # Prefill keeps the two GEMMs, which multiply no zeros.
            f1, g1 = self.f1, self.g1_w
            fg1 = f1.new_zeros(f1.shape[0] + g1.shape[0], f1.shape[1] + g1.shape[1])
            fg1[: f1.shape[0], : f1.shape[1]] = f1
            fg1[f1.shape[0] :, f1.shape[1] :] = g1
            self.fg1_w = _frozen(fg1)
            self.fg1_b = _frozen(torch.cat((self.g1_b.new_zeros(f1.shape[0]), self.g1_b)))
            assert self.g0 == self.f0 + f1.shape[1], "the two branches' inputs must be adjacent columns of P"
        self.A_log, self.dt_bias = _frozen(ref.A_log), _frozen(ref.dt_bias)
        self.o_norm_w, self.o_proj = _frozen(ref.o_norm.weight), _frozen(ref.o_proj.weight)
        self._gate_cols = (off_b, off_w, off_a)

    @property
    def gate_layout(self) -> GateLayout:
        # the ablation and the eigenvalue range are read from the config at each call, as the reference mixer does
        # (a run can set `gate_ablation` on a loaded model)
        return GateLayout(self.kind, self.H, self.HV, self.K, self.V, *self._gate_cols,
                          bool(self.config.allow_neg_eigval), self.config.gate_ablation)

    def unpacked(self) -> dict[str, torch.Tensor]:
        """The reference mixer's state dict (keys relative to the mixer)."""
        out = {name: self.w_in[a:b] for name, (a, b) in self.spans.items()}
        for n, part in zip("qkv", self.conv_w.split(list(self.splits), 0)):
            out[f"{n}_conv1d.weight"] = part[:, None]
        if self.f1 is not None:
            out["f_proj.1.weight"] = self.f1
        out.update({"g_proj.1.weight": self.g1_w, "g_proj.1.bias": self.g1_b, "A_log": self.A_log,
                    "dt_bias": self.dt_bias, "o_norm.weight": self.o_norm_w, "o_proj.weight": self.o_proj})
        return out

    def _cols(self, P: torch.Tensor, start: int, width: int) -> torch.Tensor:
        return P[:, start : start + width]

    def _branches(self, P: torch.Tensor, step: bool, ops: FusedOps) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The low-rank decay branch's output f (None for "gdn") and the output gate's pre-activation u."""
        if step and self.fg1_w is not None:
            fu = ops.linear(self._cols(P, self.f0, self.fg1_w.shape[1]), self.fg1_w, self.fg1_b)
            return fu[:, : self.f1.shape[0]], fu[:, self.f1.shape[0] :]
        f = None if self.f1 is None else ops.linear(self._cols(P, self.f0, self.f1.shape[1]), self.f1, None)
        return f, ops.linear(self._cols(P, self.g0, self.g1_w.shape[1]), self.g1_w, self.g1_b)

    def forward(self, h: torch.Tensor, layout: TokenLayout, state: dict[str, Any] | None, ops: FusedOps,
                step: bool) -> torch.Tensor:
        """h [N, D]: the packed tokens (prefill) or one token per cache row (`step`). Returns [N, D]."""
        H, HV, K, V = self.H, self.HV, self.K, self.V
        P = ops.linear(h, self.w_in, None)
        C = sum(self.splits)
        if step and layout.backend == "triton":  # the project's kernels: the whole step between projections in one
            return ops.linear(self._fused_step(P, state, ops), self.o_proj, None)
        if step:
            q, k, v = ops.short_conv_step(P[:, :C], self.conv_w, state["conv"], self.splits)
        else:
            conv = None if state is None else state["conv"]
            (q, k, v), new_conv = ops.short_conv(P[:, :C], self.conv_w, layout.cu_seqlens, layout.seq_index,
                                                 layout.pos_in_call, conv, layout.rows, self.splits)
            if state is not None:
                state["conv"].index_copy_(0, layout.rows, new_conv)
        f, u = self._branches(P, step, ops)
        g, b, w = ops.gates(P, f, self.A_log, self.dt_bias, self.gate_layout)

        n = h.shape[0]
        lead = (n, 1) if step else (1, n)  # [B, 1] per decode row, or [1, total] packed
        q, k, g, b = (t.view(*lead, H, K) for t in (q, k, g, b))
        v, w = v.view(*lead, HV, V), w.view(*lead, HV, V)
        if HV > H:  # grouped value heads, as in the reference mixer
            q, k, g, b = (t.repeat_interleave(HV // H, dim=2) for t in (q, k, g, b))
        if step:
            init, cu = state["recurrent"], None
        else:
            init = None if state is None else state["recurrent"].index_select(0, layout.rows)
            cu = layout.cu_seqlens
        o, final = gdn2_recurrence(q, k, v, g, b, w, backend=layout.backend, scale=K**-0.5, initial_state=init,
                                   output_final_state=state is not None, cu_seqlens=cu,
                                   use_qk_l2norm=self.config.use_qk_l2norm, inplace_final_state=step)
        if state is not None and not step:
            state["recurrent"].index_copy_(0, layout.rows, final)
        y = ops.gated_rms_norm(o.reshape(n, HV, V), u, self.o_norm_w, self.config.norm_eps,
                               self.config.output_gate_act)
        return ops.linear(y, self.o_proj, None)

    def _fused_step(self, P: torch.Tensor, state: dict[str, Any], ops: FusedOps) -> torch.Tensor:
        """One token per cache row: conv, gates, recurrence and gated norm as one kernel (`kernels/decode`), both
        states updated where they lie."""
        c = self.config
        f, u = self._branches(P, True, ops)
        return ops.decode_step(P, f, u, self.conv_w, state["conv"], state["recurrent"], self.A_log, self.dt_bias,
                               self.o_norm_w, self.gate_layout, c.norm_eps, c.output_gate_act, self.K**-0.5,
                               bool(c.use_qk_l2norm))

    def new_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Zero state (an empty sequence's) of `batch` cache rows, preallocated so that updates happen in place."""
        return {
            "recurrent": torch.zeros(batch, self.HV, self.K, self.V, dtype=torch.float32, device=device),
            "conv": torch.zeros(batch, self.conv_w.shape[1] - 1, self.conv_w.shape[0], dtype=dtype, device=device),
        }


class FusedBlock(nn.Module):
    """One block: [residual add +] RMSNorm, mixer, residual add + RMSNorm, SwiGLU on one w1|w2 GEMM."""

    def __init__(self, ref_block: nn.Module) -> None:
        super().__init__()
        self.layer_type = ref_block.layer_type
        self.attn_norm_w = _frozen(ref_block.attn_norm.weight)
        self.mlp_norm_w = _frozen(ref_block.mlp_norm.weight)
        # hybrids' attention blocks keep the reference module (its own state dict, window cache and kernels)
        self.attn = FusedGDN2Mixer(ref_block.attn) if self.layer_type == "gdn2" else ref_block.attn
        mlp = ref_block.mlp
        self.w12 = _frozen(torch.cat((mlp.w1.weight, mlp.w2.weight), 0))
        self.w3 = _frozen(mlp.w3.weight)

    def unpacked(self) -> dict[str, torch.Tensor]:
        w1, w2 = self.w12.chunk(2, 0)
        attn = self.attn.unpacked() if self.layer_type == "gdn2" else self.attn.state_dict()
        out = {f"attn.{k}": v for k, v in attn.items()}
        out.update({"attn_norm.weight": self.attn_norm_w, "mlp_norm.weight": self.mlp_norm_w,
                    "mlp.w1.weight": w1, "mlp.w2.weight": w2, "mlp.w3.weight": self.w3})
        return out


class GDN2InferenceForCausalLM(GDN2PreTrainedModel, GenerationMixin):
    """Same forward and cache interface as `GDN2ForCausalLM` (what the `gdn2` backend and the decode loop use),
    built from one with `from_reference`; it takes over the reference's tensors, so use only this one afterwards."""

    def __init__(self, reference: GDN2ForCausalLM) -> None:
        super().__init__(reference.config)
        ref = reference.model
        self.embed_tokens = ref.embed_tokens
        self.layers = nn.ModuleList(FusedBlock(block) for block in ref.layers)
        self.norm_w = _frozen(ref.norm.weight)
        self.lm_head = reference.lm_head
        self.eps = reference.config.norm_eps

    @classmethod
    def from_reference(cls, reference: GDN2ForCausalLM) -> GDN2InferenceForCausalLM:
        with torch.no_grad():
            return cls(reference).eval()

    # ---- the reference layout, for saving and for checks -----------------------------------------------------
    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        out = {"model.embed_tokens.weight": self.embed_tokens.weight, "model.norm.weight": self.norm_w,
               "lm_head.weight": self.lm_head.weight}
        for i, block in enumerate(self.layers):
            out.update({f"model.layers.{i}.{k}": v for k, v in block.unpacked().items()})
        return out

    def to_reference(self) -> GDN2ForCausalLM:
        """A reference model with copies of these weights (the checkpoint layout)."""
        with torch.device("meta"):
            ref = GDN2ForCausalLM(self.config)
        state = {k: v.detach().clone() for k, v in self.reference_state_dict().items()}
        ref.load_state_dict(state, strict=True, assign=True)
        return ref.eval()

    def save_pretrained(self, *args, **kwargs):
        """Writes the reference model's files: checkpoints never see the packed layout."""
        return self.to_reference().save_pretrained(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    prepare_inputs_for_generation = GDN2ForCausalLM.prepare_inputs_for_generation

    # ---- cache and forward -------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> GDN2Cache:
        cache = GDN2Cache(len(self.layers), batch_size, self.device)
        self._add_states(cache)
        return cache

    @property
    def _first_gdn2(self) -> int:
        return next(i for i, b in enumerate(self.layers) if b.layer_type == "gdn2")

    def _add_states(self, cache: GDN2Cache) -> None:
        for layer, block in zip(cache.layers, self.layers):
            if block.layer_type == "gdn2":
                layer.update(block.attn.new_state(cache.batch_size, self.device, self.embed_tokens.weight.dtype))

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
        """As `GDN2ForCausalLM.forward`. Every call runs packed (`packed` is accepted for the same interface), except
        a one-token step on a cache that has seen tokens: one row per cache row, states updated in place."""
        cache = past_key_values if cache is None else cache
        use_cache = use_cache if use_cache is not None else cache is not None
        cache = cache if use_cache else None
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        if use_cache and cache is None:
            cache = self.new_cache(B)
        mask = None if attention_mask is None else attention_mask[:, -T:]
        past_lens = None if cache is None or cache.seen_columns == 0 else cache.seq_lens
        step = cache is not None and T == 1 and mask is None and cache.seen_columns > 0
        backend = resolve_backend(self.config.kernel, x.device, fused_step=step)
        layout = TokenLayout.build(B, T, mask, past_lens, backend, x.device, packed=not step)
        ops = fused_ops(x.device)
        if cache is not None and "recurrent" not in cache.layers[self._first_gdn2]:
            self._add_states(cache)  # a cache made elsewhere: start every row from the empty sequence's state
        s = x[:, 0] if step else layout.pack(x)[0]  # the residual stream [N, D], written in place from here on
        if inputs_embeds is not None:
            s = s.clone()
        s, h = ops.add_rms_norm(s, None, self.layers[0].attn_norm_w, self.eps)
        for i, block in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[i]
            if block.layer_type == "gdn2":
                y = block.attn(h, layout, layer_cache, ops, step)
            else:  # reference attention on the [B, 1, D] / [1, total, D] view it expects
                y = block.attn(h[:, None] if step else h[None], layout, layer_cache, past_lens)
                y = y[:, 0] if step else y[0]
            s, h = ops.add_rms_norm(s, y.contiguous(), block.mlp_norm_w, self.eps)
            m = ops.linear(ops.swiglu(ops.linear(h, block.w12, None)), block.w3, None)
            nxt = self.layers[i + 1].attn_norm_w if i + 1 < len(self.layers) else self.norm_w
            s, h = ops.add_rms_norm(s, m, nxt, self.eps)
        hidden = h[:, None] if step else layout.unpack(h[None])
        if cache is not None:
            added = torch.full((B,), T, device=x.device) if layout.valid is None else layout.valid.sum(1)
            cache.seq_lens = cache.seq_lens + added
            cache.seen_columns += T
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        kept = hidden[:, keep]
        logits = ops.linear(kept.flatten(0, 1), self.lm_head.weight, self.lm_head.bias).view(*kept.shape[:2], -1)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})
