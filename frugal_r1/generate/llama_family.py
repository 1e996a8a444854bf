"""A fast decoder for transformers' Llama-family causal LMs (Llama, Qwen2, Mistral), on the module's own
parameters.

Every layer of these models is the same pre-norm block:

    h  = x + o_proj(attention(rope(q_proj(n₁(x))), rope(k_proj(n₁(x))), v_proj(n₁(x))))
    x' = h + down_proj(act(gate_proj(n₂(h))) · up_proj(n₂(h)))          n = RMSNorm, attention with GQA

and the logits are lm_head(norm(x)). For a tiny model on a CPU, transformers' forward costs more in
Python than in arithmetic (mask construction, a growing `DynamicCache`, output dataclasses…), so
`LlamaFamilyStepper` computes the same equations directly with torch functions:
- the weights are read from the HF module at each generation (copied only where stacked, below), so an
  optimizer step is seen by the next generation;
- prompts that appear several times in the batch (GRPO's G samples per prompt) are prefilled once, and their
  keys and values copied into each of their rows' slots of a preallocated cache [layers, 2, B, H_kv,
  prompt + budget, D]; completions are written in place at a slot shared by all rows (left padding is masked,
  positions restart at each row's first real token, as in HFStepper);
- a decode step's attention is one fused SDPA call per layer, each row's g query heads per kv head laid along
  the query axis. Keeping each prompt's keys once and scoring prompt and completion keys separately (the
  earlier layout) took ~15 small ops a layer: 132 vs 86 µs at 4 prompts × 8 rows × 100 prompt tokens, 261 vs
  210 µs at 8 × 8 × 128, even (1.22 vs 1.26 ms) at 8 × 16 × 300 with 300 generated (2-vCPU Xeon, 2026-12-05).
  Tried and not kept (2-core AVX2 EPYC, 2026-12-07): two matmuls and a softmax instead of the fused call, a whole
  bench_grpo generation 0.229 vs 0.254 s (same tokens), but 12.7 vs 10.1 ms a call at 64 rows × 7 query heads per
  kv head × 1,000 keys, where the fused kernel wins; decoding half the rows on each of two Python threads with one
  torch thread each, 0.266 vs 0.233 s (the interpreter lock serialises the ~80 small ops a step);
  torch.compile(dynamic=True) of a step's layers (2026-12-07): each compile took ~60 s on the two cores, and
  the cache write at the step's slot was specialised anyway, so it recompiled every step until the limit of 8
  (485 s) and then ran at 1.3 s a generation against eager's 0.27-0.37 s;
- cos/sin come from the model's own `rotary_emb`, so every static RoPE type transformers implements
  (default, linear, llama3, yarn, …) is computed by transformers itself;
- logits only for the last position;
- for a small model, q/k/v and gate/up run as one matmul each on weights stacked once per generation.

`unsupported_reason` says why a model must take transformers' own forward instead (another architecture,
dynamic RoPE, a sliding window shorter than the sequence, hooks or adapters on the modules…); callers fall
back to HFStepper then. The per-layer math lives in `Layer` so the training forward (train/shared_prefix.py)
runs exactly the same equations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
# Below this many bytes of parameters the decoder stacks q/k/v and gate/up into one matmul each, copied once
# per generation (a decode step of a small model is mostly per-call overhead); above it a step is
# matmul-bound and the copy would only cost memory.
STACK_BELOW_BYTES = 256 * 2**20
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def unsupported_reason(model: nn.Module, length: int) -> str | None:
    """None when `model` can run here for sequences of up to `length` positions; else why not."""
    name = type(model).__name__
    if name not in ARCHITECTURES:
        return f"{name} is not one of {', '.join(ARCHITECTURES)}"
    config, inner = model.config, getattr(model, "model", None)
    rope_type = getattr(getattr(inner, "rotary_emb", None), "rope_type", None)
    if not isinstance(rope_type, str) or "dynamic" in rope_type or rope_type == "longrope":
        return f"RoPE type {rope_type!r} changes with the sequence length"
    window = _sliding_window(model)
    if window is not None and length > window:
        return f"sliding window {window} is shorter than {length} positions"
    if getattr(model, "is_activation_checkpointing", False):
        return "gradient checkpointing is on"
    if model.training and getattr(config, "attention_dropout", 0.0):
        return "attention dropout is on"
    if len(inner.layers) != config.num_hidden_layers:
        return "the layer count differs from the config"
    for layer in inner.layers:
        linears = [getattr(layer.self_attn, p) for p in _PROJECTIONS] + [getattr(layer.mlp, p) for p in _MLP]
        if any(type(m) is not nn.Linear for m in linears):
            return "a projection is not a plain nn.Linear (an adapter or quantized layer)"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not type(norm).__name__.endswith("RMSNorm") or not hasattr(norm, "variance_epsilon"):
                return f"{type(norm).__name__} is not the RMSNorm this decoder implements"
    if any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in model.modules()):
        return "a module has forward hooks"
    if not all(p.dtype.is_floating_point for p in model.parameters()):
        return "the weights are not floating point"
    return None


def _sliding_window(model: nn.Module) -> int | None:
    config = model.config
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if type(model).__name__ == "MistralForCausalLM":  # Mistral applies the config's window to every layer
        return int(window)
    layer_types = getattr(config, "layer_types", None) or []
    return int(window) if "sliding_attention" in layer_types else None


# ------------------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm: x / sqrt(mean(x²) + ε) in float32, back to x's dtype, times the weight."""
    if x.dtype == weight.dtype == torch.float32:  # one fused kernel, the same numbers
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, with rotate_half(x)·sin = roll(x, D/2)·[-sin₁, sin₂] (see `signed_sin`)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


@dataclass
class Layer:
    """One decoder layer's parameters (the module's own tensors), looked up once per forward: nn.Module
    attribute access and calls cost more than a tiny model's arithmetic."""

    input_norm: torch.Tensor
    input_eps: float
    post_norm: torch.Tensor
    post_eps: float
    q: torch.Tensor
    q_bias: torch.Tensor | None
    k: torch.Tensor
    k_bias: torch.Tensor | None
    v: torch.Tensor
    v_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate: torch.Tensor
    gate_bias: torch.Tensor | None
    up: torch.Tensor
    up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    act: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    # Set by `stacked()`: q/k/v and gate/up as one matmul each.
    qkv_stack: tuple[torch.Tensor, torch.Tensor | None] | None = None
    gate_up_stack: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @classmethod
    def of(cls, layer: nn.Module) -> "Layer":
        attn, mlp = layer.self_attn, layer.mlp
        linears = [getattr(attn, p) for p in _PROJECTIONS] + [getattr(mlp, p) for p in _MLP]
        tensors = [t for m in linears for t in (m.weight, m.bias)]
        head_dim = attn.head_dim
        norm, post = layer.input_layernorm, layer.post_attention_layernorm
        return cls(norm.weight, norm.variance_epsilon, post.weight, post.variance_epsilon, *tensors, mlp.act_fn,
                   attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim, head_dim, attn.scaling)

    def stacked(self) -> "Layer":
        """This layer with q/k/v and gate/up each stacked into one weight, copied now: for a decode loop, which
        reuses them every step and whose small matmuls cost more in calls than in arithmetic."""
        return replace(self, qkv_stack=_stack((self.q, self.q_bias), (self.k, self.k_bias), (self.v, self.v_bias)),
                       gate_up_stack=_stack((self.gate, self.gate_bias), (self.up, self.up_bias)))

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor):
        """x [..., d] -> q [..., H, D], k and v [..., H_kv, D], RoPE applied (cos/sin [..., 1, D])."""
        h = rms_norm(x, self.input_norm, self.input_eps)
        if self.qkv_stack is not None:  # one matmul, and RoPE on the query and key heads at once
            qkv = F.linear(h, *self.qkv_stack)
            heads = self.heads + self.kv_heads
            qk = rope(qkv[..., : heads * self.head_dim].unflatten(-1, (heads, self.head_dim)), cos, sin_signed)
            q, k = qk.split([self.heads, self.kv_heads], dim=-2)
            return q, k, qkv[..., heads * self.head_dim:].unflatten(-1, (self.kv_heads, self.head_dim))
        q, k, v = F.linear(h, self.q, self.q_bias), F.linear(h, self.k, self.k_bias), F.linear(h, self.v, self.v_bias)
        q = q.unflatten(-1, (self.heads, self.head_dim))
        k = k.unflatten(-1, (self.kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.kv_heads, self.head_dim))
        return rope(q, cos, sin_signed), rope(k, cos, sin_signed), v

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual stream after the attention output [..., H·D] and the MLP."""
        x = x + F.linear(attended, self.o, self.o_bias)
        h = rms_norm(x, self.post_norm, self.post_eps)
        if self.gate_up_stack is not None:
            gate, up = F.linear(h, *self.gate_up_stack).chunk(2, dim=-1)
        else:
            gate, up = F.linear(h, self.gate, self.gate_bias), F.linear(h, self.up, self.up_bias)
        return x + F.linear(self.act(gate) * up, self.down, self.down_bias)


def _stack(*linears: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the linears' outputs side by side; a missing bias among present ones is zeros."""
    weight = torch.cat([w for w, _ in linears]).detach()
    if all(b is None for _, b in linears):
        return weight, None
    return weight, torch.cat([b if b is not None else w.new_zeros(len(w)) for w, b in linears]).detach()


def layers_of(model: nn.Module) -> list[Layer]:
    return [Layer.of(layer) for layer in model.model.layers]


def rope_table(model: nn.Module, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) [length, D] for positions 0…length-1, from the model's own rotary embedding."""
    positions = torch.arange(length, device=device)[None]
    cos, sin = model.model.rotary_emb(torch.empty(0, device=device, dtype=dtype), positions)
    return cos[0], signed_sin(sin[0])


def head_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    norm = model.model.norm
    return model.lm_head(rms_norm(x, norm.weight, norm.variance_epsilon))


# ------------------------------------------------------------------------------------------------------
class LlamaFamilyStepper:
    """The decode loop's Stepper (engine.py) for a supported model; see the module docstring.

    Each distinct prompt is prefilled once; its keys and values are then copied into the cache of every row
    that shares it, [layers, 2, B, H_kv, P + budget, D], so a decode step's attention is one fused call per
    layer, with a row's g query heads per kv head laid along the query axis (GQA without repeating the keys).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers = layers_of(model)
        if sum(p.numel() * p.element_size() for p in model.parameters()) <= STACK_BELOW_BYTES:
            self.layers = [layer.stacked() for layer in self.layers]
        weight = model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.length = 0  # cached positions: the prompt width, then one more per step

    def prefill(self, ids: torch.Tensor, pad: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, width = ids.shape
        first = self.layers[0]
        self.cos, self.sin = rope_table(self.model, width + capacity, self.device, self.dtype)
        distinct, inverse = torch.unique(torch.cat([ids, pad[:, None]], dim=1), dim=0, return_inverse=True)
        ids, pad = distinct[:, :-1].to(self.device), distinct[:, -1]
        rows = inverse.to(self.device)
        real = (torch.arange(width)[None, :] >= pad[:, None]).to(self.device)  # [U, P]
        # Additive attention bias per row over the cache: -inf on the prompt's left padding.
        self.bias = torch.zeros(batch, 1, 1, width + capacity, device=self.device, dtype=self.dtype)
        self.bias[:, 0, 0, :width].masked_fill_(~real[rows], float("-inf"))
        self.kv = torch.empty(len(self.layers), 2, batch, first.kv_heads, width + capacity, first.head_dim,
                              device=self.device, dtype=self.dtype)
        positions = (torch.arange(width)[None, :] - pad[:, None]).clamp(min=0).to(self.device)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        # A padding query also sees itself, so its (never used) outputs stay finite.
        mask = (causal & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=self.device)
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            self.kv[i, 0, :, :, :width], self.kv[i, 1, :, :, :width] = k[rows], v[rows]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask[:, None],
                                                 scale=layer.scaling, enable_gqa=True)
            x = layer.finish(x, out.transpose(1, 2).flatten(2))
        self.length = width
        return head_logits(self.model, x[:, -1])[rows].float().cpu()

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        slot = self.length
        self.length += 1
        positions = positions.to(self.device)
        x = self.model.model.embed_tokens(tokens.to(self.device))  # [B, d]
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        bias = self.bias[..., : self.length]
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            self.kv[i, 0, :, :, slot] = k
            self.kv[i, 1, :, :, slot] = v
            queries = q.unflatten(1, (layer.kv_heads, -1))  # [B, H_kv, g, D]: query head h uses kv head h // g
            out = F.scaled_dot_product_attention(queries, self.kv[i, 0, :, :, : self.length],
                                                 self.kv[i, 1, :, :, : self.length], attn_mask=bias,
                                                 scale=layer.scaling)
            x = layer.finish(x, out.flatten(1))
        return head_logits(self.model, x).float().cpu()

    def keep(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.device)
        self.kv = self.kv[:, :, rows]
        self.bias = self.bias[rows]


__all__ = ["ARCHITECTURES", "LlamaFamilyStepper", "Layer", "unsupported_reason", "layers_of", "rope_table",
           "head_logits", "rms_norm", "rope", "signed_sin"]
