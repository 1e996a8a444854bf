"""Multi-token prediction (DeepSeek-V3 §2.2): D sequential modules, each predicting one token further.

Module k (k = 1…D) takes the previous depth's hidden state h_i^{k-1} (depth 0: the main model's last
block output) and the embedding of token t_{i+k}:

    h'_i^k = M_k [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h_i^{k-1})]        (eh_proj: 2d -> d)
    h_i^k  = Block_k(h'^k)_i                                          (one decoder block, causal)
    P^k_{i+k+1} = softmax(Head(RMSNorm(h_i^k)))                       (embedding and head shared)

    L_MTP = λ/D Σ_k CE(P^k, t_{i+k+1})

Names follow DeepSeek's checkpoint (enorm, hnorm, eh_proj, shared_head.norm), so hf.py maps module k to
`model.layers.{num_hidden_layers + k - 1}`. At inference the module drafts t_{i+2} for speculative decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from frugal_r1.model.cache import LatentCache
from frugal_r1.model.config import ModelConfig
from frugal_r1.model.norm import RMSNorm


class SharedHead(nn.Module):
    """Only the norm; the projection is the main model's lm_head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPModule(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        from frugal_r1.model.transformer import Block  # a Block is the module's body

        super().__init__()
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.block = Block(cfg, layer_idx)
        self.shared_head = SharedHead(cfg)

    def forward(self, hidden: torch.Tensor, next_embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: LatentCache | None = None) -> torch.Tensor:
        """hidden, next_embeds [B, T, d] (position i holds h_i and Emb(t_{i+k})) -> h^k [B, T, d]."""
        merged = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        return self.block(merged, cos, sin, mask, cache)
