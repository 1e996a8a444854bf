"""Model configuration: one dataclass, transformers' DeepseekV3Config field names, and the presets.

`ModelConfig` holds every architectural choice of a DeepSeek-V3-style model. Field names follow
transformers' `DeepseekV3Config` (and DeepSeek's own config.json) so a reader can hold the two side by
side and so `config.json` round-trips: `to_hf_dict()` writes what `transformers.AutoConfig` reads, and
`from_hf_dict()` reads both transformers' `rope_parameters` and the older `rope_theta` + `rope_scaling`
layout of DeepSeek's released checkpoints.

Three fields are training knobs that live with the architecture because the paper defines them there:
`aux_loss_alpha` (α of the sequence-wise balance loss), `bias_update_speed` (γ of auxiliary-loss-free
balancing; 0 disables it) and `mtp_loss_weight` (λ of the multi-token-prediction loss).

Presets: `tiny` (~1M parameters, 1.2M with its MTP module, for tests), `small` (12.4M, 14.4M with MTP; the
speedrun's recipe narrows it to 2.5M) and `deepseek-v3-671b`
(the released model; build it on the meta device to count parameters).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384  # dense FFN (the first_k_dense_replace layers)
    moe_intermediate_size: int = 64  # one routed or shared expert
    num_hidden_layers: int = 2
    num_attention_heads: int = 4

    # DeepSeekMoE
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 2
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 1

    # Multi-head latent attention
    q_lora_rank: int | None = None  # None: a plain q_proj instead of q_a_proj -> norm -> q_b_proj
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16

    # Positions
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # YaRN: {"type": "yarn", "factor", "original_max_position_embeddings", ...}
    max_position_embeddings: int = 1024

    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    num_nextn_predict_layers: int = 1  # MTP depth D
    initializer_range: float = 0.02
    hidden_act: str = "silu"

    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = 2

    # Training knobs defined by the architecture's paper.
    aux_loss_alpha: float = 1e-4  # sequence-wise balance loss weight α (0 disables)
    bias_update_speed: float = 1e-3  # γ for e_score_correction_bias (0 disables)
    mtp_loss_weight: float = 0.3  # λ

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        return max(0, self.num_hidden_layers - self.first_k_dense_replace) if self.n_routed_experts else 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace

    @property
    def yarn(self) -> dict[str, Any] | None:
        """The YaRN parameters when rope scaling is on, else None."""
        if not self.rope_scaling:
            return None
        return self.rope_scaling

    @property
    def softmax_scale(self) -> float:
        """(qk_nope + qk_rope)^-0.5, times mscale² under YaRN (mscale from mscale_all_dim)."""
        scale = self.qk_head_dim**-0.5
        yarn = self.yarn
        if yarn:
            mscale_all_dim = yarn.get("mscale_all_dim", 0)
            if mscale_all_dim:
                mscale = yarn_get_mscale(yarn["factor"], mscale_all_dim)
                scale = scale * mscale * mscale
        return scale

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field when the config cannot describe a working model."""

        def need(condition: bool, name: str, message: str) -> None:
            if not condition:
                raise ValueError(f"{name}: {message}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "max_position_embeddings"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name,
                 f"must be a positive integer, got {getattr(self, name)!r}")
        for name in ("intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
                     "qk_nope_head_dim", "first_k_dense_replace", "num_nextn_predict_layers"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name,
                 f"must be a non-negative integer, got {getattr(self, name)!r}")
        need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", f"must be even, got {self.qk_rope_head_dim}")
        need(self.q_lora_rank is None or (isinstance(self.q_lora_rank, int) and self.q_lora_rank > 0),
             "q_lora_rank", f"must be None or a positive integer, got {self.q_lora_rank!r}")
        need(self.first_k_dense_replace <= self.num_hidden_layers, "first_k_dense_replace",
             f"{self.first_k_dense_replace} exceeds num_hidden_layers={self.num_hidden_layers}")
        if self.first_k_dense_replace > 0 or self.n_routed_experts == 0:
            need(self.intermediate_size > 0, "intermediate_size", "dense layers need intermediate_size > 0")
        if self.n_routed_experts > 0 and self.first_k_dense_replace < self.num_hidden_layers:
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be > 0 with routed experts")
            need(1 <= self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                 f"{self.num_experts_per_tok} must be in [1, n_routed_experts={self.n_routed_experts}]")
            need(self.n_group >= 1, "n_group", f"must be >= 1, got {self.n_group}")
            need(self.n_routed_experts % self.n_group == 0, "n_routed_experts",
                 f"{self.n_routed_experts} is not divisible by n_group={self.n_group}")
            need(1 <= self.topk_group <= self.n_group, "topk_group",
                 f"{self.topk_group} must be in [1, n_group={self.n_group}]")
            per_group = self.n_routed_experts // self.n_group
            need(per_group >= 2 or self.n_group == 1, "n_group",
                 f"group scores sum the top-2 experts of a group; {per_group} expert(s) per group is too few")
            need(self.topk_group * per_group >= self.num_experts_per_tok, "num_experts_per_tok",
                 f"{self.num_experts_per_tok} exceeds the {self.topk_group * per_group} experts in the kept groups")
        need(self.routed_scaling_factor > 0, "routed_scaling_factor", "must be > 0")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0")
        need(self.rope_theta > 0, "rope_theta", "must be > 0")
        need(self.aux_loss_alpha >= 0, "aux_loss_alpha", "must be >= 0")
        need(self.bias_update_speed >= 0, "bias_update_speed", "must be >= 0")
        need(self.mtp_loss_weight >= 0, "mtp_loss_weight", "must be >= 0")
        need(self.hidden_act == "silu", "hidden_act", f"only 'silu' is supported, got {self.hidden_act!r}")
        if self.rope_scaling:
            kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
            need(kind == "yarn", "rope_scaling", f"only YaRN is supported, got type {kind!r}")
            need(float(self.rope_scaling.get("factor", 0)) >= 1, "rope_scaling", "YaRN needs factor >= 1")
            need(int(self.rope_scaling.get("original_max_position_embeddings", 0)) > 0, "rope_scaling",
                 "YaRN needs original_max_position_embeddings")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            need(value is None or 0 <= value < self.vocab_size, name, f"{value} is outside the vocabulary")

    # ----------------------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that transformers' DeepseekV3Config reads (and DeepSeek's own loaders)."""
        out = {
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3",
            **{k: v for k, v in self.to_dict().items() if k not in ("rope_scaling",)},
            "num_key_value_heads": self.num_attention_heads,
            "rope_interleave": True,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "scoring_func": "sigmoid",
            "topk_method": "noaux_tc",
            "rope_parameters": self._rope_parameters(),
        }
        if self.rope_scaling:
            out["rope_scaling"] = {**self._rope_parameters()}
            out["rope_scaling"].pop("rope_theta")
        return out

    def _rope_parameters(self) -> dict[str, Any]:
        if not self.rope_scaling:
            return {"rope_type": "default", "rope_theta": float(self.rope_theta)}
        params = {k: v for k, v in self.rope_scaling.items() if k not in ("type", "rope_type")}
        return {"rope_type": "yarn", "rope_theta": float(self.rope_theta), **params}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Build from our own field names; an unknown key is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Read a transformers / DeepSeek config.json; keys that describe nothing we model are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in hf.items() if k in known and k not in ("rope_theta", "rope_scaling")}
        for legacy, name in (("num_mtp_layers", "num_nextn_predict_layers"),):
            if legacy in hf and name not in hf:
                values[name] = hf[legacy]
        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling") or None
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type"))
        if kind in (None, "default") and scaling:
            rope, kind = scaling, scaling.get("type", scaling.get("rope_type"))
        values["rope_theta"] = float(theta)
        if kind not in (None, "default"):
            values["rope_scaling"] = {"type": kind, **{k: v for k, v in rope.items()
                                                      if k not in ("type", "rope_type", "rope_theta")}}
        else:
            values["rope_scaling"] = None
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = values["eos_token_id"][0]
        return cls(**values)


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1·mscale·ln(scale) + 1 (1 when not extending)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


PRESETS: dict[str, ModelConfig] = {
    # 0.95M parameters (1.24M with the MTP module): fast enough for every test.
    "tiny": ModelConfig(
        vocab_size=2048, hidden_size=128, intermediate_size=384, moe_intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=None,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, max_position_embeddings=1024,
    ),
    # 12.4M parameters (14.4M with MTP); recipes/speedrun.toml narrows it to 4 layers of width 128 (2.5M).
    "small": ModelConfig(
        vocab_size=4096, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
        num_hidden_layers=6, num_attention_heads=8, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=None,
        kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, max_position_embeddings=1024,
        routed_scaling_factor=1.0,
    ),
    # DeepSeek-V3 as released (config.json of deepseek-ai/DeepSeek-V3).
    "deepseek-v3-671b": ModelConfig(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5, norm_topk_prob=True,
        first_k_dense_replace=3, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, rope_theta=10000.0,
        rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
        num_nextn_predict_layers=1, bos_token_id=0, eos_token_id=1, pad_token_id=None,
        aux_loss_alpha=1e-4, bias_update_speed=1e-3, mtp_loss_weight=0.1,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A copy of a named preset with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


__all__ = ["ModelConfig", "PRESETS", "preset", "yarn_get_mscale"]
