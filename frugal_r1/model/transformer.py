"""The DeepSeek-V3 decoder: embedding → blocks (MLA + dense FFN or DeepSeekMoE) → norm → head, plus MTP.

    h^0 = Emb(t);   h^l = u^l + FFN^l(RMSNorm(u^l)),  u^l = h^{l-1} + MLA^l(RMSNorm(h^{l-1}))
    logits = W_head · RMSNorm(h^L)
    loss = CE(logits, next tokens) + λ · L_MTP + Σ_l L_bal^l

The first `first_k_dense_replace` blocks use a dense SwiGLU FFN, the rest DeepSeekMoE. `labels` are the
next-token targets already aligned with the inputs (labels[:, i] is the target of position i; -100 is
ignored), which is what packing produces. `doc_ids` makes attention block-diagonal so packed documents
never see each other (one causal attention per document, documents.py). With a `LatentCache`, attention
runs in the absorbed form over cached latents.

Single-device and training-agnostic: parallelism wraps this module from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frugal_r1.model.cache import LatentCache
from frugal_r1.model.config import ModelConfig
from frugal_r1.model.documents import DocumentSpans
from frugal_r1.model.mla import MLA
from frugal_r1.model.mlp import MLP
from frugal_r1.model.moe import MoE
from frugal_r1.model.mtp import MTPModule
from frugal_r1.model.norm import RMSNorm
from frugal_r1.model.rope import RotaryEmbedding


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None,
                cache: LatentCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass
class ModelOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None  # lm_loss + λ·mtp_loss + aux_loss
    lm_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # last block output before the final norm (MTP's input)


class DeepSeekV3(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.mtp = nn.ModuleList(MTPModule(cfg, cfg.num_hidden_layers + k)
                                 for k in range(cfg.num_nextn_predict_layers))
        self.rotary = RotaryEmbedding(cfg)
        self.init_weights()

    # --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, MoE):
                nn.init.normal_(module.gate.weight, std=std)
                nn.init.zeros_(module.gate.e_score_correction_bias)
                nn.init.normal_(module.experts.gate_up_proj, std=std)
                nn.init.normal_(module.experts.down_proj, std=std)

    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def update_gate_biases(self, speed: float | None = None) -> None:
        """Aux-loss-free balancing step for every MoE layer; call after each optimizer step."""
        speed = self.config.bias_update_speed if speed is None else speed
        for moe in self.moe_layers():
            moe.update_bias(speed)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                position_ids: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                cache: LatentCache | None = None, logits_to_keep: int | None = None,
                loss_denominator: float | None = None) -> ModelOutput:
        """Logits for every position (or the last `logits_to_keep`), and the losses when labels are given.

        Cross-entropies are means over the target tokens, or sums divided by `loss_denominator` when it
        is given (the trainer passes the token count of the whole step, over micro-batches and ranks).
        """
        batch, seq = input_ids.shape
        if position_ids is None:
            start = cache.length if cache is not None else 0
            position_ids = torch.arange(start, start + seq, device=input_ids.device).expand(batch, seq)
        if cache is not None:
            mask = cache.attention_mask(seq)
        elif doc_ids is not None:
            mask = DocumentSpans.of(doc_ids) or document_mask(doc_ids)
        else:
            mask = None
        cos, sin = self.rotary(position_ids)

        hidden = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(seq)

        kept = hidden if logits_to_keep is None else hidden[:, -logits_to_keep:]
        logits = self.lm_head(self.norm(kept))
        out = ModelOutput(logits=logits, hidden=hidden)
        if labels is not None:
            self._add_losses(out, input_ids, labels, doc_ids, cos, sin, mask, loss_denominator)
        return out

    def _add_losses(self, out: ModelOutput, input_ids, labels, doc_ids, cos, sin, mask, denominator) -> None:
        out.lm_loss = _cross_entropy(out.logits, labels, denominator)
        out.loss = out.lm_loss
        if self.mtp and self.config.mtp_loss_weight > 0:
            out.mtp_loss = self._mtp_loss(out.hidden, input_ids, labels, doc_ids, cos, sin, mask, denominator)
            if out.mtp_loss is not None:
                out.loss = out.loss + self.config.mtp_loss_weight * out.mtp_loss
        aux = [m.aux_loss for m in self.moe_layers() if self.training and m.aux_loss is not None]
        if aux:
            out.aux_loss = torch.stack(aux).sum()
            out.loss = out.loss + out.aux_loss

    def _mtp_loss(self, hidden, input_ids, labels, doc_ids, cos, sin, mask, denominator) -> torch.Tensor | None:
        losses = []
        seq = input_ids.shape[1]
        for depth, module in enumerate(self.mtp, start=1):
            keep = seq - depth
            if keep <= 0:
                break
            target = labels[:, depth:]
            if doc_ids is not None:
                target = target.masked_fill(doc_ids[:, :keep] != doc_ids[:, depth:], -100)
            hidden = module(hidden[:, :keep], self.embed_tokens(input_ids[:, depth:]), cos[:, :keep],
                            sin[:, :keep], _first_positions(mask, keep))
            logits = self.lm_head(module.shared_head.norm(hidden))
            losses.append(_cross_entropy(logits, target, denominator))
        return torch.stack(losses).mean() if losses else None

    def mtp_logits(self, depth: int, hidden: torch.Tensor, next_ids: torch.Tensor, position_ids: torch.Tensor,
                   cache: LatentCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run MTP module `depth` (1-based) on hidden [B, T, d] and tokens t_{i+depth}; return (logits, h^k).

        With a cache, the module's block uses cache layer num_hidden_layers + depth - 1 and the caller
        manages that layer's length (drafting advances it in step with the main model's slots).
        """
        module = self.mtp[depth - 1]
        cos, sin = self.rotary(position_ids)
        mask = cache.attention_mask(next_ids.shape[1]) if cache is not None else None
        h = module(hidden, self.embed_tokens(next_ids), cos, sin, mask, cache)
        return self.lm_head(module.shared_head.norm(h)), h

    # --------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "DeepSeekV3":
        from frugal_r1.model.hf import load_pretrained

        return load_pretrained(path, **kwargs)

    def save_pretrained(self, path: str | Path, **kwargs) -> None:
        from frugal_r1.model.hf import save_pretrained

        save_pretrained(self, path, **kwargs)


def _first_positions(mask: torch.Tensor | DocumentSpans | None, keep: int) -> torch.Tensor | DocumentSpans | None:
    """The attention mask of the first `keep` positions (MTP's shorter sequences)."""
    if isinstance(mask, DocumentSpans):
        return mask.truncated(keep)
    return None if mask is None else mask[:, :, :keep, :keep]


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, T, T], True where query i may attend key j: same document and j <= i (SDPA's convention)."""
    seq = doc_ids.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


# Logits per cross-entropy chunk: 8 MB in float32.
CE_CHUNK_ELEMENTS = 1 << 21


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """Next-token cross-entropy in float32 over labels != -100: the mean, or the sum / denominator.

    Computed over row chunks of at most CE_CHUNK_ELEMENTS logits, so no float32 copy of the whole [N, V]
    logits exists: glibc serves allocations over 32 MB with fresh mmap'd pages, whose first-touch page
    faults made the casts, log_softmax and its backward of the small preset's 2,048 x 4,096 logits cost 48 ms
    per step against 20 ms chunked (2-vCPU Xeon, 2026-12-05).
    """
    flat_labels = labels.reshape(-1)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    if denominator is None:
        denominator = (flat_labels != -100).sum()
        if not denominator:
            return logits.sum() * 0.0
    rows = max(1, CE_CHUNK_ELEMENTS // flat_logits.shape[-1])
    total = sum(F.cross_entropy(chunk.float(), target, ignore_index=-100, reduction="sum")
                for chunk, target in zip(flat_logits.split(rows), flat_labels.split(rows)))
    return total / denominator
