"""Analytical counters: parameters, active parameters per token, and FLOPs per token, from a config alone.

Nothing is instantiated, so the 671B preset is counted instantly. The counts follow transformers'
`DeepseekV3ForCausalLM` parameter for parameter (tests/test_flops.py checks that against `numel()`).

Parameters (d = hidden_size, H = heads, dn/dr/dv = qk_nope/qk_rope/v head dims, r_q/r_kv = LoRA ranks):

    attention   q_proj  H(dn+dr)·d                       (q_lora_rank None)
                or q_a_proj r_q·d + q_a_layernorm r_q + q_b_proj H(dn+dr)·r_q
                + kv_a_proj_with_mqa (r_kv+dr)·d + kv_a_layernorm r_kv + kv_b_proj H(dn+dv)·r_kv
                + o_proj d·H·dv
    dense MLP   3·d·intermediate_size                    (gate_proj, up_proj, down_proj)
    MoE         E·3·d·moe_I (routed) + 3·d·moe_I·n_shared (shared) + E·d (gate.weight)
    per layer   + 2d (input_layernorm, post_attention_layernorm)
    model       embed_tokens V·d + final norm d + lm_head V·d (0 when tie_word_embeddings)

The gate's `e_score_correction_bias` [E] is a buffer, not a parameter: it is reported in `buffers` and
not counted in `total` (transformers' `parameters()` does not list it either).

`total` and `active` are the MAIN model, the figures DeepSeek-V3 reports (671B total, 37B active). Each of
the D = num_nextn_predict_layers MTP modules adds enorm d + hnorm d + eh_proj 2d·d + one decoder block
(MoE when layer index num_hidden_layers + k is an MoE layer) + shared_head.norm d; the embedding and
the head are shared with the main model and not counted again (`total_with_mtp`). DeepSeek's checkpoint
stores a copy of both inside the MTP layer, which is why Hugging Face lists 685B: 671.0B + 11.6B + 1.9B.

Active per token = total − the (E − k) routed experts a token does not choose, per MoE layer.

FLOPs per token. A matmul with P weights costs 2P FLOPs per token forward (one multiply-add per weight)
and 4P backward (gradients of the input and of the weight), so training costs 6·N per token where N
counts the *active matmul* parameters: active parameters minus the embedding (a lookup, not a matmul)
and the RMSNorm weights (elementwise); the lm_head and the gate are matmuls and count. On top of that
comes attention, whose score and value products have no weights:

    per layer, per query token attending c positions:  QKᵀ 2·H·(dn+dr)·c   +   AV 2·H·dv·c   (forward)

Causal masking: query t (1-based) of a T-token sequence attends c = t positions, so the average context
is (T+1)/2 — we HALVE, counting the work a causal kernel (flash attention, torch SDPA) actually does.
PaLM's MFU convention does not halve (12·L·H·d_head·T); ours is half of it (with dn+dr ≠ dv):

    training_flops_per_token(T) = 6·N_active_matmul  +  3 · 2·L·H·(dn+dr+dv)·(T+1)/2
                                = 6·N_active_matmul  +  3·L·H·(dn+dr+dv)·(T+1)

    forward_flops_per_token(c)  = 2·N_active_matmul  +  2·L·H·(dn+dr+dv)·c      (one token at context c)

Absorbed MLA decoding (the latent cache) scores against c_kv directly: per head QKᵀ over r_kv+dr and AV
over r_kv, i.e. 2·H·(2·r_kv+dr)·c per layer; `forward_flops_per_token(..., absorbed=True)` uses that
(the kv_b_proj weights are then applied to the query and the output instead of the keys and values,
the same number of multiply-adds per token, so the matmul term is unchanged).

MTP (when included) runs per depth: eh_proj, one block (its active matmuls and attention) and the
shared lm_head again, 6× each for training. Its norms and embedding lookup are not matmuls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from frugal_r1.model.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of the main model (MTP separately). All integers."""

    total: int  # main model, every parameter (what transformers' numel() sums to)
    active: int  # main model, per token: total minus the unchosen routed experts
    embedding: int
    lm_head: int  # 0 when tied to the embedding
    attention: int  # all layers, projections and their q_a/kv_a norms
    dense_mlp: int  # the first_k_dense_replace layers' MLPs
    routed_experts: int  # all of them
    shared_experts: int
    gate: int  # router weights
    norms: int  # input/post-attention layernorms and the final norm (not q_a/kv_a norms)
    mtp: int  # all MTP modules, without the shared embedding and head
    mtp_active: int
    active_matmul: int  # main model per token: active minus embedding and every RMSNorm weight
    mtp_active_matmul: int  # per token, including the shared lm_head the MTP modules run again
    buffers: int  # e_score_correction_bias, not counted in total

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp

    @property
    def active_with_mtp(self) -> int:
        return self.active + self.mtp_active

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_with_mtp": self.total_with_mtp, "active_with_mtp": self.active_with_mtp}


@dataclass(frozen=True)
class FlopCounts:
    """FLOPs per token, split so the attention term is visible. All integers."""

    matmul: int  # main model's active matmul parameters × 6 (training) or × 2 (forward)
    attention: int  # main model's QKᵀ and AV
    mtp_matmul: int = 0
    mtp_attention: int = 0

    @property
    def total(self) -> int:
        return self.matmul + self.attention + self.mtp_matmul + self.mtp_attention

    def __mul__(self, tokens: int) -> "FlopCounts":
        return FlopCounts(self.matmul * tokens, self.attention * tokens,
                          self.mtp_matmul * tokens, self.mtp_attention * tokens)

    __rmul__ = __mul__

    def __add__(self, other: "FlopCounts") -> "FlopCounts":
        return FlopCounts(self.matmul + other.matmul, self.attention + other.attention,
                          self.mtp_matmul + other.mtp_matmul, self.mtp_attention + other.mtp_attention)

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    attention_matmul: int
    attention_norms: int  # q_a_layernorm, kv_a_layernorm
    dense_mlp: int = 0
    routed: int = 0
    routed_active: int = 0
    shared: int = 0
    gate: int = 0
    norms: int = 0

    @property
    def total(self) -> int:
        return (self.attention_matmul + self.attention_norms + self.dense_mlp + self.routed + self.shared
                + self.gate + self.norms)

    @property
    def active_matmul(self) -> int:
        return self.attention_matmul + self.dense_mlp + self.routed_active + self.shared + self.gate

    @property
    def active(self) -> int:
        return self.active_matmul + self.attention_norms + self.norms


def _layer(cfg: ModelConfig, layer_idx: int) -> _Layer:
    d, h = cfg.hidden_size, cfg.num_attention_heads
    q_out = h * cfg.qk_head_dim
    if cfg.q_lora_rank is None:
        q_matmul, q_norm = q_out * d, 0
    else:
        q_matmul, q_norm = cfg.q_lora_rank * d + q_out * cfg.q_lora_rank, cfg.q_lora_rank
    attention = (q_matmul
                 + (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * d
                 + h * (cfg.qk_nope_head_dim + cfg.v_head_dim) * cfg.kv_lora_rank
                 + d * h * cfg.v_head_dim)
    common = dict(attention_matmul=attention, attention_norms=q_norm + cfg.kv_lora_rank, norms=2 * d)
    if not cfg.is_moe_layer(layer_idx):
        return _Layer(**common, dense_mlp=3 * d * cfg.intermediate_size)
    expert = 3 * d * cfg.moe_intermediate_size
    return _Layer(**common, routed=cfg.n_routed_experts * expert, routed_active=cfg.num_experts_per_tok * expert,
                  shared=cfg.n_shared_experts * expert, gate=cfg.n_routed_experts * d)


def count_parameters(cfg: ModelConfig) -> ParamCounts:
    """Total and per-token active parameters of `cfg`, with a breakdown (see the module docstring)."""
    d, vocab = cfg.hidden_size, cfg.vocab_size
    layers = [_layer(cfg, i) for i in range(cfg.num_hidden_layers)]
    embedding = vocab * d
    lm_head = 0 if cfg.tie_word_embeddings else vocab * d
    final_norm = d
    total = sum(layer.total for layer in layers) + embedding + lm_head + final_norm
    unchosen = sum(layer.routed - layer.routed_active for layer in layers)
    active_matmul = sum(layer.active_matmul for layer in layers) + vocab * d  # the head runs even when tied

    mtp_blocks = [_layer(cfg, cfg.num_hidden_layers + k) for k in range(cfg.num_nextn_predict_layers)]
    mtp_extra = 2 * d + 2 * d * d + d  # enorm, hnorm, eh_proj, shared_head.norm
    mtp = sum(block.total + mtp_extra for block in mtp_blocks)
    mtp_unchosen = sum(block.routed - block.routed_active for block in mtp_blocks)
    mtp_active_matmul = sum(block.active_matmul + 2 * d * d + vocab * d for block in mtp_blocks)
    n_moe = sum(1 for layer in layers + mtp_blocks if layer.gate)
    return ParamCounts(
        total=total,
        active=total - unchosen,
        embedding=embedding,
        lm_head=lm_head,
        attention=sum(layer.attention_matmul + layer.attention_norms for layer in layers),
        dense_mlp=sum(layer.dense_mlp for layer in layers),
        routed_experts=sum(layer.routed for layer in layers),
        shared_experts=sum(layer.shared for layer in layers),
        gate=sum(layer.gate for layer in layers),
        norms=sum(layer.norms for layer in layers) + final_norm,
        mtp=mtp,
        mtp_active=mtp - mtp_unchosen,
        active_matmul=active_matmul,
        mtp_active_matmul=mtp_active_matmul,
        buffers=n_moe * cfg.n_routed_experts,
    )


def attention_flops_per_token(cfg: ModelConfig, context: int, absorbed: bool = False) -> int:
    """Forward FLOPs of QKᵀ and AV for one query token attending `context` positions, per layer."""
    h = cfg.num_attention_heads
    if absorbed:
        return 2 * h * (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim) * context
    return 2 * h * (cfg.qk_head_dim + cfg.v_head_dim) * context


def training_flops_per_token(cfg: ModelConfig, seq_len: int, include_mtp: bool = True) -> FlopCounts:
    """Forward + backward FLOPs per trained token of `seq_len`-token causal sequences.

    6·N_active_matmul + 3·L·H·(dn+dr+dv)·(seq_len+1): the attention term averages the causal context,
    (seq_len+1)/2, and triples the forward cost for the backward pass (see the module docstring).
    """
    params = count_parameters(cfg)
    # 3 (forward + backward) × 2·H·(dqk+dv) × (T+1)/2, kept integral.
    per_layer = 3 * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * (seq_len + 1)
    mtp_layers = cfg.num_nextn_predict_layers if include_mtp else 0
    return FlopCounts(
        matmul=6 * params.active_matmul,
        attention=cfg.num_hidden_layers * per_layer,
        mtp_matmul=6 * params.mtp_active_matmul if include_mtp else 0,
        mtp_attention=mtp_layers * per_layer,
    )


def forward_flops_per_token(cfg: ModelConfig, context_len: int, absorbed: bool = False) -> FlopCounts:
    """Forward FLOPs for one token that attends `context_len` positions (itself included): generation.

    2·N_active_matmul + L·attention_flops_per_token(context_len). MTP is not run (add it for drafting).
    """
    params = count_parameters(cfg)
    return FlopCounts(matmul=2 * params.active_matmul,
                      attention=cfg.num_hidden_layers * attention_flops_per_token(cfg, context_len, absorbed))


__all__ = ["FlopCounts", "ParamCounts", "attention_flops_per_token", "count_parameters",
           "forward_flops_per_token", "training_flops_per_token"]
