"""Rotary position embedding for MLA's decoupled key/query part, with YaRN context extension.

Only the `qk_rope_head_dim` slice of each query head, and the single shared rope key, are rotated:

    θ_j = base^(-2j/d_r),   x'_{2j}   = x_{2j} cos(pθ_j) − x_{2j+1} sin(pθ_j)
                             x'_{2j+1} = x_{2j+1} cos(pθ_j) + x_{2j} sin(pθ_j)

DeepSeek lays the pairs out interleaved, (x0, x1), (x2, x3), …; like transformers we write the rotated
pairs back de-interleaved ([all x'_{2j}; all x'_{2j+1}]). Queries and keys get the same permutation, so
q·k is unchanged and cached keys stay consistent.

YaRN (arXiv 2309.00071) blends interpolated frequencies θ_j/s and original ones with a linear ramp between
the dimensions that complete beta_fast and beta_slow rotations over the original context, and scales
cos/sin by mscale(s, mscale)/mscale(s, mscale_all_dim); the softmax scale gets mscale(s, mscale_all_dim)²
(see `ModelConfig.softmax_scale`). This follows transformers' `_compute_yarn_parameters` exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from frugal_r1.model.config import ModelConfig, yarn_get_mscale


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [d_r/2] and the cos/sin scale (1 without YaRN)."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    yarn = cfg.yarn
    if not yarn:
        return 1.0 / pos_freqs, 1.0

    factor = float(yarn.get("factor") or cfg.max_position_embeddings / yarn["original_max_position_embeddings"])
    mscale, mscale_all_dim = yarn.get("mscale"), yarn.get("mscale_all_dim")
    attention_factor = yarn.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = yarn.get("beta_fast") or 32
    beta_slow = yarn.get("beta_slow") or 1
    original = yarn["original_max_position_embeddings"]

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if yarn.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """Maps position ids [B, T] to (cos, sin), each [B, T, d_r/2] in float32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        return freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, T, H, d_r]; cos/sin [B, T, d_r/2]; output de-interleaved."""
    cos = cos.to(x.dtype).unsqueeze(2)
    sin = sin.to(x.dtype).unsqueeze(2)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
