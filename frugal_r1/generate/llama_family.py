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
- prompts that appear several times in the batch (GRPO's G samples per prompt) are prefilled once and
  their keys and values kept once: at 8 prompts × 8 samples × 128 tokens, reading every row's copy of its
  prompt's cache made attention 40% of a decode step;
- completions go to a preallocated cache [layers, 2, B, H_kv, budget, D], written in place at a slot
  shared by all rows (left padding is masked, positions restart at each row's first real token, as in
  HFStepper);
- cos/sin come from the model's own `rotary_emb`, so every static RoPE type transformers implements
  (default, linear, llama3, yarn, …) is computed by transformers itself;
- logits only for the last position;
- for a small model, q/k/v and gate/up run as one matmul each on weights stacked once per generation, and
  while the rows are laid out prompt by prompt with equal counts (as GRPO's groups are until finished rows
  are dropped) the shared-prompt attention regroups them with a reshape instead of a scatter and a gather.

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
        if self.qkv_stack is not None:
            q, k, v = F.linear(h, *self.qkv_stack).split([len(self.q), len(self.k), len(self.v)], dim=-1)
        else:
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

    Each distinct prompt's keys and values are kept once, [U, H_kv, P, D]; the rows sharing it are its
    "slots" (row r of prompt u at u·n + r, n = the most rows any prompt has), so one batched matmul scores
    every prompt's rows against its keys. Completion keys and values are per row, [B, H_kv, budget, D].
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers = layers_of(model)
        if sum(p.numel() * p.element_size() for p in model.parameters()) <= STACK_BELOW_BYTES:
            self.layers = [layer.stacked() for layer in self.layers]
        weight = model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.length = 0  # completion tokens cached

    def prefill(self, ids: torch.Tensor, pad: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, width = ids.shape
        first = self.layers[0]
        self.cos, self.sin = rope_table(self.model, width + capacity, self.device, self.dtype)
        distinct, inverse = torch.unique(torch.cat([ids, pad[:, None]], dim=1), dim=0, return_inverse=True)
        # unique sorts; number the prompts by first appearance instead, so rows given prompt by prompt (GRPO's
        # G samples each) are prompt-major and attention needs no scatter (see `_slot`).
        first_row = torch.full((len(distinct),), batch).scatter_reduce(0, inverse, torch.arange(batch), "amin")
        order = first_row.argsort()
        distinct, inverse = distinct[order], order.argsort()[inverse]
        ids, pad = distinct[:, :-1].to(self.device), distinct[:, -1]
        self.num_prompts = len(ids)
        real = (torch.arange(width)[None, :] >= pad[:, None]).to(self.device)  # [U, P]
        self.prompt_bias = torch.zeros(self.num_prompts, 1, 1, width, device=self.device, dtype=torch.float32)
        self.prompt_bias.masked_fill_(~real[:, None, None], float("-inf"))
        self.prompt_kv = torch.empty(len(self.layers), 2, self.num_prompts, first.kv_heads, width, first.head_dim,
                                     device=self.device, dtype=self.dtype)
        self.kv = torch.empty(len(self.layers), 2, batch, first.kv_heads, capacity, first.head_dim,
                              device=self.device, dtype=self.dtype)
        self._assign(inverse)
        positions = (torch.arange(width)[None, :] - pad[:, None]).clamp(min=0).to(self.device)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        # A padding query also sees itself, so its (never used) outputs stay finite.
        mask = (causal & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=self.device)
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
            self.prompt_kv[i, 0], self.prompt_kv[i, 1] = k, v
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask[:, None],
                                                 scale=layer.scaling, enable_gqa=True)
            x = layer.finish(x, out.transpose(1, 2).flatten(2))
        self.length = 0
        return head_logits(self.model, x[:, -1])[inverse.to(self.device)].float().cpu()

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        slot = self.length
        self.length += 1
        positions = positions.to(self.device)
        x = self.model.model.embed_tokens(tokens.to(self.device))  # [B, d]
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            self.kv[i, 0, :, :, slot] = k
            self.kv[i, 1, :, :, slot] = v
            x = layer.finish(x, self._attend(i, layer, q.unflatten(1, (layer.kv_heads, -1)), slot + 1).flatten(1))
        return head_logits(self.model, x).float().cpu()

    def _attend(self, i: int, layer: Layer, q: torch.Tensor, seen: int) -> torch.Tensor:
        """q [B, H_kv, G, D] against the row's prompt and its `seen` completion keys -> [B, H_kv, G, D]."""
        kp, vp = self.prompt_kv[i]  # [U, H_kv, P, D]
        width = kp.shape[2]
        scores_p = self._unslot(torch.matmul(self._slot(q), kp.mT), q.shape[2])  # [B, H_kv, G, P]
        scores_c = torch.matmul(q, self.kv[i, 0, :, :, :seen].mT)
        scores = torch.cat([scores_p.float() + self.bias, scores_c.float()], dim=-1) * layer.scaling
        probs_p, probs_c = scores.softmax(-1).to(q.dtype).split([width, seen], dim=-1)
        out_p = self._unslot(torch.matmul(self._slot(probs_p), vp), q.shape[2])
        return out_p + torch.matmul(probs_c, self.kv[i, 1, :, :, :seen])

    def _slot(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [B, H_kv, g, ·] (g query heads per kv head) -> their prompts' slots [U, H_kv, n·g, ·], unused
        slots zero (n: the most rows any prompt has)."""
        kv_heads, rest = x.shape[1], x.shape[2:]
        if self.prompt_major:  # rows are already u·n + r: a reshape, no scatter
            return x.unflatten(0, (-1, self.per_prompt)).transpose(1, 2).flatten(2, 3)
        slots = x.new_zeros(self.num_prompts, kv_heads, self.per_prompt, *rest)
        slots[self.prompt, :, self.rank] = x
        return slots.flatten(2, 3)

    def _unslot(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """Slots [U, H_kv, n·g, ·] -> rows [B, H_kv, g, ·] (the inverse of `_slot` on used slots)."""
        x = x.unflatten(2, (self.per_prompt, group))
        if self.prompt_major:
            return x.transpose(1, 2).flatten(0, 1)
        return x[self.prompt, :, self.rank]

    def keep(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.device)
        self.kv = self.kv[:, :, rows]
        self._assign(self.prompt[rows])

    def _assign(self, prompt: torch.Tensor) -> None:
        """Rows -> (their prompt, their rank among its rows), and each row's prompt padding bias."""
        counts: dict[int, int] = {}
        rank = []
        for u in prompt.tolist():
            rank.append(counts.get(u, 0))
            counts[u] = rank[-1] + 1
        self.prompt, self.rank = prompt.to(self.device), torch.tensor(rank, device=self.device)
        self.per_prompt = max(counts.values())
        self.prompt_major = prompt.tolist() == [u for u in range(self.num_prompts) for _ in range(self.per_prompt)]
        self.bias = self.prompt_bias[self.prompt]  # [B, 1, 1, P]


__all__ = ["ARCHITECTURES", "LlamaFamilyStepper", "Layer", "unsupported_reason", "layers_of", "rope_table",
           "head_logits", "rms_norm", "rope", "signed_sin"]
